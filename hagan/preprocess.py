"""Turn CT/MRI files into a prepared dataset: a TorchIO pipeline from any medical format to a cube.

Per file (the steps of the published ``preprocess.py``, plus orientation and aspect ratio)::

    read NIfTI, NRRD, MHA/MHD, MGZ, MINC, PAR/REC,      nibabel / SimpleITK (any integer or
      AFNI, ECAT or a DICOM series (geometry checked)     float type -> float32)
    reorient to RAS+                                      tio.ToCanonical
    optional isotropic resampling to ``spacing`` mm       tio.Resample(antialias=True)
    CT: window [low, high] HU -> [-1, 1]                  as tio.Clamp + tio.RescaleIntensity
    MRI: percentiles (0.5, 99.5) -> [-1, 1]               as tio.RescaleIntensity(percentiles)
    trim blank axial slices at both ends                  tio.Crop
    longest side in mm -> S voxels, anti-aliased          tio.Resample(antialias=True)
    pad the other sides to S (keeps the aspect ratio)     tio.CropOrPad, background -1
    store (z, y, x) float16 in [-1, 1]                    hagan.fileio.atomic_save_npy

Differences from the published script (batmanlab/HA-GAN, preprocess.py): its input-path bug
is gone, volumes are reoriented, the aspect ratio is kept (it stretches to a cube), only blank
slices at the two ends are trimmed (it drops blank planes anywhere), and output is float16.

Every file is accounted for: ``inputs.csv`` lists each file of the input folder with what became
of it (prepared, skipped, dropped duplicate slice, data file of a header, ignored); ``report.csv``
gives the one-line reason for each skipped input (unsupported formats included), each flagged
output (blank or near-constant; skipped under ``--strict``) and each dropped file. DICOM files
are grouped by folder and SeriesInstanceUID; a series is refused with the reason when its slices
are not one evenly spaced stack of parallel slices (missing slices, different slices at one
position, uneven steps, mixed orientations); exact duplicate slices are dropped.

Safety: nothing is written inside the input folder, and nothing outside the output folder is
written or deleted, whatever ``preprocess-state.json`` says (it is validated: every name it holds
must resolve inside ``OUT/volumes``); output files are written atomically; a re-run skips files
whose parameters and source are unchanged; the state file is written first, so an interrupted
run (Ctrl-C, SIGTERM: the worker processes are stopped too) is resumed by the next one; a run
into an existing dataset with another input folder or other parameters (size, modality,
window, percentiles, spacing, trim, labels, pipeline version) is refused, naming what changed,
unless ``--replace``, which moves the earlier dataset into ``OUT/previous-<time>/``: a dataset
is never rebuilt in place; ``--spacing`` refuses a file whose resampled volume would exceed
``--max-resample-gib`` (2 GiB) before allocating it. Prepared volumes whose voxel sizes differ
by more than 10 % are warned about (``spacing_mixed`` in ``dataset.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import re
import signal
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import ALLOWED_SIZES, MAX_SIZE, MIN_SIZE, PathLike
from .data import DataError, Record, write_info, write_manifest
from .errors import ConfigError, RunError, explain
from .fileio import atomic_save_npy, atomic_write_text, is_lock_file

logger = logging.getLogger(__name__)

PIPELINE_VERSION = 1  # part of every file's key: bump it when the pipeline's output changes
CT_WINDOW = (-1024.0, 600.0)  # HU window of the published preprocess.py (COPDGene)
MRI_PERCENTILES = (0.5, 99.5)  # the percentiles nnU-Net clips CT at (it z-scores MRI instead)
FILE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".mgz", ".mgh")
# read through nibabel only: MINC, PAR/REC, Analyze/NIfTI pairs, AFNI, ECAT
NIBABEL_ONLY = (".mnc", ".par", ".hdr", ".head", ".v")
# (data suffixes, header suffixes): a data file beside a header of the same stem is no input
SIDECARS = (((".img", ".img.gz"), (".hdr",)), ((".rec",), (".par",)),
            ((".brik", ".brik.gz", ".brik.bz2"), (".head",)),
            ((".raw", ".zraw", ".raw.gz"), (".mhd", ".nhdr")))
# documentation, code and tables: listed as "not an image", never an input
NOT_IMAGES = (".txt", ".csv", ".tsv", ".json", ".md", ".rst", ".py", ".m", ".xml", ".html",
              ".yaml", ".yml", ".log", ".dump", ".icc", ".bval", ".bvec", ".ipynb", ".pdf",
              ".sh", ".pyc")
BLANK = -1.0 + 1e-3  # after scaling, a slice whose every voxel is <= this is blank
STATE_FILE = "preprocess-state.json"  # output name -> source and parameter key
REPORT_FILE = "report.csv"
INPUTS_FILE = "inputs.csv"  # every file found in the input folder and what became of it
MIN_SIDE = 4  # TorchIO's anti-aliasing (SimpleITK smoothing) needs 4 voxels along each axis
SPACING_MIXED_RATIO = 1.1  # largest / smallest output voxel size above this: warned, flagged
MAX_RESAMPLE_GIB = 2.0  # --spacing refuses a file whose resampled float32 volume exceeds this
STATE_SAVE_SECONDS = 10.0  # save progress this often so an interrupted run resumes
KEY_COLUMNS = ("file", "filename", "path", "subject", "subject_id", "id", "name")
LABEL_COLUMNS = ("label", "class", "diagnosis", "group")


@dataclass
class InputFile:
    """One input: an image file, a DICOM series, or a file that cannot be prepared.

    ``files`` are the files behind the input (for a DICOM series: its slices in order along the
    slice normal); ``problem`` is set at discovery when the input is refused without reading it
    (unsupported format, inconsistent DICOM geometry); ``dropped`` lists ``(file, reason)`` of
    files left out of a series (exact duplicate slices).
    """

    path: Path  # the file, or the folder of the DICOM series
    relative: str  # path relative to the input folder, POSIX style (a series: folder[/seriesK])
    name: str  # output file name, ``<name>.npy``
    series: str = ""  # SeriesInstanceUID of a DICOM series
    files: list[Path] = field(default_factory=list)
    problem: str = ""
    dropped: list[tuple[str, str]] = field(default_factory=list)
    sidecars: list[Path] = field(default_factory=list)

    @property
    def subject(self) -> str:
        """The file name without its suffixes (or the series folder's name)."""
        base = self.path.name
        for suffix in sorted(FILE_SUFFIXES + NIBABEL_ONLY, key=len, reverse=True):
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
    flagged: list[tuple[str, str]] = field(default_factory=list)  # written, but looks blank
    seconds: float = 0.0
    moved_aside: Path | None = None  # where --replace moved an earlier dataset
    warnings: list[str] = field(default_factory=list)  # e.g. mixed voxel sizes (also logged)

    @property
    def usable(self) -> int:
        return len(self.written) + len(self.up_to_date)

    def summary(self) -> str:
        text = (f"{_count(len(self.written), 'volume')} written, {len(self.up_to_date)} "
                f"already up to date, {len(self.failed)} skipped in {self.seconds:.1f} s "
                f"-> {self.out_dir}")
        if self.flagged:
            text += f", {len(self.flagged)} flagged as blank or near-constant"
        if self.failed or self.flagged:
            text += f" (reasons in {self.out_dir / REPORT_FILE})"
        if self.moved_aside:
            text += f"; the earlier dataset was moved to {self.moved_aside}"
        return text


def _count(n: int, noun: str) -> str:
    """``"1 volume"``, ``"2 volumes"``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


@dataclass
class Discovery:
    """Everything found under the input folder: the inputs, and the files that are no input
    (documentation, code, sidecar data files), each with why: ``ignored`` holds
    ``(relative file, reason)``."""

    inputs: list[InputFile]
    ignored: list[tuple[str, str]]


# --- finding the inputs -------------------------------------------------------------------------
def _has_suffix(name: str, suffixes: Sequence[str]) -> bool:
    return any(name.lower().endswith(s) for s in suffixes)


def _strip_suffix(name: str, suffixes: Sequence[str]) -> str:
    for suffix in sorted(suffixes, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _header_data_files(path: Path) -> list[str]:
    """The data file names a ``.mhd`` (ElementDataFile) or ``.nhdr`` (data file) header names."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")[:20000]
    except OSError:
        return []
    names = []
    for line in text.splitlines():
        key, sep, value = line.partition("=" if path.suffix.lower() == ".mhd" else ":")
        key = key.strip().lower()
        if sep and key in ("elementdatafile", "data file", "datafile"):
            value = value.strip()
            if value and value.upper() not in ("LOCAL", "LIST"):
                names.append(value.split()[0])
    return names


def _sidecar_of(name: str, names: set[str]) -> str | None:
    """The header file beside which ``name`` is a data file (e.g. ``x.img`` of ``x.hdr``)."""
    lower = {n.lower(): n for n in names}
    for data_suffixes, header_suffixes in SIDECARS:
        if _has_suffix(name, data_suffixes):
            stem = _strip_suffix(name, data_suffixes).lower()
            for header in header_suffixes:
                if stem + header in lower:
                    return lower[stem + header]
    return None


def _is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 files start with a 128-byte preamble and ``DICM``; a file without a suffix
    may also be DICOM without that preamble (older scanners): pydicom must then find image or
    SOP class tags in it."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:] == b"DICM":
        return True
    if Path(path).suffix:
        return False
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True,
                                 specific_tags=["SOPClassUID", "Rows", "Modality"])
    except Exception:  # noqa: BLE001 - not parseable as DICOM
        return False
    return "SOPClassUID" in ds or "Rows" in ds


def _series_problem(headers: list[tuple[Path, Any]], folder_label: str
                    ) -> tuple[list[Path], str, list[tuple[Path, str]]]:
    """Check the geometry of one DICOM series; returns ``(files in slice order, problem,
    dropped duplicates)``.

    The slice normal is the cross product of the row and column directions of
    ImageOrientationPatient; each slice's position along it is ImagePositionPatient . normal.
    Refused: mixed orientations, missing positions, two different slices at one position, a gap
    of more than 1.5 times the median step (missing slices) and otherwise non-uniform steps
    (more than 1 % + 0.01 mm off the median). Exact copies of a slice (same pixel bytes) are
    dropped and listed.
    """
    if len(headers) == 1:
        return [headers[0][0]], "", []
    orientations, positions = [], []
    for path, ds in headers:
        iop, ipp = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
        if iop is None or ipp is None or len(iop) != 6 or len(ipp) != 3:
            return [p for p, _ in headers], (
                f"DICOM series of {len(headers)} files without slice geometry: {path.name} has "
                "no ImagePositionPatient/ImageOrientationPatient, so the slice order and "
                "spacing are unknown"), []
        orientations.append(np.asarray([float(v) for v in iop]))
        positions.append(np.asarray([float(v) for v in ipp]))
    first = orientations[0]
    odd = [headers[k][0].name for k, o in enumerate(orientations) if np.abs(o - first).max() > 1e-4]
    if odd:
        return [p for p, _ in headers], (
            f"DICOM series with mixed slice orientations: {len(odd)} of {len(headers)} files "
            f"(e.g. {odd[0]}) are not parallel to {headers[0][0].name}; a series must be a "
            "stack of parallel slices (split it, or export the volume as NIfTI)"), []
    normal = np.cross(first[:3], first[3:])
    depth = np.asarray([float(p @ normal) for p in positions])
    order = np.argsort(depth, kind="stable")
    kept: list[int] = []
    dropped: list[tuple[Path, str]] = []
    for k in order:
        if kept and abs(depth[k] - depth[kept[-1]]) < 1e-3:
            a, b = headers[kept[-1]], headers[k]
            if _pixel_bytes(a[0]) == _pixel_bytes(b[0]):
                dropped.append((b[0], f"exact duplicate of {a[0].name} (same position and "
                                      "pixels); left out of the series"))
                continue
            return [p for p, _ in headers], (
                f"DICOM series with two different slices at one position ({depth[k]:.2f} mm "
                f"along the normal): {a[0].name} and {b[0].name}; remove the wrong one"), []
        kept.append(int(k))
    files = [headers[k][0] for k in kept]
    if len(kept) < 2:
        return files, "", dropped
    steps = np.diff(depth[kept])
    median = float(np.median(steps))
    worst = int(np.argmax(np.abs(steps - median)))
    if steps[worst] > 1.5 * median:
        missing = round(steps[worst] / median) - 1
        return files, (
            f"DICOM series with missing slices: a gap of {steps[worst]:.2f} mm between "
            f"{files[worst].name} and {files[worst + 1].name} where the slices are "
            f"{median:.2f} mm apart (about {_count(missing, 'slice')} missing); add them or "
            "prepare the parts as separate series"), dropped
    if abs(steps[worst] - median) > 0.01 * median + 0.01:
        return files, (
            f"DICOM series with non-uniform slice spacing: steps from {steps.min():.3f} to "
            f"{steps.max():.3f} mm (median {median:.3f} mm); resample it to a regular grid "
            "first"), dropped
    return files, "", dropped


def _pixel_bytes(path: Path) -> bytes | None:
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True)
        return bytes(ds.PixelData) if "PixelData" in ds else None
    except Exception:  # noqa: BLE001 - unreadable pixels: never equal to anything
        return None


def _dicom_inputs(here: Path, paths: list[Path], input_dir: Path
                  ) -> list[InputFile]:
    """The DICOM files of one folder as inputs: one per series (SeriesInstanceUID), each with
    its geometry checked; unreadable files and DICOM objects without pixels are inputs of their
    own with the reason."""
    import pydicom

    inputs: list[InputFile] = []
    groups: dict[str, list[tuple[Path, Any]]] = {}
    for path in paths:
        relative = path.relative_to(input_dir).as_posix()
        try:
            with warnings.catch_warnings():  # pydicom warns about every odd value
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception as exc:  # noqa: BLE001 - any parse error: unreadable
            inputs.append(InputFile(path, relative, "", files=[path],
                                    problem=f"cannot be read as DICOM: {one_line(exc)}"))
            continue
        if "Rows" not in ds or "Columns" not in ds:
            modality = ds.get("Modality", "") or "unknown modality"
            inputs.append(InputFile(path, relative, "", files=[path], problem=(
                f"DICOM object without an image ({modality}, "
                f"{getattr(ds.get('SOPClassUID'), 'name', 'no SOP class')}): nothing to prepare")))
            continue
        try:
            frames = int(ds.get("NumberOfFrames", 1) or 1)
        except (TypeError, ValueError):
            frames = 1
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if frames > 1 or not uid:  # a multi-frame file is a volume of its own
            uid = f"{uid}:file:{path.name}"
        groups.setdefault(uid, []).append((path, ds))
    folder = here.relative_to(input_dir).as_posix()
    folder = folder if folder != "." else here.name
    multi = [uid for uid, members in groups.items() if len(members) > 1]
    for k, uid in enumerate(sorted(groups, key=lambda u: groups[u][0][0].name)):
        members = sorted(groups[uid], key=lambda m: m[0].name)
        if len(members) == 1:  # a single file (maybe multi-frame) is named by its own path
            path = members[0][0]
            inputs.append(InputFile(path, path.relative_to(input_dir).as_posix(), "",
                                    series=uid, files=[path]))
            continue
        label = folder if len(multi) == 1 and len(groups) == 1 else f"{folder}/series{k + 1}"
        files, problem, dropped = _series_problem(members, label)
        inputs.append(InputFile(here, label, "", series=uid, files=files, problem=problem,
                                dropped=[(p.relative_to(input_dir).as_posix(), why)
                                         for p, why in dropped]))
    return inputs


def discover(input_dir: Path) -> Discovery:
    """Every file under ``input_dir`` (recursively, hidden ones aside), sorted into inputs and
    files that are no input.

    Inputs: image files (NIfTI, NRRD, MHA/MHD, MGH/MGZ, and through nibabel MINC, PAR/REC,
    Analyze, AFNI, ECAT), DICOM series (one per SeriesInstanceUID and folder, geometry checked,
    see :func:`_series_problem`) and every other file that is not obviously documentation or a
    data file of a header beside it: those become inputs with a ``problem`` ("unsupported
    format"), so that each one is listed in ``report.csv``. Output names are the relative paths
    with ``/`` -> ``__``.
    """
    found: list[InputFile] = []
    ignored: list[tuple[str, str]] = []
    for folder, dirs, files in os.walk(input_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(folder)
        ignored += [((here / f).relative_to(input_dir).as_posix(), "hidden file")
                    for f in sorted(files) if f.startswith(".")]
        files = sorted(f for f in files if not f.startswith("."))
        names = set(files)
        data_files: dict[str, str] = {}
        for f in files:
            if _has_suffix(f, (".mhd", ".nhdr")):
                for data in _header_data_files(here / f):
                    data_files.setdefault(Path(data).name, f)
        dicom: list[Path] = []
        for f in files:
            path = here / f
            relative = path.relative_to(input_dir).as_posix()
            header = data_files.get(f) or _sidecar_of(f, names)
            if header and header != f:
                ignored.append((relative, f"data file of {header}"))
            elif _has_suffix(f, FILE_SUFFIXES + NIBABEL_ONLY):
                found.append(InputFile(path, relative, "", files=[path]))
            elif _has_suffix(f, NOT_IMAGES):
                ignored.append((relative, "not an image (documentation, code or table)"))
            elif _has_suffix(f, (".dcm", ".dicom", ".ima")) or _is_dicom_file(path):
                dicom.append(path)
            else:
                kind = Path(f).suffix.lower() or "no suffix"
                found.append(InputFile(path, relative, "", files=[path], problem=(
                    f"unsupported format ({kind}): not a DICOM file nor one of "
                    f"{', '.join(FILE_SUFFIXES + NIBABEL_ONLY)}")))
        if dicom:
            with warnings.catch_warnings():  # pydicom warns about every odd value it parses
                warnings.simplefilter("ignore")
                found.extend(_dicom_inputs(here, dicom, input_dir))
    for item in found:  # the data files of an input (for its fingerprint)
        if not item.series:
            item.sidecars = [input_dir / rel for rel, why in ignored
                             if why == f"data file of {item.path.name}"
                             and (input_dir / rel).parent == item.path.parent]
    taken: set[str] = set()
    for item in found:  # unique, readable output names
        stem = item.relative
        if not item.series:
            stem = _strip_suffix(stem, FILE_SUFFIXES + NIBABEL_ONLY)
        elif item.path.is_file():  # a single DICOM file
            stem = _strip_suffix(stem, (".dcm", ".dicom", ".ima"))
        name, k = stem.replace("/", "__"), 2
        while name in taken:
            name, k = f"{stem.replace('/', '__')}_{k}", k + 1
        taken.add(name)
        item.name = name
    return Discovery(found, ignored)


def discover_inputs(input_dir: Path) -> list[InputFile]:
    """The inputs of :func:`discover` (files that are no input left out)."""
    return discover(input_dir).inputs


# --- labels --------------------------------------------------------------------------------------
def read_labels(path: PathLike) -> dict[str, str]:
    """A labels CSV (header row; key column: file/subject/id...; label column: label/class...)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(explain("--labels", "an existing CSV 'file,label'",
                                f"labels file {path} (does not exist)", "Check the path."))
    with open(path, newline="", encoding="utf-8-sig") as fh:  # never the process locale
        rows = list(csv.reader(fh))
    if len(rows) < 2 or len(rows[0]) < 2:
        raise DataError(f"{path}: expected a header row and rows 'file,label', found "
                        f"{_count(len(rows), 'row')}")
    header = [h.strip().lower() for h in rows[0]]
    key_col = next((header.index(c) for c in KEY_COLUMNS if c in header), 0)
    label_col = next((header.index(c) for c in LABEL_COLUMNS if c in header),
                     1 if key_col == 0 else 0)
    table: dict[str, str] = {}
    first_row: dict[str, int] = {}
    need = max(key_col, label_col) + 1
    for number, row in enumerate(rows[1:], start=2):  # row numbers as a spreadsheet shows them
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < need:
            raise DataError(explain(f"{path} row {number}", f"{need} cells (file, label)",
                                    f"{len(row)}: {','.join(row)[:60]!r}",
                                    "Complete the row or delete it."))
        key, label = row[key_col].strip(), row[label_col].strip()
        if not label:
            raise DataError(f"{path}: {key!r} has an empty label (row {number})")
        if key in table and table[key] != label:
            raise DataError(explain(f"{path} rows {first_row[key]} and {number}",
                                    f"one label per file, {key!r}",
                                    f"{table[key]!r} and {label!r}", "Keep the right row."))
        table[key] = label
        first_row.setdefault(key, number)
    return table


def match_labels(inputs: list[InputFile], table: dict[str, str],
                 labels_path: PathLike = "labels.csv") -> tuple[dict[str, str], list[str]]:
    """Match the rows of a labels table to inputs; returns ``(output name -> class index, label
    names)`` for the inputs that have a row (see :func:`missing_labels` for the others).

    A row's key matches an input's relative path first (``a/scan.nii``); otherwise a bare file
    name, subject id or output name, which must then name exactly one input: ``scan.nii`` with
    ``a/scan.nii`` and ``b/scan.nii`` is refused. Class indices follow the sorted label names
    (numerically when all labels are numbers).

    Raises:
        DataError: a row names no input, or a bare name names several; the message names them.
    """
    by_relative = {item.relative: item for item in inputs}
    by_name: dict[str, list[InputFile]] = {}
    for item in inputs:
        for key in dict.fromkeys((item.path.name, item.subject, item.name)):
            by_name.setdefault(key, []).append(item)
    found: dict[str, str] = {}
    row_of: dict[str, str] = {}  # output name -> the key that labelled it
    unknown, ambiguous = [], []
    for key, label in table.items():
        if key in by_relative:
            matches = [by_relative[key]]
        else:
            matches = by_name.get(key, [])
            if len(matches) > 1:
                ambiguous.append(f"{key!r} matches {', '.join(i.relative for i in matches)}")
                continue
        if not matches:
            unknown.append(key)
            continue
        item = matches[0]
        if item.name in found and found[item.name] != label:
            raise DataError(explain(f"{labels_path}", f"one label per input, {item.relative}",
                                    f"{found[item.name]!r} (row {row_of[item.name]!r}) and "
                                    f"{label!r} (row {key!r})", "Keep the right row."))
        found[item.name], row_of[item.name] = label, key
    if ambiguous:
        raise DataError(f"{labels_path}: {_count(len(ambiguous), 'row')} naming more than one "
                        "input: "
                        f"{'; '.join(ambiguous[:3])}{' ...' if len(ambiguous) > 3 else ''}. "
                        "Use the path relative to the input folder, e.g. a/scan.nii")
    if unknown:
        unknown.sort()
        raise DataError(f"{labels_path} names {_count(len(unknown), 'file')} not found in the "
                        f"input folder: {', '.join(unknown[:5])}"
                        f"{' ...' if len(unknown) > 5 else ''}")
    names = sorted(set(found.values()))
    if all(n.lstrip("-").isdigit() for n in names):
        names = sorted(names, key=int)
    return {k: str(names.index(v)) for k, v in found.items()}, names


def missing_labels(inputs: list[InputFile], label_of: dict[str, str],
                   labels_path: PathLike = "labels.csv") -> None:
    """Refuse prepared ``inputs`` that have no row in the labels table (only inputs that are
    prepared need a label: skipped ones, unreadable or unsupported, do not).

    Raises:
        DataError: naming up to five inputs without a label.
    """
    missing = [item.relative for item in inputs if item.name not in label_of]
    if missing:
        raise DataError(f"{_count(len(missing), 'prepared input')} without a label in "
                        f"{labels_path}: "
                        f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}. "
                        "Add a row 'file,label' for each of them (the prepared volumes are kept: "
                        "the next run only writes the dataset files)")


# --- one file ------------------------------------------------------------------------------------
# SimpleITK turns NaN into 0 in NIfTI/MGH; the nibabel-only formats have no SimpleITK reader
NIBABEL_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh") + NIBABEL_ONLY
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _from_sitk(image):
    """A SimpleITK image of any scalar or vector pixel type as a float32 ``tio.ScalarImage``.

    Integer types of every width (uint32 RT dose included) and float64 are cast to float32
    first (TorchIO refuses some, e.g. uint32 -> int64); values beyond float32 are refused.
    """
    import SimpleITK as sitk
    import torch
    import torchio as tio

    pixel = image.GetPixelIDTypeAsString()
    if "complex" in pixel.lower():
        raise ValueError(f"complex-valued pixels ({pixel}); store the magnitude instead")
    if image.GetNumberOfComponentsPerPixel() == 1:
        stats = sitk.MinimumMaximumImageFilter()
        stats.Execute(image)
        if max(abs(stats.GetMinimum()), abs(stats.GetMaximum())) > FLOAT32_MAX:
            raise ValueError(f"values from {stats.GetMinimum():g} to {stats.GetMaximum():g} "
                             "do not fit in float32")
        image = sitk.Cast(image, sitk.sitkFloat32)
    else:
        image = sitk.Cast(image, sitk.sitkVectorFloat32)
    data, affine = tio.io.sitk_to_nib(image)
    return tio.ScalarImage(tensor=torch.from_numpy(np.ascontiguousarray(data, np.float32)),
                           affine=affine)


def read_volume(item: InputFile):
    """Load an input as a float32 ``tio.ScalarImage`` with shape (C, W, H, D), channels first.

    NIfTI, MGH and the nibabel-only formats (MINC, PAR/REC, Analyze, AFNI, ECAT) go through
    nibabel (SimpleITK silently turns NaN into 0), DICOM series through SimpleITK's series
    reader in the slice order checked at discovery, everything else through SimpleITK.
    """
    import SimpleITK as sitk
    import torch
    import torchio as tio

    if item.series and len(item.files) > 1:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(f) for f in item.files])
        return _from_sitk(reader.Execute())
    if not item.series and _has_suffix(item.path.name, NIBABEL_SUFFIXES):
        import nibabel as nib

        with warnings.catch_warnings():  # nibabel warns about odd but readable headers
            warnings.simplefilter("ignore")
            if _has_suffix(item.path.name, (".v",)):
                volume = nib.ecat.load(item.path)
            else:
                volume = nib.load(item.path)
            if getattr(volume, "affine", None) is None:
                raise ValueError(f"{type(volume).__name__} holds no voxel grid (surface or "
                                 "connectivity data), not a volume")
            array = np.asarray(volume.get_fdata(dtype=np.float32))
        if array.ndim == 5 and array.shape[3] == 1:  # NIfTI vector images: (x, y, z, 1, c)
            array = array[:, :, :, 0]
        if array.ndim == 2:
            array = array[:, :, None]
        array = array[None] if array.ndim == 3 else np.moveaxis(array, 3, 0)  # (C, W, H, D)
        if array.ndim != 4:
            raise ValueError(f"not 3D: {array.ndim - 1}D image of shape {volume.shape}")
        return tio.ScalarImage(tensor=torch.from_numpy(np.ascontiguousarray(array)),
                               affine=volume.affine)
    return _from_sitk(sitk.ReadImage(str(item.files[0] if item.files else item.path)))


# ITK's messages: "path/itkFile.hxx:214:", "ITK ERROR: Reader(0x55d0...):", "Exception thrown
# in SimpleITK ImageSeriesReader_Execute:" carry no cause; the cause follows them
_READER_NOISE = re.compile(
    r"(\S+\.(?:cxx|hxx|cpp|txx|h):\d+:?)|(ITK ERROR:?)|(itk::ERROR:?)|(\b\w+\(0x[0-9a-fA-F]+\):)"
    r"|(Exception thrown in SimpleITK \w+:)|(sitk::ERROR:)")


def one_line(exc: BaseException, limit: int = 400) -> str:
    """The whole cause of a reader error on one line: lines joined, ITK's source locations and
    object addresses removed, at most ``limit`` characters."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = re.sub(r"\s+", " ", _READER_NOISE.sub(" ", text)).strip(" :")
    if text in ("", "None"):  # e.g. nibabel's PAR reader on a damaged header
        text = f"{type(exc).__name__} (no message) from the reader: the file looks damaged"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_sentence(exc: BaseException) -> str:
    """Kept for callers of earlier versions: the same as :func:`one_line`."""
    return one_line(exc)


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
    if min(data.shape[1:]) < MIN_SIDE:
        return (f"too thin: shape {tuple(int(s) for s in data.shape[1:])}, at least {MIN_SIDE} "
                "voxels per side are needed (anti-aliased resampling)")
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


def resample_bytes(shape: Sequence[int], spacing: Sequence[float], new_spacing: float) -> int:
    """Bytes of float32 voxels after resampling a ``shape`` grid of ``spacing`` mm voxels to
    isotropic ``new_spacing`` mm (the size TorchIO's Resample allocates for its output)."""
    voxels = 1.0
    for n, s in zip(shape, spacing):
        voxels *= max(1.0, np.ceil(n * float(s) / new_spacing))
    return int(voxels * 4)


def prepare_volume(image, params: dict[str, Any], max_resample_gib: float = MAX_RESAMPLE_GIB):
    """The pipeline on a checked image. Returns ``(volume, spacing_mm)`` with ``volume`` a
    (S, S, S) float32 tensor in [-1, 1] in RAS order, or a reason string when it is unusable
    (including a ``spacing`` whose resampled volume would exceed ``max_resample_gib`` GiB)."""
    import torch
    import torchio as tio

    if params["spacing"]:
        need = resample_bytes(image.spatial_shape, image.spacing, params["spacing"])
        if need > max_resample_gib * 2**30:
            return (f"resampling to {params['spacing']:g} mm would need {need / 2**30:.1f} GiB "
                    f"for {'x'.join(str(int(n)) for n in image.spatial_shape)} voxels of "
                    f"{'x'.join(f'{s:g}' for s in image.spacing)} mm, above the limit of "
                    f"{max_resample_gib:g} GiB; choose a larger --spacing (or raise "
                    "--max-resample-gib)")
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


def blank_output(volume) -> str:
    """Why a prepared (S, S, S) volume in [-1, 1] looks empty, or '' when it does not:
    all background (under 0.1 % of voxels above the window bottom) or near-constant (values
    span under 0.05, or standard deviation under 0.01)."""
    foreground = float((volume > BLANK).float().mean())
    low, high = (float(v) for v in (volume.min(), volume.max()))
    std = float(volume.float().std())
    if foreground < 1e-3:
        return (f"blank output: only {100 * foreground:.3f} % of voxels above the window "
                "bottom; check --modality and --window")
    if high - low < 0.05 or std < 0.01:
        return (f"near-constant output: values from {low:.3f} to {high:.3f} (std {std:.4f}); "
                "check --modality and --window")
    return ""


def prepare_one(job: tuple) -> dict[str, Any]:
    """Worker: read, check, prepare and write one input. Never raises for a bad file.

    ``job`` is ``(input, params, output path[, options])``; options: ``max_resample_gib`` and
    ``strict`` (a blank or near-constant output is then skipped rather than only flagged).
    The result's ``reason`` is why the input was skipped, ``flag`` a warning on a written one.
    """
    item, params, out_path = job[:3]
    options = job[3] if len(job) > 3 else {}
    result: dict[str, Any] = {"name": item.name, "input": item.relative, "reason": "",
                              "flag": ""}
    if item.problem:
        result["reason"] = item.problem
        return result
    try:
        image = read_volume(item)
    except ModuleNotFoundError as exc:
        result["reason"] = (f"cannot be read: reading it needs the optional package {exc.name} "
                            f"(pip install {exc.name})")
        return result
    except Exception as exc:  # noqa: BLE001 - any reader error means: cannot be read
        result["reason"] = f"cannot be read: {one_line(exc)}"
        return result
    result["shape"] = "x".join(str(int(n)) for n in image.spatial_shape)
    result["spacing"] = "x".join(f"{s:g}" for s in image.spacing)
    reason = check_volume(image.data)
    if not reason:
        try:
            volume = prepare_volume(image, params,
                                    options.get("max_resample_gib", MAX_RESAMPLE_GIB))
        except (RuntimeError, ValueError, MemoryError) as exc:
            volume = f"failed in the pipeline: {one_line(exc)}"
        if not isinstance(volume, str):
            result["flag"] = blank_output(volume[0])
            if result["flag"] and options.get("strict"):
                volume = f"{result['flag']} (skipped: --strict)"
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
        raise ConfigError(explain("--size", f"a cube side 2^k in [{MIN_SIZE}, {MAX_SIZE}] "
                                  f"({', '.join(map(str, ALLOWED_SIZES))})", str(size),
                                  "Use e.g. --size 128."))
    if modality not in ("ct", "mri"):
        raise ConfigError(explain("--modality", "ct or mri", repr(modality)))
    if window is None and modality == "ct":
        window = CT_WINDOW
    if window is not None:
        if len(window) != 2 or not float(window[0]) < float(window[1]):
            raise ConfigError(explain("--window", "LOW HIGH with LOW < HIGH", str(list(window)),
                                      f"Use e.g. --window {CT_WINDOW[0]} {CT_WINDOW[1]}."))
        window = [float(window[0]), float(window[1])]
    p = [float(v) for v in percentiles]
    if len(p) != 2 or not 0.0 <= p[0] < p[1] <= 100.0:
        raise ConfigError(explain("--percentiles", "P1 P2 with 0 <= P1 < P2 <= 100", str(p)))
    if spacing is not None and not float(spacing) > 0:
        raise ConfigError(explain("--spacing", "a positive voxel size in mm", str(spacing)))
    return {"version": PIPELINE_VERSION, "size": int(size), "modality": modality,
            "window": window, "percentiles": None if window else p,
            "spacing": float(spacing) if spacing else None, "trim": bool(trim)}


def _check_folders(input_dir: PathLike, out_dir: PathLike, force: bool) -> tuple[Path, Path]:
    source, out = Path(input_dir).resolve(), Path(out_dir).resolve()
    if not source.exists():
        raise DataError(explain("input folder", "an existing folder of images",
                                f"{input_dir} (does not exist)", "Check the path."))
    if not source.is_dir():
        raise DataError(explain("input", "a folder of images", f"{input_dir} (not a folder)",
                                "Put the files in a folder and pass that folder."))
    if out == source or source in out.parents:
        raise RunError(explain("--out", "a folder outside the input folder",
                               f"{out_dir} (inside {input_dir})",
                               "Choose an output folder outside it; the input is never written."))
    if source == out / "volumes" or (out / "volumes") in source.parents:
        raise RunError(explain("input folder", f"a folder outside {out_dir}/volumes",
                               f"{input_dir} (where the output goes)",
                               "Move it or choose another --out folder."))
    if out.exists() and not out.is_dir():
        raise RunError(explain("--out", "a folder", f"{out_dir} (a file)",
                               "Choose another --out."))
    state_temp = f".{STATE_FILE}."  # a state file half-written when a first run was killed
    if (out.is_dir() and any(not is_lock_file(p) and not p.name.startswith(state_temp)
                             for p in out.iterdir())
            and not (out / STATE_FILE).is_file() and not force):
        raise RunError(explain("--out", "an empty folder or one made by `hagan preprocess`",
                               f"{out_dir} (not empty and was not made by `hagan preprocess`)",
                               "Choose an empty or new folder, or pass --force."))
    return source, out


def _fingerprint(item: InputFile) -> list:
    """Names, sizes and modification times of the files behind an input (data files included)."""
    paths = sorted(set(item.files or [item.path]) | set(item.sidecars))
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in paths if p.is_file()]


def _file_key(item: InputFile, params: dict[str, Any]) -> str:
    blob = json.dumps([params, item.relative, item.series, _fingerprint(item)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


SAFE_NAME = re.compile(r"[^/\\\x00]+")


def volume_path(out: Path, name: str) -> Path:
    """``out/volumes/<name>.npy`` for an output name from the state file, refused (RunError)
    unless it lies directly in ``out/volumes``: no ``/``, ``..`` or absolute paths, no link
    out of the folder. Nothing this tool deletes can lie outside its output folder."""
    base = (out / "volumes").resolve()
    if (not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or name in (".", "..")
            or (base / f"{name}.npy").resolve().parent != base):
        raise RunError(explain(f"{out / STATE_FILE}", "output names of files in volumes/",
                               f"{str(name)[:80]!r}",
                               "The file was altered: delete it (the next run redoes every "
                               "file) or choose a new output folder."))
    return base / f"{name}.npy"


def read_state(out: Path) -> tuple[dict[str, Any], str | None]:
    """The validated ``preprocess-state.json`` of ``out``: ``(files, source folder)``.

    ``files`` maps output name -> entry (``key``, ``input``, shape, spacings); every name
    resolves inside ``out/volumes`` (see :func:`volume_path`). A missing file gives ``({},
    None)``.

    Raises:
        RunError: the file is unreadable, not of the expected layout, or names a path outside
            the output folder.
    """
    path = out / STATE_FILE
    if not path.is_file():
        return {}, None
    fix = "Delete it (the next run redoes every file) or choose a new output folder."
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(explain(str(path), "the JSON state of `hagan preprocess`",
                               f"an unreadable file ({one_line(exc, 120)})", fix)) from None
    files = state.get("files") if isinstance(state, dict) else None
    source = state.get("source") if isinstance(state, dict) else None
    if not isinstance(files, dict) or not (source is None or isinstance(source, str)):
        raise RunError(explain(str(path), "an object with 'files' (name -> entry)",
                               f"{type(files).__name__ if isinstance(state, dict) else 'a '}"
                               f"{'' if isinstance(state, dict) else type(state).__name__}",
                               fix))
    for name, entry in files.items():
        volume_path(out, name)
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise RunError(explain(str(path), "an entry with a 'key' per file",
                                   f"{name!r}: {str(entry)[:60]}", fix))
    return files, source


def _move_aside(out: Path) -> Path:
    """Move the dataset in ``out`` (volumes/, CSV and JSON files) into ``out/previous-<time>/``
    and return that folder: nothing is deleted."""
    aside = out / time.strftime("previous-%Y%m%dT%H%M%S", time.gmtime())
    k = 2
    while aside.exists():
        aside, k = aside.with_name(f"{aside.name.split('_')[0]}_{k}"), k + 1
    aside.mkdir()
    for name in ("volumes", "manifest.csv", "dataset.json", REPORT_FILE, INPUTS_FILE,
                 STATE_FILE):
        if (out / name).exists():
            os.replace(out / name, aside / name)
    return aside


def single_thread() -> None:
    """Pool initializer: one thread per worker process, the pool gives the parallelism.
    Workers leave Ctrl-C to the main process and die on SIGTERM."""
    import SimpleITK as sitk
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's worker processes now (Python < 3.14 has no public way: the
    executor's process table is used), then shut the pool down without waiting for the files
    in progress."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        if process.is_alive():
            process.terminate()
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.join(timeout=5)
    pool.shutdown(wait=True, cancel_futures=True)


class Interrupted(KeyboardInterrupt):
    """SIGTERM during ``preprocess``: raised in the main thread so that progress is saved and
    the worker processes are stopped (the CLI exits like on Ctrl-C)."""


@contextlib.contextmanager
def _sigterm_raises():
    """While active (main thread only), SIGTERM raises :class:`Interrupted`."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(f"stopped by signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_jobs(jobs: list, workers: int, progress: bool):
    """Yield worker results as files finish, in a process pool when ``workers > 1``."""
    from tqdm import tqdm  # the text bar: a notebook widget bar is saved at 0 % by papermill

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
                    _stop_workers(pool)
                    raise
    finally:
        bar.close()


def preprocess(input_dir: PathLike, out_dir: PathLike, size: int, modality: str = "ct",
               window: Sequence[float] | None = None,
               percentiles: Sequence[float] = MRI_PERCENTILES, spacing: float | None = None,
               trim: bool = True, labels: PathLike | None = None, workers: int = 1,
               strict: bool = False, progress: bool = True, *,
               force: bool = False, replace: bool = False,
               max_resample_gib: float = MAX_RESAMPLE_GIB) -> PreprocessReport:
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
        percentiles: MRI cut-offs mapped to -1 and 1 (default (0.5, 99.5), the
            percentiles nnU-Net clips CT at; nnU-Net itself z-scores MRI).
        spacing: Resample to this isotropic voxel size in mm first (None keeps the voxels).
        trim: Drop blank axial slices (entirely at the bottom of the window) at both ends.
        labels: CSV mapping inputs to labels (strings allowed): by relative path, or by a file
            name or subject id that names exactly one input. Every prepared input needs one.
        workers: Processes working on files in parallel.
        strict: Raise when any input had to be skipped; blank or near-constant outputs (only
            flagged in ``report.csv`` otherwise) are then skipped too.
        progress: Show a tqdm progress bar.
        force: Write into a non-empty folder that was not made by ``preprocess``.
        replace: ``out_dir`` holds a dataset prepared from another input folder or with other
            parameters or labels: move it aside into ``out_dir/previous-<time>/`` (nothing is
            deleted) and prepare the new one. Without it such a run is refused.
        max_resample_gib: ``spacing`` refuses (in ``report.csv``) a file whose resampled float32
            volume would exceed this many GiB (default 2).

    Returns:
        A :class:`PreprocessReport` (its ``warnings`` also go to the log).

    Raises:
        ValueError: bad parameters, or ``out_dir`` inside ``input_dir``.
        FileNotFoundError, NotADirectoryError, FileExistsError: unusable folders.
        DataError: no inputs, label problems, nothing usable produced, or a skip with ``strict``.
        RunError: ``out_dir`` holds a dataset from another input folder or made with other
            parameters or labels (without ``replace``); the message names what changed.
    """
    start = time.perf_counter()
    params = parameters(size, modality, window, percentiles, spacing, trim)
    if workers < 1:
        raise ConfigError(explain("--workers", "a value >= 1", str(workers)))
    source, out = _check_folders(input_dir, out_dir, force)
    found = discover(source)
    inputs = found.inputs
    if not inputs:
        raise DataError(explain(f"input folder {input_dir}", "image files or DICOM series",
                                "no image files found "
                                f"({_count(len(found.ignored), 'other file')})",
                                f"Looked for {', '.join(FILE_SUFFIXES + NIBABEL_ONLY)} files "
                                "and DICOM files, recursively."))
    label_of: dict[str, str] = {}
    label_names: list[str] = []
    if labels is not None:
        label_of, label_names = match_labels(inputs, read_labels(labels), labels)
    label_record = ({name: label_names[int(i)] for name, i in label_of.items()}
                    if labels is not None else None)
    state, old_source = read_state(out)  # name -> entry; updated as files finish
    if old_source is None and (out / "dataset.json").is_file():
        try:
            old_source = json.loads((out / "dataset.json").read_text(encoding="utf-8"))["source"]
        except (OSError, ValueError, KeyError, TypeError):
            old_source = None
    moved = None
    if (state or (out / "volumes").is_dir()) and old_source and old_source != str(source):
        if not replace:
            raise RunError(explain(f"--out {out_dir}", f"a dataset prepared from {source}",
                                   f"one prepared from {old_source}",
                                   "Choose another output folder, or pass --replace to move "
                                   "the old dataset aside (into OUT/previous-<time>/)."))
        moved = _move_aside(out)
        logger.warning("preprocess: the dataset from %s was moved to %s", old_source, moved)
        state = {}
    has_data = bool(state) or any((out / "volumes").glob("*.npy"))
    changed = _changes(out, params, label_record) if has_data else []
    if changed and not replace:
        raise RunError(explain(f"--out {out_dir}", "a dataset prepared with the same parameters",
                               f"one prepared with other ones: {'; '.join(changed)}",
                               "Choose another output folder, or pass --replace to move the "
                               "old dataset aside (into OUT/previous-<time>/)."))
    if changed:
        moved = _move_aside(out)
        logger.warning("preprocess: the dataset prepared with other parameters (%s) was moved "
                       "to %s", "; ".join(changed), moved)
        state = {}
    report = PreprocessReport(out, moved_aside=moved)
    # the state file first: an interrupted run leaves a folder that the next run recognises
    _save_state(out, state, params, source, label_record)
    volumes = out / "volumes"
    volumes.mkdir(parents=True, exist_ok=True)
    for temp in volumes.glob(".*.tmp"):  # half-written files of an interrupted run
        temp.unlink(missing_ok=True)
    options = {"max_resample_gib": float(max_resample_gib), "strict": bool(strict)}
    jobs, keys = [], {}
    for item in inputs:
        keys[item.name] = _file_key(item, params) if not item.problem else ""
        entry, path = state.get(item.name), volume_path(out, item.name)
        flag = entry.get("flag", "") if entry else ""
        if (entry and not item.problem and entry.get("key") == keys[item.name] and path.is_file()
                and not (strict and flag)):
            report.up_to_date.append(item.relative)
            if flag:
                report.flagged.append((item.relative, flag))
        else:
            state.pop(item.name, None)
            jobs.append((item, params, str(path), options))
    for name in set(state) - {item.name for item in inputs if not item.problem}:
        volume_path(out, name).unlink(missing_ok=True)  # inputs that are gone: our outputs
        del state[name]
    last_save = time.monotonic()
    try:
        with _sigterm_raises():
            for result in _run_jobs(jobs, workers, progress):
                name = result["name"]
                if result["reason"]:
                    report.failed.append((result["input"], result["reason"]))
                    logger.warning("skipped %s: %s", result["input"], result["reason"])
                    volume_path(out, name).unlink(missing_ok=True)  # no stale result
                    continue
                report.written.append(result["input"])
                if result["flag"]:
                    report.flagged.append((result["input"], result["flag"]))
                    logger.warning("flagged %s: %s", result["input"], result["flag"])
                state[name] = {"input": result["input"], "key": keys[name],
                               "shape": result["shape"], "spacing": result["spacing"],
                               "out_spacing": result["out_spacing"], "flag": result["flag"]}
                if time.monotonic() - last_save > STATE_SAVE_SECONDS:
                    _save_state(out, state, params, source, label_record)
                    last_save = time.monotonic()
    finally:  # also on Ctrl-C or SIGTERM: the files done so far are not redone next time
        _save_state(out, state, params, source, label_record)
    report.seconds = time.perf_counter() - start
    if labels is not None:
        missing_labels([item for item in inputs if item.name in state], label_of, labels)
    _write_outputs(out, found, state, report, params, label_of, label_names, source)
    for note in report.warnings:
        logger.warning("preprocess: %s", note)
    if report.usable == 0:
        first = report.failed[0] if report.failed else ("?", "?")
        raise DataError(f"nothing usable was produced: {_count(len(inputs), 'input')}, all "
                        "skipped, "
                        f"e.g. {first[0]}: {first[1]} (all reasons in {out / REPORT_FILE})")
    if strict and report.failed:
        raise DataError(f"{len(report.failed)} of {_count(len(inputs), 'input')} skipped and "
                        f"strict mode is on; reasons in {out / REPORT_FILE}")
    return report


def _save_state(out: Path, files: dict[str, Any], params: dict[str, Any], source: Path,
                labels: dict[str, str] | None = None) -> None:
    atomic_write_text(out / STATE_FILE, json.dumps(
        {"params": params, "source": str(source), "files": files, "labels": labels},
        indent=1, sort_keys=True) + "\n")


PARAM_NAMES = {"version": "pipeline version", "size": "size", "modality": "modality",
               "window": "window", "percentiles": "percentiles", "spacing": "spacing",
               "trim": "trim"}


def _changes(out: Path, params: dict[str, Any], labels: dict[str, str] | None) -> list[str]:
    """What differs between the dataset in ``out`` and a run with ``params`` and ``labels``
    (output name -> label, None without --labels): ``["size 32 -> 64", ...]``, empty when
    nothing does or nothing is recorded. Read from the state file, else from dataset.json."""
    old: dict[str, Any] = {}
    old_labels: Any = "unknown"
    with contextlib.suppress(OSError, ValueError):
        state = json.loads((out / STATE_FILE).read_text(encoding="utf-8"))
        if isinstance(state, dict) and isinstance(state.get("params"), dict):
            old = state["params"]
            old_labels = state.get("labels", "unknown")
    if not old:
        with contextlib.suppress(OSError, ValueError):
            info = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
            if isinstance(info, dict):
                old = {k: info[k] for k in PARAM_NAMES if k in info}
                if "pipeline_version" in info:
                    old["version"] = info["pipeline_version"]
    changed = [f"{name} {old[key]} -> {params[key]}" for key, name in PARAM_NAMES.items()
               if key in old and old[key] != params[key]]
    if old_labels != "unknown" and (old_labels is None) != (labels is None):
        changed.append("labels: none before" if old_labels is None else "labels: none now")
    elif isinstance(old_labels, dict) and labels is not None:
        moved = sorted(n for n in set(old_labels) & set(labels) if old_labels[n] != labels[n])
        if moved:
            changed.append(f"labels of {_count(len(moved), 'input')} ({', '.join(moved[:3])}"
                           f"{' ...' if len(moved) > 3 else ''})")
    return changed


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _write_outputs(out: Path, found: Discovery, state: dict[str, Any],
                   report: PreprocessReport, params: dict[str, Any], label_of: dict[str, str],
                   label_names: list[str], source: Path) -> None:
    """report.csv (input, outcome, reason: skipped, flagged and dropped inputs), inputs.csv
    (every file found: file, input, outcome, reason), manifest.csv and dataset.json."""
    inputs = found.inputs
    dropped = [(rel, why) for item in inputs for rel, why in item.dropped]
    atomic_write_text(out / REPORT_FILE, _csv_text(
        ["input", "reason", "outcome"],
        sorted([(i, r, "skipped") for i, r in report.failed]
               + [(i, r, "prepared, flagged") for i, r in report.flagged]
               + [(i, r, "dropped") for i, r in dropped])))
    failed, flagged = dict(report.failed), dict(report.flagged)
    rows = []
    for item in inputs:
        outcome = ("skipped" if item.relative in failed else
                   "prepared" if item.name in state else "skipped")
        reason = failed.get(item.relative, flagged.get(item.relative, ""))
        for path in item.files or [item.path]:
            rows.append((path.relative_to(source).as_posix(), item.relative, outcome, reason))
        for path in item.sidecars:
            rows.append((path.relative_to(source).as_posix(), item.relative, "data file", ""))
        for rel, why in item.dropped:
            rows.append((rel, item.relative, "dropped", why))
    taken = {row[0] for row in rows}
    rows += [(rel, "", "ignored", why) for rel, why in found.ignored if rel not in taken]
    atomic_write_text(out / INPUTS_FILE, _csv_text(["file", "input", "outcome", "reason"],
                                                   sorted(rows)))
    done = [item for item in sorted(inputs, key=lambda i: i.name) if item.name in state]
    write_manifest(out, [Record(file=f"{item.name}.npy", label=label_of.get(item.name, ""),
                                source=item.relative, original_shape=state[item.name]["shape"],
                                original_spacing=state[item.name]["spacing"]) for item in done])
    spacings = [state[item.name]["out_spacing"] for item in done] or [0.0]
    low, high, median = float(min(spacings)), float(max(spacings)), float(np.median(spacings))
    mixed = low > 0 and high / low > SPACING_MIXED_RATIO
    if mixed:
        report.warnings.append(
            f"the prepared volumes have voxel sizes from {low:.3g} to {high:.3g} mm (inputs "
            f"with other voxel sizes or fields of view); dataset.json records the median "
            f"{median:.3g} mm, which generated NIfTIs will carry. To resample every input to "
            "one isotropic voxel size first, re-run with --spacing MM (and --replace)")
    write_info(out, {
        **{k: v for k, v in params.items() if k != "version"},
        "size": params["size"], "source": str(source), "n": len(done),
        "spacing_mm": [median] * 3, "spacing_mm_range": [low, high], "spacing_mixed": mixed,
        "label_names": label_names, "dtype": "float16",
        "axes": ["inferior->superior", "posterior->anterior", "left->right"],
        "pipeline_version": params["version"], "created_by": "hagan.preprocess",
    })


# --- CLI: hagan preprocess IN --out OUT ----------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="folder with NIfTI/NRRD/MHA/MHD/MGZ/MINC/PAR/AFNI/ECAT files "
                                      "or DICOM series (searched recursively, never written to)")
    parser.add_argument("--out", required=True,
                        help="output folder for the prepared dataset (outside INPUT)")
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
    parser.add_argument("--labels", metavar="CSV",
                        help="CSV 'file,label' for conditional models (file: path relative to "
                             "INPUT, or a name or subject id naming one input)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument("--strict", action="store_true",
                        help="fail (exit non-zero) when any input is skipped; also skip "
                             "blank or near-constant outputs (otherwise only flagged)")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty folder not made by hagan preprocess")
    parser.add_argument("--replace", action="store_true",
                        help="OUT holds a dataset from another input folder or with other "
                             "parameters or labels: move it aside into OUT/previous-<time>/ "
                             "and prepare this one")
    parser.add_argument("--max-resample-gib", type=float, default=MAX_RESAMPLE_GIB,
                        metavar="GIB", help="--spacing refuses files whose resampled volume "
                                            f"would exceed this (default {MAX_RESAMPLE_GIB:g})")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def main(args: argparse.Namespace) -> int:
    from .fileio import lock_folder

    _check_folders(args.input, args.out, args.force)  # before the lock creates --out
    with lock_folder(args.out, "hagan preprocess"):  # a second process into --out is refused
        report = preprocess(args.input, args.out, size=args.size, modality=args.modality,
                            window=args.window, percentiles=args.percentiles,
                            spacing=args.spacing, trim=not args.no_trim, labels=args.labels,
                            workers=args.workers, strict=args.strict,
                            progress=not args.no_progress, force=args.force,
                            replace=args.replace, max_resample_gib=args.max_resample_gib)
    print(f"hagan preprocess: {report.summary()}")  # once: preprocess() does not log it
    return 0
