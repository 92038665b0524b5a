"""Data integrity: DICOM series geometry, pixel types, every input accounted for,
whole one-line reasons, blank outputs, bounded resampling, a state file that cannot reach outside
the output folder, interrupted runs, labels tables and dataset validation at training time."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
import SimpleITK as sitk
from helpers import REPO

from hagan.data import PreparedDataset, validate_dataset
from hagan.errors import DataError, RunError
from hagan.phantom import ct_phantom, write_dicom_series, write_volume
from hagan.preprocess import (
    INPUTS_FILE,
    STATE_FILE,
    one_line,
    preprocess,
    read_labels,
    resample_bytes,
)

SIZE = 32
SHAPE, SPACING = (16, 40, 48), (3.0, 1.5, 1.5)  # z, y, x


@pytest.fixture(scope="module")
def phantom():
    return ct_phantom(SHAPE, SPACING)


def run(src: Path, out: Path, **kwargs):
    return preprocess(src, out, **{"size": SIZE, "modality": "ct", "progress": False, **kwargs})


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def report_rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "report.csv", newline="", encoding="utf-8") as fh:
        return {row["input"]: row for row in csv.DictReader(fh)}


def inputs_rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / INPUTS_FILE, newline="", encoding="utf-8") as fh:
        return {row["file"]: row for row in csv.DictReader(fh)}


def slice_z(path: Path) -> float:
    return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])


# --- 1. DICOM series geometry ---------------------------------------------------------------------
def test_series_with_missing_slices_is_refused(tmp_path, phantom):
    series = write_dicom_series(tmp_path / "in" / "ct", *phantom)
    for k in (6, 7, 8):
        (series / f"slice_{k:04d}.dcm").unlink()
    write_volume(tmp_path / "in" / "ok.nii.gz", *phantom)
    report = run(tmp_path / "in", tmp_path / "out")
    assert report.written == ["ok.nii.gz"]
    reason = report_rows(tmp_path / "out")["ct"]["reason"]
    assert "missing slices" in reason and "12.00 mm" in reason and "3.00 mm" in reason, reason


def test_series_with_a_slice_200_mm_away_is_refused(tmp_path, phantom):
    z = [SPACING[0] * k for k in range(SHAPE[0])]
    z[-1] += 200.0
    write_dicom_series(tmp_path / "in" / "ct", *phantom, positions=z)
    write_volume(tmp_path / "in" / "ok.nii.gz", *phantom)
    run(tmp_path / "in", tmp_path / "out")
    assert "missing slices" in report_rows(tmp_path / "out")["ct"]["reason"]


def test_series_with_uneven_steps_is_refused(tmp_path, phantom):
    z = [SPACING[0] * k for k in range(SHAPE[0])]
    for k in range(8, SHAPE[0]):
        z[k] += 1.0  # one step of 4 mm among steps of 3 mm: not a missing slice, not uniform
    write_dicom_series(tmp_path / "in" / "ct", *phantom, positions=z)
    write_volume(tmp_path / "in" / "ok.nii.gz", *phantom)
    run(tmp_path / "in", tmp_path / "out")
    assert "non-uniform slice spacing" in report_rows(tmp_path / "out")["ct"]["reason"]


def test_exact_duplicate_slice_is_dropped_and_the_series_prepared(tmp_path, phantom):
    src = tmp_path / "in"
    series = write_dicom_series(src / "ct", *phantom)
    shutil.copyfile(series / "slice_0005.dcm", series / "copy_of_5.dcm")
    write_dicom_series(tmp_path / "clean", *phantom)
    report = run(src, tmp_path / "out")
    assert report.written == ["ct"] and not report.failed
    rows = report_rows(tmp_path / "out")
    dropped = {name: row for name, row in rows.items() if row["outcome"] == "dropped"}
    assert list(dropped) == ["ct/slice_0005.dcm"]  # the copy sorts first and is kept
    assert "exact duplicate of copy_of_5.dcm" in dropped["ct/slice_0005.dcm"]["reason"]
    assert inputs_rows(tmp_path / "out")["ct/slice_0005.dcm"]["outcome"] == "dropped"
    run(tmp_path / "clean", tmp_path / "clean_out")
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "volumes" / "ct.npy"),
                                  np.load(tmp_path / "clean_out" / "volumes" / "clean.npy"))


def test_two_different_slices_at_one_position_are_refused(tmp_path, phantom):
    src = tmp_path / "in"
    series = write_dicom_series(src / "ct", *phantom)
    ds = pydicom.dcmread(series / "slice_0005.dcm")
    pixels = ds.pixel_array.copy()
    pixels[:4] = 500
    ds.PixelData = pixels.tobytes()
    ds.save_as(series / "other_5.dcm")
    write_volume(src / "ok.nii.gz", *phantom)
    run(src, tmp_path / "out")
    reason = report_rows(tmp_path / "out")["ct"]["reason"]
    assert "two different slices at one position" in reason and "other_5.dcm" in reason


def test_mixed_orientations_are_refused(tmp_path, phantom):
    src = tmp_path / "in"
    series = write_dicom_series(src / "ct", *phantom)
    for k in (3, 9):  # two slices of a rotating acquisition
        ds = pydicom.dcmread(series / f"slice_{k:04d}.dcm")
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.save_as(series / f"slice_{k:04d}.dcm")
    write_volume(src / "ok.nii.gz", *phantom)
    run(src, tmp_path / "out")
    assert "mixed slice orientations" in report_rows(tmp_path / "out")["ct"]["reason"]


def test_several_series_in_one_folder_are_separate_inputs(tmp_path, phantom):
    src = tmp_path / "in"
    write_dicom_series(src / "study", *phantom, series=1)
    write_dicom_series(src / "study", *phantom, series=2)
    report = run(src, tmp_path / "out")
    assert sorted(report.written) == ["study/series1", "study/series2"] and not report.failed
    a, b = (np.load(tmp_path / "out" / "volumes" / f"study__series{k}.npy") for k in (1, 2))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (SIZE,) * 3


# --- 2. pixel types ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint32, np.uint16, np.int32, np.float64, np.uint8])
def test_every_pixel_type_is_prepared(tmp_path, phantom, dtype):
    """uint32 (RT dose) used to fail with "Image data has type int64": every type whose values
    fit is cast to float32 and gives the same volume as the float32 copy of the same values."""
    volume, spacing = phantom
    src = tmp_path / "in"
    src.mkdir()
    shift = 1024.0 if np.dtype(dtype).kind == "u" else 0.0
    scale = 0.1 if dtype == np.uint8 else 1.0  # uint8 holds (HU + 1024) / 10
    stored = np.round((np.clip(volume, -1024, 1500) + shift) * scale).astype(dtype)
    image = sitk.GetImageFromArray(stored)
    image.SetSpacing(spacing[::-1])
    image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(src / "dose.nrrd"))
    write_volume(src / "ref.nii.gz", stored.astype(np.float32), spacing)
    window = ((-1024.0 + shift) * scale, (600.0 + shift) * scale)
    report = run(src, tmp_path / "out", window=window, trim=False)
    assert sorted(report.written) == ["dose.nrrd", "ref.nii.gz"], report.failed
    out = tmp_path / "out" / "volumes"
    np.testing.assert_allclose(np.load(out / "dose.npy").astype(np.float32),
                               np.load(out / "ref.npy").astype(np.float32), atol=2e-3)


def test_uint32_rt_dose_dicom_is_prepared(tmp_path):
    """pydicom's RT dose (10x10x15 uint32, multi-frame) was refused with "Image data has type
    int64"; it gives the same volume as a float32 NIfTI copy of its voxels."""
    dose = Path(pydicom.data.__file__).parent / "test_files" / "rtdose.dcm"
    if not dose.is_file():
        pytest.skip("pydicom without its test files")
    src = tmp_path / "in"
    src.mkdir()
    shutil.copyfile(dose, src / "rtdose.dcm")
    image = sitk.ReadImage(str(dose))
    assert image.GetPixelID() == sitk.sitkUInt32 and image.GetSize() == (10, 10, 15)
    sitk.WriteImage(sitk.Cast(image, sitk.sitkFloat32), str(src / "copy.nii.gz"))
    report = run(src, tmp_path / "out", modality="mri", trim=False)
    assert sorted(report.written) == ["copy.nii.gz", "rtdose.dcm"], report.failed
    out = tmp_path / "out" / "volumes"
    np.testing.assert_allclose(np.load(out / "rtdose.npy").astype(np.float32),
                               np.load(out / "copy.npy").astype(np.float32), atol=2e-3)


# --- 3. every input accounted for ----------------------------------------------------------------
def test_every_file_is_prepared_reported_or_listed(tmp_path, phantom):
    src = tmp_path / "in"
    write_volume(src / "ok.nii.gz", *phantom)
    write_volume(src / "pair.mhd", *phantom)  # pair.mhd + pair.raw (a data file)
    series = write_dicom_series(tmp_path / "series", *phantom)
    blob = (series / "slice_0003.dcm").read_bytes()
    (src / "a").mkdir()
    (src / "a" / "truncated.dcm").write_bytes(blob[: len(blob) // 3])
    (src / "b").mkdir()  # DICOM without a suffix, cut short
    (src / "b" / "IM0001").write_bytes((series / "slice_0007.dcm").read_bytes()[:-2000])
    (src / "scan.mnc").write_bytes(b"not really MINC" * 10)
    (src / "brain+orig.HEAD").write_text("garbage\n")
    (src / "old.hdr").write_bytes(bytes(348))  # Analyze header without its .img
    (src / "pet.v").write_bytes(b"\x00" * 600)
    (src / "run1.PAR").write_text("# not a PAR file\n")
    (src / "random.bin").write_bytes(os.urandom(300))
    (src / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    (src / "notes.txt").write_text("where the scans came from\n")
    before = hashes(src)
    report = run(src, tmp_path / "out")
    assert sorted(report.written) == ["ok.nii.gz", "pair.mhd"]
    rows = report_rows(tmp_path / "out")
    expected = {"a/truncated.dcm", "b/IM0001", "scan.mnc", "brain+orig.HEAD", "old.hdr", "pet.v",
                "run1.PAR", "random.bin", "photo.png"}
    assert set(rows) == expected
    for name in expected:
        assert rows[name]["outcome"] == "skipped" and rows[name]["reason"], name
        assert "\n" not in rows[name]["reason"]
    assert "unsupported format (.bin)" in rows["random.bin"]["reason"]
    listed = inputs_rows(tmp_path / "out")
    assert set(listed) == set(before)  # every file of the input folder, nothing else
    assert (listed["pair.raw"]["outcome"], listed["pair.raw"]["input"]) == ("data file",
                                                                            "pair.mhd")
    assert listed["notes.txt"]["outcome"] == "ignored"
    assert hashes(src) == before


# --- 4. whole one-line reasons -------------------------------------------------------------------
def test_reader_errors_keep_the_cause_on_one_line():
    itk = RuntimeError(
        "Exception thrown in SimpleITK ImageSeriesReader_Execute: /work/ITK/Modules/IO/"
        "ImageBase/include/itkImageSeriesReader.hxx:214:\nITK ERROR: ImageSeriesReader"
        "(0x55d0c0ffee00): Size mismatch! The size of\n  slice_0003.dcm is [48, 40, 1] and does"
        " not match the required size [48, 40, 1] from file slice_0000.dcm\n")
    text = one_line(itk)
    assert "\n" not in text and "hxx" not in text and "0x55d0" not in text
    assert text.startswith("Size mismatch! The size of slice_0003.dcm")
    assert "does not match the required size [48, 40, 1] from file slice_0000.dcm" in text


def test_a_truncated_volume_is_reported_with_its_cause(tmp_path, phantom):
    src = tmp_path / "in"
    write_volume(src / "ok.nii.gz", *phantom)
    write_volume(src / "cut.mhd", *phantom)
    raw = src / "cut.raw"
    raw.write_bytes(raw.read_bytes()[:1000])
    run(src, tmp_path / "out")
    reason = report_rows(tmp_path / "out")["cut.mhd"]["reason"]
    assert reason.startswith("cannot be read:") and "\n" not in reason
    assert ".cxx:" not in reason and ".hxx:" not in reason
    assert len(reason) > 40, reason  # the cause, not only the first line's location


# --- 5. blank outputs ----------------------------------------------------------------------------
def test_blank_and_near_constant_outputs_are_flagged_or_skipped(tmp_path, phantom):
    src = tmp_path / "in"
    write_volume(src / "ok.nii.gz", *phantom)
    dark = np.full(SHAPE, -1024.0, np.float32)
    dark[8, 20, 24] = 400.0  # one bright voxel: all background after windowing
    write_volume(src / "dark.nii.gz", dark, SPACING)
    rng = np.random.default_rng(0)
    flat = (-1000 + rng.normal(0, 1, SHAPE)).astype(np.float32)  # air only: near-constant
    write_volume(src / "flat.nii.gz", flat, SPACING)
    report = run(src, tmp_path / "out", trim=False)
    assert sorted(report.written) == ["dark.nii.gz", "flat.nii.gz", "ok.nii.gz"]
    rows = report_rows(tmp_path / "out")
    assert set(rows) == {"dark.nii.gz", "flat.nii.gz"}
    assert rows["dark.nii.gz"]["outcome"] == "prepared, flagged"
    assert "blank output" in rows["dark.nii.gz"]["reason"]
    assert "near-constant output" in rows["flat.nii.gz"]["reason"]
    assert "2 flagged" in report.summary()
    again = run(src, tmp_path / "out", trim=False)  # up to date: still flagged
    assert len(again.flagged) == 2 and not again.written
    with pytest.raises(DataError, match="strict"):
        run(src, tmp_path / "out", trim=False, strict=True)
    rows = report_rows(tmp_path / "out")
    assert rows["dark.nii.gz"]["outcome"] == "skipped" and "--strict" in rows["dark.nii.gz"][
        "reason"]
    assert not (tmp_path / "out" / "volumes" / "dark.npy").exists()


# --- 6. bounded resampling -----------------------------------------------------------------------
def test_resampling_beyond_the_limit_is_refused_up_front(tmp_path, phantom):
    src = tmp_path / "in"
    write_volume(src / "head.nii.gz", *phantom)
    need = resample_bytes((48, 40, 16), (1.5, 1.5, 3.0), 0.05)
    assert need == 1440 * 1200 * 960 * 4  # about 6.2 GiB
    with pytest.raises(DataError, match="nothing usable"):
        run(src, tmp_path / "out", spacing=0.05)  # default limit 2 GiB: nothing allocated
    reason = report_rows(tmp_path / "out")["head.nii.gz"]["reason"]
    assert "would need 6.2 GiB" in reason and "limit of 2 GiB" in reason
    with pytest.raises(DataError):
        run(src, tmp_path / "out", spacing=0.5, max_resample_gib=0.005)  # needs 6.3 MiB
    report = run(src, tmp_path / "out", spacing=1.5, max_resample_gib=0.01)
    assert report.written == ["head.nii.gz"]


# --- 7. the state file and another input folder --------------------------------------------------
@pytest.mark.parametrize("name", ["../../../victim", "/ABS/victim", "..",
                                  "sub/../../../../victim"])
def test_a_crafted_state_file_cannot_delete_outside(tmp_path, phantom, name):
    src = tmp_path / "in"
    write_volume(src / "a.nii.gz", *phantom)
    out = tmp_path / "deep" / "out"
    run(src, out)
    victim = tmp_path / "victim.npy"  # what out/volumes/<name>.npy points at
    victim.write_bytes(b"precious")
    state = json.loads((out / STATE_FILE).read_text())
    state["files"][name.replace("/ABS", str(tmp_path))] = {"key": "x", "input": "gone.nii"}
    (out / STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(RunError, match="preprocess-state.json"):
        run(src, out)
    assert victim.read_bytes() == b"precious"


@pytest.mark.parametrize("content", ["[1, 2]", "{\"files\": [\"a\"]}", "not json",
                                     "{\"files\": {\"a\": 3}}"])
def test_a_damaged_state_file_is_refused(tmp_path, phantom, content):
    src = tmp_path / "in"
    write_volume(src / "a.nii.gz", *phantom)
    run(src, tmp_path / "out")
    (tmp_path / "out" / STATE_FILE).write_text(content)
    with pytest.raises(RunError, match="Delete it"):
        run(src, tmp_path / "out")


def test_another_input_folder_needs_replace_and_moves_the_old_dataset_aside(tmp_path, phantom):
    first, second = tmp_path / "first", tmp_path / "second"
    write_volume(first / "a.nii.gz", *phantom)
    write_volume(first / "b.nii.gz", *phantom)
    write_volume(second / "c.nii.gz", *phantom)
    out = tmp_path / "out"
    run(first, out)
    old = hashes(out / "volumes")
    with pytest.raises(RunError, match="--replace"):
        run(second, out)
    assert hashes(out / "volumes") == old
    report = run(second, out, replace=True)
    assert report.written == ["c.nii.gz"] and report.moved_aside is not None
    assert report.moved_aside.parent == out and "moved to" in report.summary()
    assert hashes(report.moved_aside / "volumes") == old  # nothing deleted
    assert sorted(p.name for p in (out / "volumes").iterdir()) == ["c.npy"]
    assert len(PreparedDataset(out, size=SIZE)) == 1


# --- 8. interrupted runs -------------------------------------------------------------------------
def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_sigterm_stops_workers_and_the_rerun_resumes(tmp_path):
    volume, spacing = ct_phantom((48, 96, 96), (2.0, 1.5, 1.5))
    src = tmp_path / "in"
    for k in range(8):
        write_volume(src / f"v{k}.nii.gz", volume, spacing)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = tmp_path / "stderr.txt"
    workers: set[int] = set()
    with open(log, "wb") as err:  # not a pipe: a leftover worker would hold it open
        proc = subprocess.Popen([sys.executable, "-m", "hagan", "preprocess", str(src), "--out",
                                 str(out), "--size", "64", "--modality", "ct", "--workers", "2",
                                 "--no-progress"], env=env, stdout=subprocess.DEVNULL,
                                stderr=err)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            workers |= _children(proc.pid)
            if len(workers) >= 2 and (out / "volumes").is_dir():
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert proc.returncode != 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.1)
        left = [pid for pid in workers if _alive(pid)]
        assert not left, "worker processes outlived the command"
    finally:  # never leave processes behind, whatever failed
        for pid in [proc.pid, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)
    report = run(src, out, size=64)  # resumes: not "not made by hagan preprocess"
    assert report.usable == 8 and not report.failed


# --- 9. labels tables ----------------------------------------------------------------------------
def test_a_subject_with_two_labels_names_both_rows(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("file,label\na,0\nb,1\na,1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"rows 2 and 4.*'0' and '1'"):
        read_labels(path)
    path.write_text("file,label\na,0\nb,1\na,0\n", encoding="utf-8")
    assert read_labels(path) == {"a": "0", "b": "1"}  # the same label twice is harmless


def test_a_short_row_is_one_line_naming_the_row(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("file,label\na,0\nb\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"row 3: expected 2 cells") as info:
        read_labels(path)
    assert "\n" not in str(info.value)


# --- 10. datasets validated before training ------------------------------------------------------
@pytest.fixture
def dataset(tmp_path, phantom) -> Path:
    src = tmp_path / "in"
    write_volume(src / "a.nii.gz", *phantom)
    write_volume(src / "b.nii.gz", *phantom)
    run(src, tmp_path / "ds")
    return tmp_path / "ds"


def _save_raw(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array)


@pytest.mark.parametrize("fault, match", [
    ("int16", r"b\.npy: expected float16 or float32 values in \[-1, 1\], found dtype int16"),
    ("hu_float", r"b\.npy: expected values in \[-1, 1\], found values from -1000"),
    ("nan", r"b\.npy: expected finite values"),
    ("empty", r"b\.npy: expected a \.npy volume, found an empty file \(0 bytes\)"),
    ("garbage", r"b\.npy: expected a \.npy volume, found an unreadable file"),
    ("shape", r"b\.npy: expected shape \(32, 32, 32\)"),
    ("list_json", r"dataset\.json: expected a JSON object .* found a JSON list"),
    ("no_size", r"dataset\.json 'size': expected one of 32, 64, 128, 256, found nothing"),
    ("bad_json", r"dataset\.json: expected a JSON object, found an unreadable file"),
])
def test_a_bad_dataset_is_refused_with_one_line_naming_the_file(dataset, fault, match):
    volume = dataset / "volumes" / "b.npy"
    hu = (np.load(volume).astype(np.float32) * 812 - 212)
    if fault == "int16":
        _save_raw(volume, hu.astype(np.int16))
    elif fault == "hu_float":
        _save_raw(volume, np.clip(hu, -1000, 600).astype(np.float16))
    elif fault == "nan":
        _save_raw(volume, np.full((SIZE,) * 3, np.nan, np.float16))
    elif fault == "empty":
        volume.write_bytes(b"")
    elif fault == "garbage":
        volume.write_bytes(b"garbage" * 100)
    elif fault == "shape":
        _save_raw(volume, np.zeros((SIZE, SIZE, SIZE // 2), np.float16))
    elif fault == "list_json":
        (dataset / "dataset.json").write_text("[32]")
    elif fault == "no_size":
        info = json.loads((dataset / "dataset.json").read_text())
        del info["size"]
        (dataset / "dataset.json").write_text(json.dumps(info))
    elif fault == "bad_json":
        (dataset / "dataset.json").write_text("{size: 32")
    for check in (lambda: validate_dataset(dataset), lambda: PreparedDataset(dataset, SIZE)):
        with pytest.raises(DataError, match=match) as info:
            check()
        assert "\n" not in str(info.value) and "hagan preprocess" in str(info.value)


def test_a_good_dataset_passes_validation(dataset):
    info = validate_dataset(dataset, size=SIZE)
    assert info["size"] == SIZE and len(PreparedDataset(dataset, SIZE)) == 2
