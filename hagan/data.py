"""The prepared-dataset format and its PyTorch Dataset.

A prepared dataset is a folder::

    DIR/
      volumes/*.npy   one (S, S, S) float16/float32 array per volume, values in [-1, 1],
                      axis 0 = axial (inferior -> superior), axis 1 = posterior -> anterior,
                      axis 2 = left -> right (RAS+ canonical, transposed to z, y, x)
      manifest.csv    file, label, source, original_shape, original_spacing
      dataset.json    size, modality, intensity window, spacing_mm, label names, ...

Volumes are memory-mapped, so a dataset larger than RAM trains fine.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .config import PathLike
from .errors import ConfigError, DataError, explain
from .fileio import atomic_target, atomic_write_text, write_json

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("file", "label", "source", "original_shape", "original_spacing")


@dataclass
class Record:
    """One row of ``manifest.csv``."""

    file: str
    label: str = ""
    source: str = ""
    original_shape: str = ""
    original_spacing: str = ""


def write_manifest(root: PathLike, records: Sequence[Record]) -> None:
    """Write ``manifest.csv`` atomically."""
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(MANIFEST_COLUMNS)
    for r in records:
        writer.writerow([r.file, r.label, r.source, r.original_shape, r.original_spacing])
    atomic_write_text(Path(root) / "manifest.csv", buf.getvalue())


def read_manifest(root: PathLike) -> list[Record]:
    path = Path(root) / "manifest.csv"
    with open(path, newline="", encoding="utf-8") as fh:  # never the process locale
        rows = list(csv.DictReader(fh))
    return [Record(**{k: (row.get(k) or "") for k in MANIFEST_COLUMNS}) for row in rows]


def write_info(root: PathLike, info: dict[str, Any]) -> None:
    write_json(Path(root) / "dataset.json", info)


def read_info(root: PathLike) -> dict[str, Any]:
    path = Path(root) / "dataset.json"
    if not path.is_file():
        raise DataError(
            f"{root} is not a prepared dataset: dataset.json is missing. Make one with "
            "`hagan demo-data --out DIR` or `hagan preprocess IN --out DIR`."
        )
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(explain(str(path), "a JSON object", f"an unreadable file ({exc})",
                                REBUILD)) from None
    if not isinstance(info, dict):
        raise DataError(explain(str(path), "a JSON object (size, modality, ...)",
                                f"a JSON {type(info).__name__}", REBUILD))
    return info


REBUILD = "Rebuild the dataset with `hagan preprocess` (or `hagan demo-data`)."
VOLUME_DTYPES = (np.float16, np.float32)
RANGE_TOLERANCE = 1e-3  # float16 rounding of values at +-1
SAMPLE_SIDE = 32  # check_volume_file reads every k-th voxel, k = S // 32 (32^3 values per file)


def dataset_size(info: dict[str, Any], root: PathLike) -> int:
    """The cube side S recorded in ``dataset.json`` (a DataError naming the file otherwise)."""
    from .config import ALLOWED_SIZES

    size = info.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size not in ALLOWED_SIZES:
        raise DataError(explain(f"{Path(root) / 'dataset.json'} 'size'",
                                f"one of {', '.join(map(str, ALLOWED_SIZES))}",
                                "nothing" if size is None else repr(size), REBUILD))
    return size


def check_volume_file(path: Path, size: int) -> None:
    """Check one prepared volume cheaply: a readable ``.npy`` (memory-mapped, header only) of
    shape (S, S, S), dtype float16/float32, and finite values in [-1, 1] on a strided sample
    (every k-th voxel along each axis, k = S // 32: about 32^3 values read per file).

    Raises:
        DataError: one line naming the file, what is wrong and the fix.
    """
    if not path.is_file():
        raise DataError(explain(str(path), "a volume listed in manifest.csv", "no such file",
                                REBUILD))
    if path.stat().st_size == 0:
        raise DataError(explain(str(path), "a .npy volume", "an empty file (0 bytes)", REBUILD))
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(explain(str(path), "a .npy volume", f"an unreadable file ({exc})",
                                REBUILD)) from None
    if array.shape != (size,) * 3:
        raise DataError(explain(str(path), f"shape {(size,) * 3} (dataset.json size {size})",
                                f"shape {array.shape}", REBUILD))
    if array.dtype not in VOLUME_DTYPES:
        raise DataError(explain(str(path), "float16 or float32 values in [-1, 1]",
                                f"dtype {array.dtype} (raw values, not a prepared volume)",
                                REBUILD))
    k = max(1, size // SAMPLE_SIDE)
    sample = np.asarray(array[::k, ::k, ::k], dtype=np.float32)
    if not np.isfinite(sample).all():
        raise DataError(explain(str(path), "finite values", "NaN or infinite values", REBUILD))
    low, high = float(sample.min()), float(sample.max())
    if low < -1 - RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise DataError(explain(str(path), "values in [-1, 1]",
                                f"values from {low:g} to {high:g} (e.g. raw HU, not scaled)",
                                REBUILD))


def validate_dataset(root: PathLike, size: int | None = None) -> dict[str, Any]:
    """Check a prepared dataset before training or evaluation; returns its ``dataset.json``.

    Checks ``dataset.json`` (an object with a valid ``size``), ``manifest.csv`` (present, not
    empty, every file inside ``volumes/``) and each volume (:func:`check_volume_file`). Cost:
    the .npy headers plus about 32^3 voxels per file, memory-mapped.

    Raises:
        DataError: one line naming the file at fault and the fix.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    info = read_info(root)
    found = dataset_size(info, root)
    if size is not None and found != size:
        raise DataError(
            f"the model expects {size}^3 volumes but {root} holds {found}^3 volumes; "
            f"use a dataset prepared with --size {size} or a preset of size {found}")
    if not (root / "manifest.csv").is_file():
        raise DataError(f"{root}/manifest.csv is missing; re-run the preparation step")
    records = read_manifest(root)
    if not records:
        raise DataError(f"{root} holds no volumes (manifest.csv is empty)")
    for record in records:
        check_volume_file(safe_volume_path(root, record.file), found)
    return info


def safe_volume_path(root: Path, name: str) -> Path:
    """Resolve a manifest file name inside ``root/volumes``; refuse paths that escape it."""
    base = (root / "volumes").resolve()
    path = (base / name).resolve()
    if base not in path.parents:
        raise DataError(f"manifest entry {name!r} points outside {base}; refusing to read it")
    return path


class PreparedDataset(Dataset):
    """Volumes of a prepared dataset as tensors ``(1, S, S, S)`` float32 in [-1, 1].

    Args:
        root: The prepared-dataset folder.
        size: Expected cube size; a mismatch raises :class:`DataError` naming both sizes.
        num_classes: Classes of the model that will consume the data. When > 0, items are
            ``(volume, label)`` and the dataset must carry exactly that many classes.
        augment: Apply on-the-fly TorchIO augmentation (see :func:`augmentation`).

    Raises:
        DataError: the folder, its files or its labels do not match what is expected.
    """

    def __init__(self, root: PathLike, size: int | None = None, num_classes: int = 0,
                 augment: bool = False) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"data folder {self.root} does not exist")
        self.info = read_info(self.root)
        if not (self.root / "manifest.csv").is_file():
            raise DataError(f"{self.root}/manifest.csv is missing; re-run the preparation step")
        self.records = read_manifest(self.root)
        if not self.records:
            raise DataError(f"{self.root} holds no volumes (manifest.csv is empty)")
        self.size = dataset_size(self.info, self.root)
        if size is not None and self.size != size:
            raise DataError(
                f"the model expects {size}^3 volumes but {self.root} holds {self.size}^3 volumes; "
                f"use a dataset prepared with --size {size} or a preset of size {self.size}"
            )
        self.paths = [safe_volume_path(self.root, r.file) for r in self.records]
        missing = [str(p) for p in self.paths if not p.is_file()]
        if missing:
            raise DataError(f"{len(missing)} volume file(s) listed in manifest.csv are missing, "
                            f"e.g. {missing[0]}")
        for path in self.paths:  # shape, dtype, finite, range: one line naming a bad file
            check_volume_file(path, self.size)
        self.num_classes = num_classes
        self.labels: list[int] = []
        if num_classes > 0:
            names = list(self.info.get("label_names", []))
            if len(names) != num_classes:
                raise DataError(
                    f"the model has {num_classes} classes but {self.root} has {len(names)} "
                    f"label names ({names}); set num_classes={len(names)} or relabel the data"
                )
            for r in self.records:
                if r.label == "":
                    raise DataError(f"volume {r.file} has no label in manifest.csv")
                try:
                    idx = int(r.label) if r.label.isdigit() else names.index(r.label)
                except ValueError:
                    raise DataError(f"volume {r.file} has unknown label {r.label!r}; "
                                    f"known labels: {names}") from None
                if not 0 <= idx < num_classes:
                    raise DataError(f"volume {r.file} has label {idx}, outside [0, {num_classes})")
                self.labels.append(idx)
        self.transform = augmentation() if augment else None

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> np.ndarray:
        """The stored (S, S, S) array, memory-mapped."""
        return np.load(self.paths[index], mmap_mode="r")

    def select(self, files: Sequence[str]) -> PreparedDataset:
        """This dataset restricted to the volumes named ``files`` (``manifest.csv`` names), in
        that order; used for a run's train split and held-out split (:class:`DataSplit`).

        Raises:
            DataError: a name is not in this dataset's manifest.
        """
        index = {r.file: i for i, r in enumerate(self.records)}
        missing = [f for f in files if f not in index]
        if missing:
            raise DataError(explain(f"volumes of {self.root}", "every volume the split names",
                                    f"{len(missing)} missing from manifest.csv, e.g. "
                                    f"{missing[0]!r}", "Use the dataset the run was trained on."))
        keep = [index[f] for f in files]
        subset = copy.copy(self)
        subset.records = [self.records[i] for i in keep]
        subset.paths = [self.paths[i] for i in keep]
        subset.labels = [self.labels[i] for i in keep] if self.labels else []
        return subset

    def __getitem__(self, index: int):
        array = np.asarray(self.load(index), dtype=np.float32)
        if array.shape != (self.size,) * 3:
            raise DataError(f"{self.paths[index]} has shape {array.shape}, expected "
                            f"{(self.size,) * 3}")
        volume = torch.from_numpy(array.copy())[None]  # (1, S, S, S)
        if self.transform is not None:
            volume = self.transform(volume).clamp_(-1, 1)
        if self.num_classes:
            return volume, self.labels[index]
        return volume


def augmentation():
    """Light TorchIO augmentation for small datasets: left-right flip, small affine, gamma.

    Works on (1, S, S, S) tensors in [-1, 1] with axis 3 = left-right.
    """
    import torchio as tio

    return tio.Compose([
        tio.RandomFlip(axes=(2,), flip_probability=0.5),
        tio.RandomAffine(scales=0.05, degrees=5, translation=2, default_pad_value="minimum", p=0.5),
        tio.RescaleIntensity(out_min_max=(0, 1), in_min_max=(-1, 1)),
        tio.RandomGamma(log_gamma=0.15, p=0.5),
        tio.RescaleIntensity(out_min_max=(-1, 1), in_min_max=(0, 1)),
    ])


class InfiniteSampler(Sampler[int]):
    """Endless shuffled indices that can start at any position, for exact resumption.

    Epoch ``e`` is a permutation drawn from ``seed + e``; the stream is split between DDP ranks
    by striding. ``start`` is the number of indices this rank has already consumed.
    """

    def __init__(self, n: int, seed: int = 0, start: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.n, self.seed, self.start, self.rank, self.world = n, seed, start, rank, world_size

    def __iter__(self) -> Iterator[int]:
        position = self.start * self.world + self.rank  # global position in the shared stream
        cached_epoch, order = -1, np.arange(0)
        while True:
            epoch, offset = divmod(position, self.n)
            if epoch != cached_epoch:
                rng = np.random.default_rng(self.seed + epoch)
                cached_epoch, order = epoch, rng.permutation(self.n)
            yield int(order[offset])
            position += self.world

    def __len__(self) -> int:  # pragma: no cover - endless
        return 2**62


# ---------------------------------------------------------------------------------------------
# The held-out split: which volumes a run trains on and which it never sees
# ---------------------------------------------------------------------------------------------
SPLIT_KIND = "hagan-kit data split"
SPLIT_SEED = 0  # published volume_dataset.py: KFold(n_splits=5, shuffle=True, random_state=0)


@dataclass(frozen=True)
class DataSplit:
    """Which volumes of a prepared dataset a run trains on (``train``) and which it keeps out
    (``heldout``), by ``manifest.csv`` file name. Training writes it into the run folder
    (:func:`hagan.checkpoint.write_split`); ``hagan evaluate`` compares against ``heldout``.

    Attributes:
        data: Absolute path of the prepared dataset when the split was made.
        holdout_fraction: The requested fraction (``Config.holdout_fraction``).
        seed: Seed of the shuffle (:data:`SPLIT_SEED`).
        train, heldout: Sorted file names; disjoint.
    """

    data: str
    holdout_fraction: float
    seed: int
    train: tuple[str, ...]
    heldout: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": SPLIT_KIND, "data": self.data, "holdout_fraction": self.holdout_fraction,
                "seed": self.seed, "train": list(self.train), "heldout": list(self.heldout)}

    @classmethod
    def from_dict(cls, d: Any, where: str = "split") -> DataSplit:
        """Validate and rebuild a split written by :meth:`to_dict`.

        Raises:
            DataError: not a split, a field missing or of the wrong type, or a volume named in
                both lists.
        """
        fields = ("data", "holdout_fraction", "seed", "train", "heldout")
        if not isinstance(d, dict) or d.get("kind") != SPLIT_KIND or any(k not in d
                                                                          for k in fields):
            raise DataError(explain(where, f"a {SPLIT_KIND} with the fields {', '.join(fields)}",
                                    "something else", "It is written by `hagan train`; do not "
                                    "edit it by hand."))
        lists = (d["train"], d["heldout"])
        if not all(isinstance(x, list) and all(isinstance(f, str) for f in x) for x in lists):
            raise DataError(explain(where, "lists of file names in train and heldout",
                                    "other values"))
        both = set(d["train"]) & set(d["heldout"])
        if both:
            raise DataError(explain(where, "disjoint train and held-out volumes",
                                    f"{len(both)} in both, e.g. {sorted(both)[0]!r}"))
        return cls(str(d["data"]), float(d["holdout_fraction"]), int(d["seed"]),
                   tuple(d["train"]), tuple(d["heldout"]))


def holdout_count(n: int, fraction: float) -> int:
    """Volumes held out of ``n`` for ``fraction``: ceil(n * fraction), at most n - 1 (a run keeps
    at least one training volume). At 0.2 this is the size of fold 0 of the published 5-fold
    split (scikit-learn's KFold gives the first n mod 5 folds one extra volume)."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(explain("holdout_fraction", "a value in [0, 1)", str(fraction),
                                  "Use e.g. 0.2 (the published split) or 0 (no held-out set)."))
    if n < 1 or fraction == 0.0:
        return 0
    return min(math.ceil(round(n * fraction, 9)), n - 1)


def split_files(files: Sequence[str], fraction: float, seed: int = SPLIT_SEED
                ) -> tuple[list[str], list[str]]:
    """Seeded split of file names into (train, held-out), both sorted.

    The names are sorted, shuffled with ``numpy.random.RandomState(seed).permutation`` and the
    first :func:`holdout_count` are held out: at ``fraction`` 0.2 and ``seed`` 0 exactly fold 0
    of the published split (``KFold(n_splits=5, shuffle=True, random_state=0)`` over the sorted
    names).
    """
    names = sorted(files)
    order = np.random.RandomState(seed).permutation(len(names))
    n_held = holdout_count(len(names), fraction)
    held = {names[i] for i in order[:n_held]}
    return [f for f in names if f not in held], sorted(held)


def make_split(dataset: PreparedDataset, fraction: float, seed: int = SPLIT_SEED) -> DataSplit:
    """The held-out split of a prepared dataset (see :func:`split_files`).

    Raises:
        ConfigError: ``fraction`` is outside [0, 1).
        DataError: a conditional dataset would keep no training volume of some class.
    """
    train, held = split_files([r.file for r in dataset.records], fraction, seed)
    if dataset.labels:
        label_of = {r.file: lab for r, lab in zip(dataset.records, dataset.labels)}
        lost = sorted(set(dataset.labels) - {label_of[f] for f in train})
        if lost:
            raise DataError(explain(
                f"holdout_fraction {fraction} of {dataset.root}", "training volumes of every "
                "class", f"none left of class {lost[0]}", "Add volumes of that class or lower "
                "holdout_fraction."))
    if fraction > 0 and not held:
        logger.warning("holdout_fraction %s of %d volumes keeps none out: the run trains on all "
                       "of them and `hagan evaluate` will need --heldout", fraction,
                       len(dataset))
    return DataSplit(str(dataset.root.resolve()), float(fraction), int(seed), tuple(train),
                     tuple(held))


# ---------------------------------------------------------------------------------------------
# NIfTI I/O
# ---------------------------------------------------------------------------------------------
NIFTI_XFORM_SCANNER = 1  # qform/sform code "scanner anatomical" (NIfTI-1 standard)
HU_DTYPE = np.int16  # CT samples are stored as whole Hounsfield units, as scanners store them


def _spacing(spacing: Sequence[float], where: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise DataError(explain(where, "three positive voxel sizes (z, y, x) in mm",
                                repr(spacing), "Pass --spacing Z Y X."))
    return values[0], values[1], values[2]


def _check_window(hu_window: Sequence[float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in hu_window)
    if not lo < hi:
        raise DataError(explain("HU window", "LOW < HIGH", f"[{lo}, {hi}]"))
    return lo, hi


def _window(hu_window: Sequence[float] | None) -> tuple[float, float] | None:
    return None if hu_window is None else _check_window(hu_window)


def volume_affine(size: int, spacing: Sequence[float]) -> np.ndarray:
    """RAS+ affine (4, 4) of a kit volume written as (x, y, z) = (L->R, P->A, I->S), centred on 0.

    ``spacing`` is (z, y, x) in mm, the order of the stored array's axes.
    """
    sz, sy, sx = _spacing(spacing, "spacing")
    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = -np.array([sx, sy, sz]) * (size - 1) / 2
    return affine


def nifti_settings(info: dict[str, Any], where: str = "dataset.json") -> dict[str, Any]:
    """``save_nifti`` keyword arguments for volumes of a prepared dataset, from its
    ``dataset.json`` (``info``): ``spacing`` (its ``spacing_mm``) and ``hu_window`` (the CT
    window for ``modality`` ct, else None).

    Raises:
        DataError: no valid ``spacing_mm`` (the voxel size is unknown: never assumed to be 1 mm),
            or a CT dataset without a valid window.
    """
    spacing = _spacing(info.get("spacing_mm") or (), f"spacing_mm in {where}")
    hu_window = None
    if str(info.get("modality", "")).lower() == "ct":
        window = info.get("window")
        if not (isinstance(window, (list, tuple)) and len(window) == 2):
            raise DataError(explain(f"window in {where}", "the CT window [LOW, HIGH] in HU",
                                    repr(window), "Prepare the data with `hagan preprocess "
                                    "--modality ct`."))
        hu_window = _window(window)
    return {"spacing": spacing, "hu_window": hu_window}


def kit_to_hu(volume: np.ndarray, hu_window: Sequence[float]) -> np.ndarray:
    """Invert the preprocessing window: kit values in [-1, 1] -> HU in [LOW, HIGH] (float)."""
    lo, hi = _check_window(hu_window)
    return lo + (np.clip(volume, -1.0, 1.0) + 1.0) * ((hi - lo) / 2.0)


def hu_to_kit(hu: np.ndarray, hu_window: Sequence[float]) -> np.ndarray:
    """The preprocessing window: HU -> kit values in [-1, 1] (float32)."""
    lo, hi = _check_window(hu_window)
    return ((np.clip(hu, lo, hi) - lo) * (2.0 / (hi - lo)) - 1.0).astype(np.float32)


def save_nifti(volume: torch.Tensor | np.ndarray, path: PathLike, spacing: Sequence[float],
               hu_window: Sequence[float] | None = None) -> Path:
    """Write one volume ((S, S, S) or (1, S, S, S), kit axis order z, y, x) as NIfTI-1.

    The array is transposed to (x, y, z) and given an RAS+ affine with the voxel ``spacing``
    (z, y, x) in mm, set as both qform and sform (code 1, scanner anatomical), so that every
    viewer, whichever of the two it reads, shows it the right way up and at its physical size.

    Values:
        * CT (``hu_window`` = the dataset's window ``(LOW, HIGH)`` in HU): the preprocessing
          window is inverted, [-1, 1] -> [LOW, HIGH], and stored as int16 Hounsfield units
          (rounded to 1 HU; unscaled: nibabel writes scl_slope NaN, which NIfTI readers treat as
          "no scaling"); cal_min/cal_max = the window.
          Values outside the window were clipped when the data were prepared, so e.g. bone
          above HIGH reads as HIGH.
        * MRI and anything else (``hu_window`` None): float32, the model's values in [-1, 1]
          as they are. MRI intensities have no physical unit; -1 and 1 are the bottom and top of
          the dataset's intensity scaling (percentile window, see ``dataset.json``).
        The header's ``descrip`` says which. The file is written atomically (a temporary name,
        then renamed): never half-written under ``path``.

    Raises:
        ValueError: the volume is not a cube.
        DataError: ``spacing`` is not three positive numbers or ``hu_window`` not LOW < HIGH.
    """
    import nibabel as nib

    arr = np.asarray(volume.detach().float().cpu() if isinstance(volume, torch.Tensor)
                     else volume, dtype=np.float32)
    arr = arr.reshape(arr.shape[-3:])
    if len(set(arr.shape)) != 1:
        raise ValueError(f"expected a cubic volume, got shape {arr.shape}")
    affine = volume_affine(len(arr), spacing)
    window = _window(hu_window)
    if window is not None:
        data = np.rint(kit_to_hu(arr, window)).astype(HU_DTYPE)
        cal, descrip = window, f"hagan-kit CT in HU (window {window[0]:g}..{window[1]:g})"
    else:
        data, cal = arr, (-1.0, 1.0)
        descrip = "hagan-kit intensity in [-1, 1], no physical unit"
    img = nib.Nifti1Image(data.transpose(2, 1, 0), affine)
    img.set_qform(affine, code=NIFTI_XFORM_SCANNER)
    img.set_sform(affine, code=NIFTI_XFORM_SCANNER)
    header = img.header
    header.set_xyzt_units("mm")
    header.set_data_dtype(data.dtype)
    header["cal_min"], header["cal_max"] = cal
    header["descrip"] = descrip.encode("ascii")[:79]
    with atomic_target(path) as tmp:  # never a half-written file under the final name
        nib.save(img, str(tmp))
    return Path(path)


def load_nifti(path: PathLike, hu_window: Sequence[float] | None = None) -> np.ndarray:
    """Read a NIfTI file (any orientation) back to kit axis order (z, y, x), float32.

    Values are the stored ones after the header's scaling (HU for a CT sample written by
    :func:`save_nifti`); with ``hu_window`` they are mapped back to the kit's [-1, 1]
    (:func:`hu_to_kit`).
    """
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))
    arr = np.asarray(img.get_fdata(dtype=np.float32)).transpose(2, 1, 0)
    return arr if hu_window is None else hu_to_kit(arr, hu_window)
