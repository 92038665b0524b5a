"""Preprocessing: every format, orientation, windowing, bad inputs, re-runs, labels, CLI errors."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import run_cli

from hagan import cli
from hagan.data import DataError, PreparedDataset, augmentation
from hagan.errors import ConfigError, RunError
from hagan.phantom import ct_phantom, write_dicom_series, write_volume
from hagan.preprocess import CT_WINDOW, preprocess

SIZE = 32
PHANTOM_SHAPE = (16, 40, 48)  # z, y, x
PHANTOM_SPACING = (3.0, 1.5, 1.5)


def folder_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root (the input folder must be byte-for-byte unchanged)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run(src: Path, out: Path, **kwargs):
    kwargs = {"size": SIZE, "progress": False, **kwargs}
    return preprocess(src, out, **kwargs)


def manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def report_rows(out: Path) -> dict[str, str]:
    with open(out / "report.csv", newline="", encoding="utf-8") as fh:
        return {row["input"]: row["reason"] for row in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def phantom():
    return ct_phantom(PHANTOM_SHAPE, PHANTOM_SPACING)


@pytest.fixture
def one_ct(tmp_path, phantom) -> Path:
    src = tmp_path / "in"
    write_volume(src / "chest.nii.gz", *phantom)
    return src


# --- formats and geometry ------------------------------------------------------------------------
def test_every_format_gives_the_same_volume(tmp_path, phantom):
    volume, spacing = phantom
    src = tmp_path / "in"
    for name in ("a.nii", "b.nii.gz", "c.nrrd", "d.mha", "e.mhd"):
        write_volume(src / name, volume, spacing)
    write_dicom_series(src / "f_dicom", volume, spacing)
    # MGZ (FreeSurfer): nibabel with a RAS affine; array axes (x, y, z)
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    nib.save(nib.MGHImage(np.ascontiguousarray(volume.transpose(2, 1, 0)), affine), src / "g.mgz")
    before = folder_hashes(src)
    report = run(src, tmp_path / "out", modality="ct")
    assert sorted(report.written) == ["a.nii", "b.nii.gz", "c.nrrd", "d.mha", "e.mhd", "f_dicom",
                                      "g.mgz"]
    assert not report.failed and folder_hashes(src) == before
    arrays = {p.stem: np.load(p) for p in (tmp_path / "out" / "volumes").glob("*.npy")}
    reference = arrays["a"].astype(np.float32)
    assert reference.shape == (SIZE,) * 3 and arrays["a"].dtype == np.float16
    for name, array in arrays.items():
        # DICOM stores whole HU: 0.5 HU / 812 HU per unit ~ 1e-3
        np.testing.assert_allclose(array.astype(np.float32), reference, atol=3e-3, err_msg=name)


def test_orientation_and_ct_window(tmp_path, phantom):
    """The spine ends up posterior (low y), the body centred, air at -1, soft tissue at 40 HU."""
    volume, spacing = phantom
    src = tmp_path / "in"
    write_volume(src / "chest.mha", volume, spacing)
    # the same data stored left-right flipped with an LAS affine must give the same result
    flipped = np.ascontiguousarray(volume.transpose(2, 1, 0)[::-1])
    affine = np.diag([-spacing[2], spacing[1], spacing[0], 1.0])
    affine[0, 3] = (volume.shape[2] - 1) * spacing[2]
    nib.save(nib.Nifti1Image(flipped, affine), src / "flipped.nii.gz")
    run(src, tmp_path / "out", modality="ct")
    a = np.load(tmp_path / "out" / "volumes" / "chest.npy").astype(np.float32)
    b = np.load(tmp_path / "out" / "volumes" / "flipped.npy").astype(np.float32)
    np.testing.assert_allclose(a, b, atol=1e-2)
    bone = a > 0.9  # 700..1000 HU is above the 600 HU window top
    _zs, ys, xs = np.nonzero(bone)
    spine_y = np.median(ys[np.abs(xs - SIZE / 2) < 3])
    assert spine_y < SIZE / 2 - 3, "the spine must be posterior (axis 1 = posterior -> anterior)"
    assert a[:, 0, :].max() == -1.0 and a[:, -1, :].max() == -1.0  # air in front and behind
    soft = (CT_WINDOW[0] * -1 + 40) / (CT_WINDOW[1] - CT_WINDOW[0]) * 2 - 1  # 40 HU -> ~0.31
    middle = a[SIZE // 2, SIZE // 2 - 1: SIZE // 2 + 1, SIZE // 2 - 1: SIZE // 2 + 1]
    assert abs(float(np.median(middle)) - soft) < 0.05  # mediastinum: soft tissue


def test_trim_keeps_the_aspect_ratio_and_drops_blank_ends(tmp_path, phantom):
    volume, spacing = phantom
    # scanners fill slices outside the reconstructed field with -1024 HU or lower: blank slices
    # are those entirely at the window's bottom (as in the published script)
    padded = np.pad(volume, ((10, 10), (0, 0), (0, 0)), constant_values=-1024.0)
    src = tmp_path / "in"
    write_volume(src / "tall.nii.gz", padded, spacing)
    run(src, tmp_path / "trimmed", modality="ct")
    run(src, tmp_path / "kept", modality="ct", trim=False)
    trimmed = np.load(tmp_path / "trimmed" / "volumes" / "tall.npy")
    kept = np.load(tmp_path / "kept" / "volumes" / "tall.npy")
    # untrimmed, the 108 mm of z (with air) is the longest side; trimmed, the 72 mm of x is
    assert (trimmed > -1).sum() > 1.5 * (kept > -1).sum()
    assert np.all(kept[0] == -1) and np.all(kept[-1] == -1)
    info = json.loads((tmp_path / "kept" / "dataset.json").read_text())
    assert info["trim"] is False and info["window"] == list(CT_WINDOW)
    assert info["spacing_mm"] == pytest.approx([36 * 3.0 / SIZE] * 3, rel=0.02)  # 108 mm of z
    info = json.loads((tmp_path / "trimmed" / "dataset.json").read_text())
    assert info["spacing_mm"] == pytest.approx([48 * 1.5 / SIZE] * 3, rel=0.02)  # 72 mm of x


def test_mri_percentiles_and_isotropic_resampling(tmp_path, make_nifti):
    src = tmp_path / "in"
    make_nifti("t1.nii.gz", folder=src, spacing=(1.0, 1.2, 2.0))
    report = run(src, tmp_path / "out", modality="mri", spacing=2.0)
    assert report.written == ["t1.nii.gz"]
    a = np.load(tmp_path / "out" / "volumes" / "t1.npy")
    assert a.min() == -1 and a.max() == pytest.approx(1, abs=0.02)
    info = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert info["modality"] == "mri" and info["percentiles"] == [0.5, 99.5]
    assert info["window"] is None and info["spacing"] == 2.0


def test_parallel_workers_match_serial(tmp_path, make_nifti):
    src = tmp_path / "in"
    for i in range(3):
        make_nifti(f"s{i}.nii.gz", folder=src, seed=i)
    run(src, tmp_path / "serial", modality="mri")
    run(src, tmp_path / "pool", modality="mri", workers=2)
    for i in range(3):
        a = np.load(tmp_path / "serial" / "volumes" / f"s{i}.npy")
        assert a.tobytes() == np.load(tmp_path / "pool" / "volumes" / f"s{i}.npy").tobytes()


# --- bad inputs ----------------------------------------------------------------------------------
def write_bad_inputs(src: Path) -> dict[str, str]:
    """One file per bad-input case -> a word its reason must contain."""
    src.mkdir(parents=True, exist_ok=True)
    eye = np.eye(4)
    (src / "garbage.nii.gz").write_bytes(b"this is not a NIfTI file")
    (src / "zero_bytes.mha").write_bytes(b"")
    nib.save(nib.Nifti1Image(np.random.rand(12, 12).astype(np.float32), eye), src / "flat.nii")
    nib.save(nib.Nifti1Image(np.random.rand(8, 8, 8, 3).astype(np.float32), eye), src / "4d.nii")
    nib.save(nib.Nifti1Image(np.zeros((0, 8, 8), np.float32), eye), src / "empty.nii")
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), np.nan, np.float32), eye), src / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), 7, np.float32), eye), src / "constant.nii.gz")
    rgb = np.random.randint(0, 255, (8, 8, 8, 3)).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(src / "rgb.mha"))
    return {"garbage.nii.gz": "cannot be read", "zero_bytes.mha": "cannot be read",
            "flat.nii": "2D", "4d.nii": "4D", "empty.nii": "empty", "nan.nii.gz": "NaN",
            "constant.nii.gz": "constant", "rgb.mha": "multi-channel"}


def test_bad_files_are_reported_and_skipped(tmp_path, one_ct):
    expected = write_bad_inputs(one_ct)
    before = folder_hashes(one_ct)
    report = run(one_ct, tmp_path / "out", modality="ct")
    assert report.written == ["chest.nii.gz"]
    reasons = report_rows(tmp_path / "out")
    assert set(reasons) == set(expected)
    for name, word in expected.items():
        assert word.lower() in reasons[name].lower(), (name, reasons[name])
        assert "\n" not in reasons[name]
    assert [r["file"] for r in manifest(tmp_path / "out")] == ["chest.npy"]
    assert folder_hashes(one_ct) == before
    with pytest.raises(DataError, match="strict"):
        run(one_ct, tmp_path / "out", modality="ct", strict=True)
    assert folder_hashes(one_ct) == before


def test_nothing_usable_is_an_error(tmp_path):
    src = tmp_path / "in"
    write_bad_inputs(src)
    before = folder_hashes(src)
    with pytest.raises(DataError, match="nothing usable.*report.csv"):
        run(src, tmp_path / "out", modality="ct")
    assert (tmp_path / "out" / "report.csv").is_file() and folder_hashes(src) == before


def test_folder_errors(tmp_path, one_ct):
    before = folder_hashes(one_ct)
    with pytest.raises(RunError, match="--out: expected a folder outside the input folder"):
        run(one_ct, one_ct / "prepared", modality="ct")
    with pytest.raises(RunError, match="--out: expected a folder outside the input folder"):
        run(one_ct, one_ct, modality="ct")
    assert folder_hashes(one_ct) == before and not (one_ct / "prepared").exists()
    with pytest.raises(DataError, match="does not exist"):
        run(tmp_path / "nope", tmp_path / "out", modality="ct")
    (tmp_path / "empty_in").mkdir()
    with pytest.raises(DataError, match="no image files found"):
        run(tmp_path / "empty_in", tmp_path / "out", modality="ct")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("precious")
    with pytest.raises(RunError, match="--force"):
        run(one_ct, tmp_path / "busy", modality="ct")


@pytest.mark.parametrize("kwargs, match", [
    ({"size": 100}, r"--size: expected a cube side 2\^k in \[32, 256\].*found 100"),
    ({"modality": "pet"}, "--modality: expected ct or mri, found 'pet'"),
    ({"modality": "ct", "window": (600, -1024)}, "--window: expected LOW HIGH with LOW < HIGH"),
    ({"modality": "mri", "percentiles": (99, 1)}, "--percentiles: expected P1 P2 with "
                                                  "0 <= P1 < P2 <= 100"),
    ({"modality": "ct", "spacing": 0}, "--spacing: expected a positive voxel size in mm"),
    ({"modality": "ct", "workers": 0}, "--workers: expected a value >= 1, found 0"),
])
def test_bad_parameters(tmp_path, one_ct, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        run(one_ct, tmp_path / "out", **{"modality": "ct", **kwargs})
    assert not (tmp_path / "out").exists()


# --- re-runs -------------------------------------------------------------------------------------
def test_rerun_skips_unchanged_and_redoes_changed(tmp_path, make_nifti):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        make_nifti(f"s{i}.nii.gz", folder=src, seed=i)
    assert len(run(src, out, modality="mri").written) == 3
    stamp = (out / "volumes" / "s0.npy").stat().st_mtime_ns
    again = run(src, out, modality="mri")
    assert again.written == [] and len(again.up_to_date) == 3
    assert (out / "volumes" / "s0.npy").stat().st_mtime_ns == stamp
    with pytest.raises(RunError, match=r"percentiles \[0.5, 99.5\] -> \[1.0, 99.0\].*--replace"):
        run(src, out, modality="mri", percentiles=(1, 99))  # a parameter changed: refused
    changed = run(src, out, modality="mri", percentiles=(1, 99), replace=True)
    assert len(changed.written) == 3 and changed.moved_aside is not None
    make_nifti("s1.nii.gz", folder=src, seed=10)  # an input changed
    os.utime(src / "s1.nii.gz", ns=(1, 1))
    (src / "s2.nii.gz").unlink()  # an input is gone
    last = run(src, out, modality="mri", percentiles=(1, 99))
    assert last.written == ["s1.nii.gz"] and last.up_to_date == ["s0.nii.gz"]
    assert sorted(p.name for p in (out / "volumes").iterdir()) == ["s0.npy", "s1.npy"]
    assert [r["file"] for r in manifest(out)] == ["s0.npy", "s1.npy"]


# --- labels --------------------------------------------------------------------------------------
def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("file,label\n" + "".join(f"{a},{b}\n" for a, b in rows))
    return path


def test_labels_by_file_or_subject(tmp_path, make_nifti):
    src = tmp_path / "in"
    for name in ("p1", "p2", "p3"):
        make_nifti(f"{name}.nii.gz", folder=src)
    labels = write_csv(tmp_path / "labels.csv",
                       [("p1.nii.gz", "tumour"), ("p2", "healthy"), ("p3", "tumour")])
    run(src, tmp_path / "out", modality="mri", labels=labels)
    info = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert info["label_names"] == ["healthy", "tumour"]
    assert [r["label"] for r in manifest(tmp_path / "out")] == ["1", "0", "1"]
    data = PreparedDataset(tmp_path / "out", size=SIZE, num_classes=2)
    assert data.labels == [1, 0, 1]
    with pytest.raises(DataError, match="3 classes but .* has 2 label names"):
        PreparedDataset(tmp_path / "out", size=SIZE, num_classes=3)


def test_label_errors_name_the_files(tmp_path, make_nifti):
    src = tmp_path / "in"
    for name in ("p1", "p2"):
        make_nifti(f"{name}.nii.gz", folder=src)
    extra = write_csv(tmp_path / "extra.csv", [("p1", "a"), ("p2", "b"), ("ghost.nii", "a")])
    with pytest.raises(DataError, match="1 file not found in the input folder: ghost.nii"):
        run(src, tmp_path / "out", modality="mri", labels=extra)
    with pytest.raises(DataError, match="labels file"):
        run(src, tmp_path / "out", modality="mri", labels=tmp_path / "missing.csv")
    assert not (tmp_path / "out" / "volumes").exists()  # checked before any work
    partial = write_csv(tmp_path / "partial.csv", [("p1", "a")])
    with pytest.raises(DataError, match="1 prepared input without a label.*p2.nii.gz"):
        run(src, tmp_path / "out", modality="mri", labels=partial)
    assert not (tmp_path / "out" / "manifest.csv").exists()  # no dataset with a missing label


def test_a_bare_name_in_two_subfolders_is_ambiguous(tmp_path, make_nifti):
    src = tmp_path / "in"
    make_nifti("scan.nii", folder=src / "a", seed=1)
    make_nifti("scan.nii", folder=src / "b", seed=2)
    bare = write_csv(tmp_path / "bare.csv", [("scan.nii", "0")])
    with pytest.raises(DataError, match=r"1 row naming more than one input: 'scan.nii' matches "
                                        r"a/scan.nii, b/scan.nii"):
        run(src, tmp_path / "out", modality="mri", labels=bare)
    subject = write_csv(tmp_path / "subject.csv", [("scan", "0")])
    with pytest.raises(DataError, match="'scan' matches a/scan.nii, b/scan.nii"):
        run(src, tmp_path / "out", modality="mri", labels=subject)
    paths = write_csv(tmp_path / "paths.csv", [("a/scan.nii", "0"), ("b/scan.nii", "1")])
    run(src, tmp_path / "out", modality="mri", labels=paths)
    rows = {r["source"]: r["label"] for r in manifest(tmp_path / "out")}
    assert rows == {"a/scan.nii": "0", "b/scan.nii": "1"}


def test_skipped_inputs_need_no_label(tmp_path, make_nifti):
    src = tmp_path / "in"
    make_nifti("p1.nii.gz", folder=src)
    (src / "broken.nii.gz").write_bytes(b"not a NIfTI file")  # skipped: cannot be read
    (src / "slides.tif").write_bytes(b"II*\x00")  # skipped: unsupported format
    labels = write_csv(tmp_path / "labels.csv", [("p1", "x")])
    report = run(src, tmp_path / "out", modality="mri", labels=labels)
    assert report.written == ["p1.nii.gz"] and len(report.failed) >= 1
    assert [r["label"] for r in manifest(tmp_path / "out")] == ["0"]


# --- parameters of an existing dataset -----------------------------------------------------------
def test_a_changed_parameter_is_refused_unless_replace(tmp_path, make_nifti):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(2):
        make_nifti(f"s{i}.nii.gz", folder=src, seed=i)
    run(src, out, modality="mri")
    old = folder_hashes(out / "volumes")
    with pytest.raises(RunError, match=r"size 32 -> 64; modality mri -> ct.*--replace") as info:
        run(src, out, size=64, modality="ct")
    assert "\n" not in str(info.value)
    for kwargs in ({"spacing": 2.0}, {"trim": False}, {"window": (0, 100)}):
        with pytest.raises(RunError, match="--replace"):
            run(src, out, modality="mri", **kwargs)
    assert folder_hashes(out / "volumes") == old  # nothing rebuilt
    assert len(run(src, out, modality="mri").up_to_date) == 2  # same parameters: resumes
    labels = write_csv(tmp_path / "labels.csv", [("s0", "a"), ("s1", "b")])
    with pytest.raises(RunError, match="labels: none before"):
        run(src, out, modality="mri", labels=labels)
    report = run(src, out, size=64, modality="ct", replace=True)
    assert report.moved_aside is not None and len(report.written) == 2
    assert folder_hashes(report.moved_aside / "volumes") == old  # moved aside, not deleted
    assert json.loads((out / "dataset.json").read_text())["size"] == 64
    relabel = write_csv(tmp_path / "relabel.csv", [("s0", "b"), ("s1", "b")])
    run(src, out, size=64, modality="ct", labels=labels, replace=True)
    with pytest.raises(RunError, match=r"labels of 1 input \(s0\)"):
        run(src, out, size=64, modality="ct", labels=relabel)


def test_mixed_voxel_sizes_are_warned_and_flagged(tmp_path, make_nifti, caplog):
    src = tmp_path / "in"
    make_nifti("fine.nii.gz", folder=src, spacing=(0.5, 0.5, 0.5))
    make_nifti("coarse.nii.gz", folder=src, spacing=(3.0, 3.0, 3.0))
    with caplog.at_level("WARNING", logger="hagan.preprocess"):
        report = run(src, tmp_path / "out", modality="mri")
    info = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert info["spacing_mixed"] is True
    low, high = info["spacing_mm_range"]
    assert high / low > 1.1
    assert len(report.warnings) == 1 and "--spacing" in report.warnings[0]
    assert "median" in caplog.text and "--spacing" in caplog.text
    same = tmp_path / "same"
    make_nifti("a.nii.gz", folder=same, seed=1)
    make_nifti("b.nii.gz", folder=same, seed=2)
    report = run(same, tmp_path / "out2", modality="mri")
    assert not report.warnings
    assert json.loads((tmp_path / "out2" / "dataset.json").read_text())["spacing_mixed"] is False


# --- CLI -----------------------------------------------------------------------------------------
def test_cli_error_in_a_subprocess_is_one_line_without_traceback(tmp_path, one_ct):
    proc = run_cli("preprocess", str(one_ct), "--out", str(one_ct / "out"), "--size", "32",
                   "--modality", "ct", "--no-progress")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "input folder" in proc.stderr


def test_cli_nothing_usable_and_success(tmp_path, one_ct, capsys, caplog):
    caplog.set_level("INFO")  # what `hagan` shows by default (logging at INFO on stderr)
    bad = tmp_path / "bad"
    write_bad_inputs(bad)
    args = ["--size", "32", "--modality", "ct", "--no-progress"]
    assert cli.main(["preprocess", str(bad), "--out", str(tmp_path / "out1"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("hagan preprocess: error: nothing usable")
    code = cli.main(["preprocess", str(one_ct), "--out", str(tmp_path / "out2"), *args,
                     "--window", "-1000", "400"])
    captured = capsys.readouterr()
    assert code == 0 and "1 volume written" in captured.out
    shown = captured.out + captured.err + "\n".join(r.getMessage() for r in caplog.records)
    assert shown.count("1 volume written") == 1  # the summary once, not also in the log
    info = json.loads((tmp_path / "out2" / "dataset.json").read_text())
    assert info["window"] == [-1000.0, 400.0]


# --- augmentation (hagan.data.augmentation) ------------------------------------------------------
def test_augmentation_changes_volume_but_keeps_shape_and_range(tmp_path, one_ct):
    run(one_ct, tmp_path / "out", modality="ct")
    volume = torch.from_numpy(np.load(tmp_path / "out" / "volumes" / "chest.npy")
                              .astype(np.float32))[None]
    torch.manual_seed(0)
    transform = augmentation()
    outputs = [transform(volume.clone()) for _ in range(4)]
    for out in outputs:
        assert out.shape == volume.shape
        assert out.min() >= -1 - 1e-5 and out.max() <= 1 + 1e-5
    assert any(not torch.allclose(out, volume) for out in outputs)
    data = PreparedDataset(tmp_path / "out", size=SIZE, augment=True)
    item = data[0]
    assert item.shape == (1, SIZE, SIZE, SIZE) and item.min() >= -1 and item.max() <= 1


def test_in_place_scaling_matches_torchio():
    import torchio as tio

    from hagan.preprocess import scale_intensity

    data = torch.linspace(-2000, 2000, 4 * 5 * 6).reshape(1, 4, 5, 6)
    image = tio.ScalarImage(tensor=data.clone())
    expected = tio.RescaleIntensity((-1, 1), in_min_max=CT_WINDOW)(tio.Clamp(*CT_WINDOW)(image))
    torch.testing.assert_close(scale_intensity(data.clone(), *CT_WINDOW), expected.data)
