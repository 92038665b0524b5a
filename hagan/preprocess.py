"""Turn CT/MRI files into a prepared dataset: a TorchIO pipeline from any medical format to a cube.

Per file (the steps of the published ``preprocess.py``, plus orientation and aspect ratio)::

    read NIfTI, NRRD, MHA/MHD, MGZ or a DICOM series     tio.ScalarImage / SimpleITK series reader
    reorient to RAS+                                      tio.ToCanonical
    optional isotropic resampling to ``spacing`` mm       tio.Resample(antialias=True)
    CT: window [low, high] HU -> [-1, 1]                  as tio.Clamp + tio.RescaleIntensity
    MRI: percentiles (0.5, 99.5) -> [-1, 1]               as tio.RescaleIntensity(percentiles)
    trim blank axial slices at both ends                  tio.Crop
    longest side in mm -> S voxels, anti-aliased          tio.Resample(antialias=True)
    pad the other sides to S (keeps the aspect ratio)     tio.CropOrPad, background -1
    store (z, y, x) float16 in [-1, 1]                    hagan.data.atomic_save_npy

Differences from the published script (reference/official-hagan.md section 4): its input-path bug
is gone, volumes are reoriented, the aspect ratio is kept (it stretches to a cube), only blank
slices at the two ends are trimmed (it drops blank planes anywhere), and output is float16.

Safety: nothing is written inside the input folder; output files are written atomically; a
re-run skips files whose parameters and source are unchanged (``preprocess-state.json`` keeps a
key per file); bad files are listed in ``report.csv`` with a one-line reason and skipped.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import ALLOWED_SIZES, MAX_SIZE, MIN_SIZE, PathLike
from .data import DataError, Record, atomic_save_npy, atomic_write_text, write_info, write_manifest

logger = logging.getLogger(__name__)

PIPELINE_VERSION = 1  # part of every file's key: bump it when the pipeline's output changes
CT_WINDOW = (-1024.0, 600.0)  # HU window of the published preprocess.py (COPDGene)
MRI_PERCENTILES = (0.5, 99.5)  # nnU-Net's intensity cut-offs, as in tio.RescaleIntensity's docs
FILE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".mgz", ".mgh")
NOT_DICOM = (".raw", ".zraw", ".txt", ".csv", ".json", ".md", ".png", ".jpg", ".py", ".xml")
BLANK = -1.0 + 1e-3  # after scaling, a slice whose every voxel is <= this is blank
STATE_FILE = "preprocess-state.json"  # output name -> source and parameter key
REPORT_FILE = "report.csv"
STATE_SAVE_SECONDS = 10.0  # save progress this often so an interrupted run resumes
KEY_COLUMNS = ("file", "filename", "path", "subject", "subject_id", "id", "name")
LABEL_COLUMNS = ("label", "class", "diagnosis", "group")


@dataclass
class InputFile:
    """One input volume: a file or a DICOM series (``series`` = its SimpleITK series ID)."""

    path: Path  # the file, or the folder of the DICOM series
    relative: str  # path relative to the input folder, POSIX style
    name: str  # output file name, ``<name>.npy``
    series: str = ""

    @property
    def subject(self) -> str:
        """The file name without its suffixes (or the series folder's name)."""
        base = self.path.name
        for suffix in sorted(FILE_SUFFIXES, key=len, reverse=True):
            if not self.series and base.lower().endswith(suffix):
                return base[: -len(suffix)]
        return base


@dataclass
class PreprocessReport:
    """What a run did. ``failed`` holds ``(input, reason)`` pairs, also in ``report.csv``."""

    out_dir: Path
    written: list[str] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def usable(self) -> int:
        return len(self.written) + len(self.up_to_date)

    def summary(self) -> str:
        text = (f"{len(self.written)} written, {len(self.up_to_date)} already up to date, "
                f"{len(self.failed)} skipped in {self.seconds:.1f} s -> {self.out_dir}")
        if self.failed:
            text += f" (reasons in {self.out_dir / REPORT_FILE})"
        return text


# --- finding the inputs -------------------------------------------------------------------------
def _has_suffix(name: str, suffixes: Sequence[str]) -> bool:
    return any(name.lower().endswith(s) for s in suffixes)


def discover_inputs(input_dir: Path) -> list[InputFile]:
    """Every volume under ``input_dir`` (recursively): image files and DICOM series folders.

    Hidden files and folders are ignored, and so are files of other kinds (``.txt``, ``.raw``
    data of ``.mhd`` headers, ...). Output names are the relative paths with ``/`` -> ``__``.
    """
    import SimpleITK as sitk

    found: list[InputFile] = []
    for folder, dirs, files in os.walk(input_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(folder)
        files = sorted(f for f in files if not f.startswith("."))
        for f in files:
            if _has_suffix(f, FILE_SUFFIXES):
                found.append(InputFile(here / f, (here / f).relative_to(input_dir).as_posix(), ""))
        # DICOM files often have no suffix at all: let GDCM look at whatever else is there
        if any(not _has_suffix(f, FILE_SUFFIXES + NOT_DICOM) for f in files):
            series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(here)) or ()
            relative = here.relative_to(input_dir).as_posix()
            for k, uid in enumerate(sorted(series_ids)):
                label = relative if relative != "." else here.name
                if len(series_ids) > 1:
                    label = f"{label}/series{k + 1}"
                found.append(InputFile(here, label, "", series=uid))
    taken: set[str] = set()
    for item in found:  # unique, readable output names
        stem = item.relative
        for suffix in sorted(FILE_SUFFIXES, key=len, reverse=True):
            if not item.series and stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        name, k = stem.replace("/", "__"), 2
        while name in taken:
            name, k = f"{stem.replace('/', '__')}_{k}", k + 1
        taken.add(name)
        item.name = name
    return found


# --- labels --------------------------------------------------------------------------------------
def read_labels(path: PathLike) -> dict[str, str]:
    """A labels CSV (header row; key column: file/subject/id...; label column: label/class...)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} does not exist")
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 2 or len(rows[0]) < 2:
        raise DataError(f"{path}: expected a header row and rows 'file,label', found "
                        f"{len(rows)} row(s)")
    header = [h.strip().lower() for h in rows[0]]
    key_col = next((header.index(c) for c in KEY_COLUMNS if c in header), 0)
    label_col = next((header.index(c) for c in LABEL_COLUMNS if c in header),
                     1 if key_col == 0 else 0)
    table: dict[str, str] = {}
    for row in rows[1:]:
        if not any(cell.strip() for cell in row):
            continue
        key, label = row[key_col].strip(), row[label_col].strip() if len(row) > label_col else ""
        if not label:
            raise DataError(f"{path}: {key!r} has an empty label")
        table[key] = label
    return table


def match_labels(inputs: list[InputFile], table: dict[str, str],
                 labels_path: PathLike = "labels.csv") -> tuple[dict[str, str], list[str]]:
    """Map every input to its label; returns ``(output name -> class index, label names)``.

    An input matches a row by relative path, file name or subject id. Class indices follow the
    sorted label names (numerically when all labels are numbers).

    Raises:
        DataError: an input has no label, or a row names no input; the message names them.
    """
    used: set[str] = set()
    found: dict[str, str] = {}
    missing = []
    for item in inputs:
        keys = (item.relative, item.path.name, item.subject, item.name)
        key = next((k for k in keys if k in table), None)
        if key is None:
            missing.append(item.relative)
            continue
        used.add(key)
        found[item.name] = table[key]
    if missing:
        raise DataError(f"{len(missing)} input file(s) have no label in {labels_path}: "
                        f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}. "
                        "Add a row 'file,label' for each of them")
    unknown = sorted(set(table) - used)
    if unknown:
        raise DataError(f"{labels_path} names {len(unknown)} file(s) not found in the input "
                        f"folder: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    names = sorted(set(found.values()))
    if all(n.lstrip("-").isdigit() for n in names):
        names = sorted(names, key=int)
    return {k: str(names.index(v)) for k, v in found.items()}, names


# --- one file ------------------------------------------------------------------------------------
NIBABEL_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh")  # SimpleITK turns NaN into 0 in these


def read_volume(item: InputFile):
    """Load an input as a ``tio.ScalarImage`` with shape (C, W, H, D), channels first.

    NIfTI/MGH go through nibabel (SimpleITK silently turns NaN into 0), DICOM series through
    SimpleITK's series reader, everything else through TorchIO's own reader.
    """
    import SimpleITK as sitk
    import torch
    import torchio as tio

    if item.series:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(item.path), item.series))
        data, affine = tio.io.sitk_to_nib(reader.Execute())
        return tio.ScalarImage(tensor=data, affine=affine)
    if _has_suffix(item.path.name, NIBABEL_SUFFIXES):
        import nibabel as nib

        nifti = nib.load(item.path)
        array = np.asarray(nifti.get_fdata(dtype=np.float32))
        if array.ndim == 5 and array.shape[3] == 1:  # NIfTI vector images: (x, y, z, 1, c)
            array = array[:, :, :, 0]
        if array.ndim == 2:
            array = array[:, :, None]
        array = array[None] if array.ndim == 3 else np.moveaxis(array, 3, 0)  # (C, W, H, D)
        if array.ndim != 4:
            raise ValueError(f"not 3D: {array.ndim - 1}D image of shape {nifti.shape}")
        return tio.ScalarImage(tensor=torch.from_numpy(np.ascontiguousarray(array)),
                               affine=nifti.affine)
    image = tio.ScalarImage(item.path)
    with warnings.catch_warnings():  # TorchIO warns when SimpleITK fails and nibabel reads it
        warnings.simplefilter("ignore")
        image.load()
    return image


def _first_sentence(exc: BaseException) -> str:
    """A one-line reason from a reader's (often multi-line, URL-laden) error message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    return lines[0].split(". ")[0].rstrip(".")[:200]


def all_finite(data) -> bool:
    """True when no voxel is NaN or infinite, tested on the sum (no full-size boolean mask).

    A float64 sum of finite float32 values cannot overflow, so a non-finite sum means a
    non-finite voxel.
    """
    import torch

    return bool(torch.isfinite(data.sum(dtype=torch.float64)))


def check_volume(data) -> str:
    """Why a loaded (C, W, H, D) tensor is unusable, or '' when it is fine."""
    import torch

    if data.numel() == 0:
        return "empty image (no voxels)"
    if data.shape[0] > 1:
        return f"not 3D: {data.shape[0]} channels or time points (4D or multi-channel image)"
    if min(data.shape[1:]) == 1:
        return f"not 3D: a 2D image of shape {tuple(int(s) for s in data.shape[1:])}"
    values = data if all_finite(data) else data[torch.isfinite(data)]
    if values.numel() == 0:
        return "all values are NaN or infinite"
    low, high = torch.aminmax(values)
    if low == high:
        return f"constant image (every voxel is {low.item():g})"
    return ""


def scale_intensity(data, low: float, high: float):
    """In place: clamp ``data`` to [low, high] and map it linearly to [-1, 1].

    The same as ``tio.Clamp(low, high)`` then ``tio.RescaleIntensity((-1, 1), in_min_max=(low,
    high))`` (a test checks it) without their three full-size copies per volume.
    """
    return data.clamp_(low, high).sub_(low).mul_(2.0 / (high - low)).sub_(1.0)


def prepare_volume(image, params: dict[str, Any]):
    """The pipeline on a checked image. Returns ``(volume, spacing_mm)`` with ``volume`` a
    (S, S, S) float32 tensor in [-1, 1] in RAS order, or a reason string when it is unusable."""
    import torch
    import torchio as tio

    image = tio.ToCanonical()(image)
    data = image.data.float()
    if not all_finite(data):  # NaN -> the bottom of the window, as the published script
        fill = params["window"][0] if params["window"] else float(data[torch.isfinite(data)].min())
        data = torch.nan_to_num(data, nan=fill, posinf=fill, neginf=fill)
    image.set_data(data)
    if params["spacing"]:
        image = tio.Resample(params["spacing"], antialias=True)(image)
    if params["window"]:
        low, high = params["window"]
    else:
        low, high = (float(v) for v in np.percentile(image.data.numpy(), params["percentiles"]))
        if low == high:
            return f"no contrast between the {params['percentiles']} percentiles ({low:g})"
    image.set_data(scale_intensity(image.data.float(), low, high))
    if params["trim"]:
        keep = torch.nonzero((image.data[0] > BLANK).flatten(0, 1).any(0)).flatten()
        if keep.numel() == 0:
            return "nothing left after trimming blank axial slices (all at the window bottom)"
        depth = image.spatial_shape[2]
        image = tio.Crop((0, 0, 0, 0, int(keep[0]), depth - 1 - int(keep[-1])))(image)
    # the longest side in mm becomes S voxels, then the short sides are padded with -1 (this is
    # cheaper than padding the full-resolution volume to a cube first; TorchIO's Resample keeps
    # the centre and never extrapolates, and Resize has no anti-aliasing)
    extent = max(n * s for n, s in zip(image.spatial_shape, image.spacing))
    size = params["size"]
    image = tio.Resample(extent / size, antialias=True)(image)
    image = tio.CropOrPad((size,) * 3, padding_mode=-1.0)(image)
    return image.data[0].clamp_(-1, 1), extent / size


def prepare_one(job: tuple[InputFile, dict[str, Any], str]) -> dict[str, Any]:
    """Worker: read, check, prepare and write one input. Never raises for a bad file."""
    item, params, out_path = job
    result: dict[str, Any] = {"name": item.name, "input": item.relative, "reason": ""}
    try:
        image = read_volume(item)
    except Exception as exc:  # noqa: BLE001 - any reader error means: cannot be read
        result["reason"] = f"cannot be read: {_first_sentence(exc)}"
        return result
    result["shape"] = "x".join(str(int(n)) for n in image.spatial_shape)
    result["spacing"] = "x".join(f"{s:g}" for s in image.spacing)
    reason = check_volume(image.data)
    if not reason:
        try:
            volume = prepare_volume(image, params)
        except (RuntimeError, ValueError) as exc:
            volume = f"failed in the pipeline: {_first_sentence(exc)}"
        if isinstance(volume, str):
            reason = volume
        else:
            array = volume[0].numpy().transpose(2, 1, 0).astype(np.float16)  # RAS -> (z, y, x)
            atomic_save_npy(out_path, array)
            result["out_spacing"] = volume[1]
    result["reason"] = reason
    return result


# --- the run -------------------------------------------------------------------------------------
def parameters(size: int, modality: str, window: Sequence[float] | None,
               percentiles: Sequence[float], spacing: float | None,
               trim: bool) -> dict[str, Any]:
    """Validated pipeline parameters (recorded in dataset.json and hashed into each file's key)."""
    if size not in ALLOWED_SIZES:
        raise ValueError(f"Expected a cube side 2^k in [{MIN_SIZE}, {MAX_SIZE}] "
                         f"({', '.join(map(str, ALLOWED_SIZES))}), found --size {size}.")
    if modality not in ("ct", "mri"):
        raise ValueError(f"Expected --modality ct or mri, found {modality!r}.")
    if window is None and modality == "ct":
        window = CT_WINDOW
    if window is not None:
        if len(window) != 2 or not float(window[0]) < float(window[1]):
            raise ValueError(f"Expected a window LOW HIGH with LOW < HIGH, found {list(window)}.")
        window = [float(window[0]), float(window[1])]
    p = [float(v) for v in percentiles]
    if len(p) != 2 or not 0.0 <= p[0] < p[1] <= 100.0:
        raise ValueError(f"Expected percentiles P1 P2 with 0 <= P1 < P2 <= 100, found {p}.")
    if spacing is not None and not float(spacing) > 0:
        raise ValueError(f"Expected a positive --spacing in mm, found {spacing}.")
    return {"version": PIPELINE_VERSION, "size": int(size), "modality": modality,
            "window": window, "percentiles": None if window else p,
            "spacing": float(spacing) if spacing else None, "trim": bool(trim)}


def _check_folders(input_dir: PathLike, out_dir: PathLike, force: bool) -> tuple[Path, Path]:
    source, out = Path(input_dir).resolve(), Path(out_dir).resolve()
    if not source.exists():
        raise FileNotFoundError(f"input folder {input_dir} does not exist")
    if not source.is_dir():
        raise NotADirectoryError(f"input {input_dir} is not a folder; put the files in a folder")
    if out == source or source in out.parents:
        raise ValueError(f"refusing to write into the input folder: {out_dir} is inside "
                         f"{input_dir}. Choose an output folder outside it")
    if source == out / "volumes" or (out / "volumes") in source.parents:
        raise ValueError(f"the input folder {input_dir} lies in {out_dir}/volumes, where the "
                         "output goes; move it or choose another output folder")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output {out_dir} exists and is not a folder")
    if (out.is_dir() and any(out.iterdir()) and not (out / STATE_FILE).is_file()
            and not force):
        raise FileExistsError(f"{out_dir} is not empty and was not made by `hagan preprocess`; "
                              "choose an empty or new folder, or pass --force")
    return source, out


def _fingerprint(item: InputFile) -> list:
    """Names, sizes and modification times of the files behind an input."""
    if item.series:
        paths = sorted(p for p in item.path.iterdir() if p.is_file())
    else:
        stem = item.subject
        paths = [item.path] + sorted(p for p in item.path.parent.glob(f"{stem}.*")
                                     if p != item.path and _has_suffix(p.name, (".raw", ".zraw")))
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in paths]


def _file_key(item: InputFile, params: dict[str, Any]) -> str:
    blob = json.dumps([params, item.relative, item.series, _fingerprint(item)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_state(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / STATE_FILE).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def single_thread() -> None:
    """Pool initializer: one thread per worker process, the pool gives the parallelism."""
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _run_jobs(jobs: list, workers: int, progress: bool):
    """Yield worker results as files finish, in a process pool when ``workers > 1``."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="preprocess", unit="file", disable=not progress)
    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield prepare_one(job)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                                     initializer=single_thread) as pool:
                futures = [pool.submit(prepare_one, job) for job in jobs]
                try:
                    for future in as_completed(futures):
                        yield future.result()
                        bar.update()
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        bar.close()


def preprocess(input_dir: PathLike, out_dir: PathLike, size: int, modality: str = "ct",
               window: Sequence[float] | None = None,
               percentiles: Sequence[float] = MRI_PERCENTILES, spacing: float | None = None,
               trim: bool = True, labels: PathLike | None = None, workers: int = 1,
               strict: bool = False, progress: bool = True, *,
               force: bool = False) -> PreprocessReport:
    """Prepare every CT/MRI volume under ``input_dir`` as a dataset of ``size``^3 cubes.

    Args:
        input_dir: Folder searched recursively for NIfTI, NRRD, MHA/MHD, MGZ files and DICOM
            series; it is only read.
        out_dir: Output folder (outside ``input_dir``): ``volumes/*.npy`` (S, S, S) float16 in
            [-1, 1] with axes (z, y, x), ``manifest.csv``, ``dataset.json``, ``report.csv``.
        size: Cube edge S (32, 64, 128 or 256).
        modality: ``"ct"`` (HU window) or ``"mri"`` (percentile scaling).
        window: ``(low, high)`` intensity window mapped to [-1, 1]; default [-1024, 600] HU for CT
            (the published value); for MRI it replaces the percentiles.
        percentiles: MRI cut-offs mapped to -1 and 1 (default (0.5, 99.5), as nnU-Net).
        spacing: Resample to this isotropic voxel size in mm first (None keeps the voxels).
        trim: Drop blank axial slices (entirely at the bottom of the window) at both ends.
        labels: CSV mapping file name or subject id to a label (strings allowed).
        workers: Processes working on files in parallel.
        strict: Raise when any input had to be skipped.
        progress: Show a tqdm progress bar.
        force: Write into a non-empty folder that was not made by ``preprocess``.

    Returns:
        A :class:`PreprocessReport`; the same summary goes to the log.

    Raises:
        ValueError: bad parameters, or ``out_dir`` inside ``input_dir``.
        FileNotFoundError, NotADirectoryError, FileExistsError: unusable folders.
        DataError: no inputs, label problems, nothing usable produced, or a skip with ``strict``.
    """
    start = time.perf_counter()
    params = parameters(size, modality, window, percentiles, spacing, trim)
    if workers < 1:
        raise ValueError(f"Expected --workers >= 1, found {workers}.")
    source, out = _check_folders(input_dir, out_dir, force)
    inputs = discover_inputs(source)
    if not inputs:
        raise DataError(f"no image files found in {input_dir} (looked for "
                        f"{', '.join(FILE_SUFFIXES)} files and DICOM series, recursively)")
    label_of, label_names = ({}, [])
    if labels is not None:
        label_of, label_names = match_labels(inputs, read_labels(labels), labels)
    state = _read_state(out)  # output name -> entry; updated as files finish, saved at the end
    report = PreprocessReport(out)
    jobs, keys = [], {}
    for item in inputs:
        keys[item.name] = _file_key(item, params)
        entry, path = state.get(item.name), out / "volumes" / f"{item.name}.npy"
        if entry and entry.get("key") == keys[item.name] and path.is_file():
            report.up_to_date.append(item.relative)
        else:
            state.pop(item.name, None)
            jobs.append((item, params, str(path)))
    for name in set(state) - set(keys):  # inputs that are gone: drop the outputs this tool made
        (out / "volumes" / f"{name}.npy").unlink(missing_ok=True)
        del state[name]
    (out / "volumes").mkdir(parents=True, exist_ok=True)
    last_save = time.monotonic()
    try:
        for result in _run_jobs(jobs, workers, progress):
            name = result["name"]
            if result["reason"]:
                report.failed.append((result["input"], result["reason"]))
                logger.warning("skipped %s: %s", result["input"], result["reason"])
                (out / "volumes" / f"{name}.npy").unlink(missing_ok=True)  # no stale result
                continue
            report.written.append(result["input"])
            state[name] = {"input": result["input"], "key": keys[name], "shape": result["shape"],
                           "spacing": result["spacing"], "out_spacing": result["out_spacing"]}
            if time.monotonic() - last_save > STATE_SAVE_SECONDS:
                _save_state(out, state, params)
                last_save = time.monotonic()
    finally:  # also on Ctrl-C: the files done so far are not redone next time
        _save_state(out, state, params)
    report.seconds = time.perf_counter() - start
    _write_outputs(out, inputs, state, report, params, label_of, label_names, source)
    logger.info("preprocess: %s", report.summary())
    if report.usable == 0:
        first = report.failed[0] if report.failed else ("?", "?")
        raise DataError(f"nothing usable was produced: all {len(inputs)} input(s) were skipped, "
                        f"e.g. {first[0]}: {first[1]} (all reasons in {out / REPORT_FILE})")
    if strict and report.failed:
        raise DataError(f"{len(report.failed)} of {len(inputs)} input(s) were skipped and "
                        f"strict mode is on; reasons in {out / REPORT_FILE}")
    return report


def _save_state(out: Path, files: dict[str, Any], params: dict[str, Any]) -> None:
    atomic_write_text(out / STATE_FILE, json.dumps({"params": params, "files": files},
                                                   indent=1, sort_keys=True) + "\n")


def _write_outputs(out: Path, inputs: list[InputFile], state: dict[str, Any],
                   report: PreprocessReport, params: dict[str, Any], label_of: dict[str, str],
                   label_names: list[str], source: Path) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["input", "reason"])
    writer.writerows(sorted(report.failed))
    atomic_write_text(out / REPORT_FILE, buf.getvalue())
    done = [item for item in sorted(inputs, key=lambda i: i.name) if item.name in state]
    write_manifest(out, [Record(file=f"{item.name}.npy", label=label_of.get(item.name, ""),
                                source=item.relative, original_shape=state[item.name]["shape"],
                                original_spacing=state[item.name]["spacing"]) for item in done])
    spacings = [state[item.name]["out_spacing"] for item in done] or [0.0]
    write_info(out, {
        **{k: v for k, v in params.items() if k != "version"},
        "size": params["size"], "source": str(source), "n": len(done),
        "spacing_mm": [float(np.median(spacings))] * 3,
        "spacing_mm_range": [float(min(spacings)), float(max(spacings))],
        "label_names": label_names, "dtype": "float16",
        "axes": ["inferior->superior", "posterior->anterior", "left->right"],
        "pipeline_version": params["version"], "created_by": "hagan.preprocess",
    })


# --- CLI: hagan preprocess IN OUT ----------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="folder with NIfTI/NRRD/MHA/MHD/MGZ files or DICOM series "
                                      "(searched recursively, never written to)")
    parser.add_argument("out", help="output folder for the prepared dataset (outside INPUT)")
    parser.add_argument("--size", type=int, required=True,
                        help=f"cube edge, one of {', '.join(map(str, ALLOWED_SIZES))}")
    parser.add_argument("--modality", choices=("ct", "mri"), required=True,
                        help="ct: HU window; mri: percentile scaling")
    parser.add_argument("--window", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help=f"intensity window mapped to [-1, 1] (CT default {list(CT_WINDOW)})")
    parser.add_argument("--percentiles", type=float, nargs=2, metavar=("P1", "P2"),
                        default=list(MRI_PERCENTILES),
                        help="MRI percentiles mapped to -1 and 1 "
                             f"(default {list(MRI_PERCENTILES)})")
    parser.add_argument("--spacing", type=float, metavar="MM",
                        help="resample to this isotropic voxel size first (default: keep)")
    parser.add_argument("--no-trim", action="store_true",
                        help="keep blank axial slices at both ends")
    parser.add_argument("--labels", metavar="CSV", help="CSV 'file,label' for conditional models")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument("--strict", action="store_true",
                        help="fail (exit non-zero) when any input is skipped")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty folder not made by hagan preprocess")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def main(args: argparse.Namespace) -> int:
    report = preprocess(args.input, args.out, size=args.size, modality=args.modality,
                        window=args.window, percentiles=args.percentiles, spacing=args.spacing,
                        trim=not args.no_trim, labels=args.labels, workers=args.workers,
                        strict=args.strict, progress=not args.no_progress, force=args.force)
    print(f"hagan preprocess: {report.summary()}")
    return 0
