"""The offline demo cohort: random TorchIO variations of nilearn's bundled MNI152 T1 template.

Nothing is downloaded: nilearn ships the ICBM 2009a symmetric MNI152 template (skull-stripped T1,
197 x 233 x 189 voxels at 1 mm) and a white-matter probability map. Each demo subject is that
template after a seeded random affine + elastic deformation (one TorchIO resampling), then a
random bias field, gamma and noise, written in the prepared-dataset format of :mod:`hagan.data`.
With ``lesion_fraction > 0`` some subjects get a smooth bright ellipsoid in white matter
(class 1, "lesion"; the others are class 0, "healthy"), which is enough signal for the
conditional model to learn.

Geometry: the template is cut to a cube around the brain's bounding box (plus a margin so the
random motion never pushes the brain out), area-averaged once down to a working grid of about
``2 * size`` voxels, deformed per subject, then area-averaged to ``size``^3.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import ALLOWED_SIZES, MAX_SIZE, MIN_SIZE, PathLike
from .data import DataError, Record, read_info, write_info, write_manifest
from .errors import ConfigError, RunError, explain
from .fileio import atomic_save_npy, is_lock_file
from .preprocess import single_thread

logger = logging.getLogger(__name__)

DEMO_SOURCE = "nilearn MNI152 T1 (demo)"  # dataset.json "source"; marks a folder as a demo cohort
DEMO_VERSION = 1  # bump when the recipe changes so that old folders are rebuilt, not reused
T1_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"  # in nilearn/datasets/data/
WM_FILE = "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"  # white-matter probability, 0..255
LABEL_NAMES = ["healthy", "lesion"]
# geometry
BRAIN_THRESHOLD = 0.1  # template / max above which a voxel is brain (brain voxels are >= 0.28)
MARGIN_MM = 14.0  # room around the brain for +-6 % scaling and +-6 deg rotation of a 181 mm brain
MIN_WORK_SIZE = 64  # deform on at least a 64^3 grid so a 32^3 output is not doubly interpolated
MAX_WORK_SIZE = 128  # ... and on at most 128^3: TorchIO's B-spline resampling time grows with
# the voxel count, and the native 209^3 grid would make every subject slow (benchmarks/RESULTS.md)
WORK_FACTOR = 2  # working grid ~ 2 * size: deformations at twice the output resolution
BIAS_GRID = 32  # the bias field is a cubic polynomial: drawn on 32^3, then upsampled
# per-subject random transforms (mild: the anatomy must stay recognisable)
AFFINE_SCALES = 0.06  # isotropic-ish scaling factor in [0.94, 1.06] per axis
AFFINE_DEGREES = 6.0  # rotation in [-6, 6] degrees about each axis
AFFINE_TRANSLATION_MM = 4.0  # shift in [-4, 4] mm per axis
ELASTIC_CONTROL_POINTS = 7  # TorchIO's default B-spline grid
ELASTIC_MAX_DISPLACEMENT_MM = 6.0  # well below half the control-point spacing (~50 mm): no folding
BIAS_COEFFICIENTS = 0.3  # polynomial bias-field coefficients in [-0.3, 0.3] (TorchIO default 0.5)
LOG_GAMMA = 0.2  # gamma = exp(U(-0.2, 0.2)), i.e. 0.82 .. 1.22
NOISE_STD = (0.0, 0.02)  # Gaussian noise std, in output units [0, 1] before the map to [-1, 1]
BRAIN_MEDIAN = 0.6  # each subject's brain median is scaled to 0.6 (template median 0.70, so
# white matter lands at ~0.65 .. 0.75 and the maximum at 0.86): a lesion (1.3 * 0.86, clipped
# to 1) is the brightest tissue
# synthetic lesion (class 1)
LESION_RADIUS_MM = (15.0, 24.0)  # semi-axes; >= 2.3 voxels at 32^3 (6.5 mm voxels), so visible
LESION_EDGE = 0.15  # width of the smooth edge, as a fraction of the normalised radius
LESION_INTENSITY = 1.3  # peak brightness; healthy white matter is ~0.75 .. 0.88 (max 1)
LESION_WM_PROBABILITY = 0.9  # the centre lies where P(white matter) > 0.9 ...
LESION_DEPTH_MM = 12.0  # ... and at least 12 mm inside the brain


@dataclass
class TemplateCube:
    """The template cut to a cube around the brain and resampled to the working grid.

    Arrays are (W, W, W) float32 in RAS voxel order (x = left->right, y = post->ant, z = inf->sup).
    """

    t1: np.ndarray  # intensities in [0, 1], background exactly 0
    lesion_sites: np.ndarray  # (K, 3) voxel indices where a lesion centre may go
    spacing: float  # mm per working voxel (isotropic)
    side_mm: float  # physical edge of the cube
    original_shape: tuple[int, int, int]


def _nilearn_data_dir() -> Path:
    """nilearn's bundled data folder, found without importing nilearn (a slow import)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the demo cohort needs nilearn: pip install nilearn")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def template_path() -> Path:
    """The MNI152 T1 template file the demo cohort is made from (1 mm, shipped with nilearn).

    Raises:
        ImportError: nilearn is not installed.
    """
    return _nilearn_data_dir() / T1_FILE


def load_template() -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """nilearn's MNI152 T1 template scaled to [0, 1] and its white-matter probability in [0, 1].

    Returns:
        ``(t1, wm, shape)``: two (197, 233, 189) float32 arrays in RAS voxel order at 1 mm, and
        the original shape. Same data as ``nilearn.datasets.load_mni152_template(resolution=1)``.
    """
    import nibabel as nib

    folder = _nilearn_data_dir()
    if not (folder / T1_FILE).is_file():  # a future nilearn may move the file: use its loader
        from nilearn.datasets import load_mni152_template, load_mni152_wm_template

        t1_img, wm_img = load_mni152_template(resolution=1), load_mni152_wm_template(resolution=1)
    else:
        t1_img, wm_img = nib.load(folder / T1_FILE), nib.load(folder / WM_FILE)
    t1_img, wm_img = nib.as_closest_canonical(t1_img), nib.as_closest_canonical(wm_img)
    t1 = np.asarray(t1_img.dataobj, dtype=np.float32)
    wm = np.asarray(wm_img.dataobj, dtype=np.float32)
    return t1 / t1.max(), wm / wm.max(), tuple(t1_img.shape[:3])


def shrink(volume: torch.Tensor, size: int) -> torch.Tensor:
    """Downsample a (C, N, N, N) tensor to (C, size, size, size) by area averaging.

    Area (box-filter) averaging is the cheapest anti-aliased downsampling and always gives the
    exact shape; the demo only ever shrinks by factors >= 1.
    """
    return torch.nn.functional.interpolate(volume[None], size=(size,) * 3, mode="area")[0]


def work_size(size: int, native: int) -> int:
    """Edge of the working grid: ``2 * size`` within [64, 128], at most the native resolution."""
    return int(min(max(WORK_FACTOR * size, MIN_WORK_SIZE), MAX_WORK_SIZE, native))


@functools.lru_cache(maxsize=2)  # pure function of size, costly to build (tests, notebooks)
def template_cube(size: int) -> TemplateCube:
    """Cut the template to a cube around the brain and resample it to the working grid.

    The result is cached and shared: treat its arrays as read-only.
    """
    from scipy import ndimage

    t1, wm, shape = load_template()
    brain = t1 > BRAIN_THRESHOLD
    lo, hi = np.argwhere(brain).min(0), np.argwhere(brain).max(0) + 1
    side = int(np.ceil((hi - lo).max() + 2 * MARGIN_MM))  # 1 mm voxels
    start = (lo + hi) // 2 - side // 2
    cube = np.zeros((2, side, side, side), dtype=np.float32)  # channels: t1, wm
    src_lo, src_hi = np.maximum(start, 0), np.minimum(start + side, shape)
    dst = tuple(slice(a - s, b - s) for a, b, s in zip(src_lo, src_hi, start))
    src = tuple(slice(a, b) for a, b in zip(src_lo, src_hi))
    cube[(slice(None),) + dst] = np.stack([t1[src], wm[src]])
    width = work_size(size, side)
    t1_small, wm_small = shrink(torch.from_numpy(cube), width).numpy()
    t1_small[t1_small < BRAIN_THRESHOLD] = 0.0  # keep the background exactly 0 after smoothing
    spacing = side / width
    depth_mm = ndimage.distance_transform_edt(t1_small > 0) * spacing
    sites = np.argwhere((wm_small > LESION_WM_PROBABILITY) & (depth_mm > LESION_DEPTH_MM))
    return TemplateCube(t1_small, sites, spacing, float(side), shape)


def add_lesion(t1: np.ndarray, cube: TemplateCube, rng: np.random.Generator) -> np.ndarray:
    """Blend a smooth bright ellipsoid into white matter; returns a new array."""
    centre = cube.lesion_sites[rng.integers(len(cube.lesion_sites))]
    radii = rng.uniform(*LESION_RADIUS_MM, size=3) / cube.spacing  # in working voxels
    grids = np.ogrid[tuple(slice(0, n) for n in t1.shape)]
    r = np.sqrt(sum(((g - c) / a) ** 2 for g, c, a in zip(grids, centre, radii)))
    weight = 1.0 / (1.0 + np.exp((r - 1.0) / LESION_EDGE))  # ~1 inside, ~0 outside, smooth edge
    weight *= t1 > 0  # never outside the brain
    return (t1 * (1 - weight) + LESION_INTENSITY * weight).astype(np.float32)


def subject_seed(seed: int, index: int) -> np.random.Generator:
    """The random stream of subject ``index``: depends only on (seed, index)."""
    return np.random.default_rng([seed, index])


def demo_volume(cube: TemplateCube, size: int, seed: int, index: int, lesion: bool) -> np.ndarray:
    """One demo subject as a (S, S, S) float16 array in [-1, 1], axes (z, y, x), background -1.

    The same ``(seed, index)`` gives the same array with or without ``lesion`` apart from the
    lesion itself (the lesion draws from its own stream), so the difference shows the lesion.
    """
    import torchio as tio

    rng = subject_seed(seed, index)
    torch_seed, lesion_rng = int(rng.integers(2**62)), np.random.default_rng(rng.integers(2**62))
    torch.manual_seed(torch_seed)  # every TorchIO random draw below comes from this seed
    t1 = add_lesion(cube.t1, cube, lesion_rng) if lesion else cube.t1
    image = tio.ScalarImage(tensor=t1[None], affine=np.diag([cube.spacing] * 3 + [1.0]))
    image = tio.RandomAffineElasticDeformation(  # one resampling for both (TorchIO optimisation)
        affine_kwargs={"scales": AFFINE_SCALES, "degrees": AFFINE_DEGREES,
                           "translation": AFFINE_TRANSLATION_MM, "default_pad_value": 0.0},
        elastic_kwargs={"num_control_points": ELASTIC_CONTROL_POINTS,
                            "max_displacement": ELASTIC_MAX_DISPLACEMENT_MM},
    )(image)
    spacing_out = np.diag([cube.side_mm / size] * 3 + [1.0])
    image = tio.ScalarImage(tensor=shrink(image.data, size), affine=spacing_out)
    brain = image.data[0] > BRAIN_THRESHOLD / 2  # (S, S, S) in RAS order; partial-volume edge kept
    image.set_data(image.data * bias_field(size))
    image = tio.RandomGamma(log_gamma=LOG_GAMMA)(image)
    # undo the global brightness change of bias and gamma (their spatial variation stays): the
    # median is robust to the lesion, which covers only ~2 % of the brain
    image.set_data(image.data * (BRAIN_MEDIAN / image.data[0][brain].median()))
    image = tio.RandomNoise(std=NOISE_STD)(image)
    volume = image.data[0].clamp(0, 1) * 2 - 1  # [0, 1] -> [-1, 1]
    volume = torch.where(brain, volume, torch.full_like(volume, -1.0))
    return volume.numpy().transpose(2, 1, 0).astype(np.float16)  # RAS (x, y, z) -> (z, y, x)


def bias_field(size: int) -> torch.Tensor:
    """A random multiplicative MRI bias field (1, S, S, S) from ``tio.RandomBiasField``.

    The field is a smooth polynomial, so it is drawn on a coarse grid and upsampled: evaluating
    TorchIO's polynomial on every voxel of a 128^3 volume would cost seconds.
    """
    import torchio as tio

    ones = tio.ScalarImage(tensor=torch.ones(1, BIAS_GRID, BIAS_GRID, BIAS_GRID))
    field = tio.RandomBiasField(coefficients=BIAS_COEFFICIENTS)(ones).data.float()
    if size == BIAS_GRID:
        return field
    return torch.nn.functional.interpolate(field[None], size=(size,) * 3, mode="trilinear",
                                           align_corners=False)[0]


def lesion_subjects(n: int, fraction: float, seed: int) -> set[int]:
    """Indices of the subjects that get a lesion: round(n * fraction) of them, at least one."""
    if fraction <= 0:
        return set()
    count = min(n, max(1, round(n * fraction)))
    return set(np.random.default_rng([seed, n]).permutation(n)[:count].tolist())


def _check_arguments(n: int, size: int, seed: int, lesion_fraction: float) -> None:
    if size not in ALLOWED_SIZES:
        raise ConfigError(explain("--size", f"a cube side 2^k in [{MIN_SIZE}, {MAX_SIZE}] "
                                  f"({', '.join(map(str, ALLOWED_SIZES))})", str(size),
                                  "Use e.g. --size 32."))
    if n < 1:
        raise ConfigError(explain("--n", "at least one volume", str(n)))
    if seed < 0:
        raise ConfigError(explain("--seed", "a seed >= 0", str(seed)))
    if not 0.0 <= lesion_fraction <= 1.0:
        raise ConfigError(explain("--lesion-fraction", "a fraction in [0, 1]",
                                  str(lesion_fraction)))


def _check_output(out: Path, force: bool) -> None:
    """Refuse a non-empty folder that is not a demo cohort, unless ``force``."""
    if out.exists() and not out.is_dir():
        raise RunError(explain("--out", "a folder", f"{out} (a file)", "Choose another --out."))
    if force or not out.is_dir() or not any(not is_lock_file(p) for p in out.iterdir()):
        return
    try:
        is_demo = read_info(out).get("source") == DEMO_SOURCE
    except (DataError, ValueError):
        is_demo = False
    if not is_demo:
        raise RunError(explain("--out", "an empty folder or a demo dataset",
                               f"{out} (not empty and not a demo dataset)",
                               "Choose an empty or new folder, or pass --force to write into it "
                               "anyway."))


def _recipe(n: int, size: int, seed: int, lesion_fraction: float) -> dict:
    return {"version": DEMO_VERSION, "n": n, "size": size, "seed": seed,
            "lesion_fraction": lesion_fraction}


def is_built(out: PathLike, n: int, size: int, seed: int, lesion_fraction: float = 0.0) -> bool:
    """Whether ``out`` holds the complete demo cohort of these arguments (this recipe version),
    so that :func:`make_demo_dataset` would reuse it. The one recipe check (the notebooks use it
    too)."""
    return _is_built(Path(out), _recipe(n, size, seed, lesion_fraction))


def _is_built(out: Path, recipe: dict) -> bool:
    try:
        info = read_info(out)
    except (DataError, ValueError):
        return False
    files = [out / "volumes" / f"demo_{i:04d}.npy" for i in range(recipe["n"])]
    return (info.get("recipe") == recipe and (out / "manifest.csv").is_file()
            and all(f.is_file() for f in files))


def _render(job: tuple[TemplateCube, int, int, int, bool, str]) -> int:
    """Worker: build one subject and write it atomically (runs in a pool process)."""
    cube, size, seed, index, lesion, path = job
    atomic_save_npy(path, demo_volume(cube, size, seed, index, lesion))
    return index


def make_demo_dataset(out: PathLike, n: int = 64, size: int = 32, seed: int = 0,
                      lesion_fraction: float = 0.0, progress: bool = True, *,
                      workers: int | None = None, force: bool = False) -> Path:
    """Build the offline demo cohort as a prepared dataset.

    Args:
        out: Output folder; created if needed. An existing demo cohort there is replaced (or
            kept as is when it was built with the same arguments).
        n: Number of subjects.
        size: Cube edge S (32, 64, 128 or 256).
        seed: Seed of every random draw; the same seed gives byte-identical arrays.
        lesion_fraction: Fraction of subjects in [0, 1] that get a synthetic white-matter lesion
            (label 1); 0 gives an unlabelled cohort.
        progress: Show a tqdm progress bar.
        workers: Worker processes (default: the CPU count, at most 4; 1 = in this process).
        force: Write into a non-empty folder that is not a demo cohort.

    Returns:
        ``out`` as a Path, holding ``volumes/demo_NNNN.npy`` (S, S, S) float16 in [-1, 1]
        (axes z, y, x; background -1), ``manifest.csv`` and ``dataset.json``.

    Raises:
        ConfigError: a bad size, n, seed or fraction.
        RunError: ``out`` holds something else and ``force`` is False.

    Example:
        >>> from hagan.demo import make_demo_dataset
        >>> from hagan.data import PreparedDataset
        >>> root = make_demo_dataset(tmp / "demo", n=2, size=32, progress=False)  # doctest: +SKIP
        >>> PreparedDataset(root, size=32)[0].shape  # doctest: +SKIP
        torch.Size([1, 32, 32, 32])
    """
    from tqdm import tqdm  # the text bar: a notebook widget bar is saved at 0 % by papermill

    _check_arguments(n, size, seed, lesion_fraction)
    out = Path(out)
    _check_output(out, force)
    recipe = _recipe(n, size, seed, lesion_fraction)
    if _is_built(out, recipe):
        logger.info("demo cohort already built in %s (same arguments); reusing it", out)
        return out
    cube = template_cube(size)
    lesions = lesion_subjects(n, lesion_fraction, seed)
    names = [f"demo_{i:04d}.npy" for i in range(n)]
    jobs = [(cube, size, seed, i, i in lesions, str(out / "volumes" / names[i])) for i in range(n)]
    workers = min(os.cpu_count() or 1, 4) if workers is None else workers
    bar = tqdm(total=n, desc=f"demo cohort {size}^3", unit="vol", disable=not progress)
    if workers <= 1 or n == 1:
        for job in jobs:
            _render(job)
            bar.update()
    else:
        # chunks pickle the shared template cube once per chunk instead of once per subject
        chunk = max(1, n // (4 * workers))
        with ProcessPoolExecutor(max_workers=min(workers, n), initializer=single_thread) as pool:
            for _ in pool.map(_render, jobs, chunksize=chunk):
                bar.update()
    bar.close()
    _write_metadata(out, cube, recipe, names, lesions)
    _remove_stale(out, set(names))
    logger.info("wrote %d demo volumes of %d^3 to %s", n, size, out)
    return out


def _write_metadata(out: Path, cube: TemplateCube, recipe: dict, names: list[str],
                    lesions: set[int]) -> None:
    labelled = recipe["lesion_fraction"] > 0
    shape = "x".join(map(str, cube.original_shape))
    records = [Record(file=name, label=str(int(i in lesions)) if labelled else "",
                      source=f"{DEMO_SOURCE} #{i}", original_shape=shape,
                      original_spacing="1x1x1") for i, name in enumerate(names)]
    write_manifest(out, records)
    spacing = cube.side_mm / recipe["size"]
    write_info(out, {
        "size": recipe["size"], "modality": "mri", "source": DEMO_SOURCE,
        "seed": recipe["seed"], "n": recipe["n"], "lesion_fraction": recipe["lesion_fraction"],
        "spacing_mm": [spacing] * 3, "label_names": LABEL_NAMES if labelled else [],
        "dtype": "float16", "window": None,
        "intensity": f"brain median scaled to {BRAIN_MEDIAN}, then [0, 1] -> [-1, 1]",
        "axes": ["inferior->superior", "posterior->anterior", "left->right"],
        "recipe": recipe,
        "transforms": {
            "affine_scales": AFFINE_SCALES, "affine_degrees": AFFINE_DEGREES,
            "affine_translation_mm": AFFINE_TRANSLATION_MM,
            "elastic_control_points": ELASTIC_CONTROL_POINTS,
            "elastic_max_displacement_mm": ELASTIC_MAX_DISPLACEMENT_MM,
            "bias_coefficients": BIAS_COEFFICIENTS, "log_gamma": LOG_GAMMA,
            "noise_std": list(NOISE_STD), "work_size": int(cube.t1.shape[0]),
            "lesion_radius_mm": list(LESION_RADIUS_MM),
        },
    })


def _remove_stale(out: Path, keep: set[str]) -> None:
    """Delete demo volumes left over from a larger earlier cohort in the same folder."""
    for path in (out / "volumes").glob("demo_*.npy"):
        if path.name not in keep:
            path.unlink()


# --- CLI: hagan demo-data --out OUT ---------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder for the prepared dataset")
    parser.add_argument("--n", type=int, default=64, help="number of volumes (default 64)")
    parser.add_argument("--size", type=int, default=32,
                        help=f"cube edge, one of {', '.join(map(str, ALLOWED_SIZES))} (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--lesion-fraction", type=float, default=0.0,
                        help="fraction of subjects with a synthetic lesion, label 1 (default 0)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: CPU count, at most 4)")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty folder that is not a demo dataset")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def main(args: argparse.Namespace) -> int:
    from .fileio import lock_folder

    _check_output(Path(args.out), args.force)  # before the lock creates --out
    with lock_folder(args.out, "hagan demo-data"):  # a second process into --out is refused
        out = make_demo_dataset(args.out, n=args.n, size=args.size, seed=args.seed,
                                lesion_fraction=args.lesion_fraction,
                                progress=not args.no_progress, workers=args.workers,
                                force=args.force)
    print(f"demo dataset: {args.n} volumes of {args.size}^3 in {out.resolve()}")
    return 0
