"""Real files nobody on this project wrote: the medical test data shipped inside installed packages
(nibabel: NIfTI, Analyze, MINC, MGH, PAR/REC, AFNI, ECAT, DICOM, tractography; pydicom: CT, MR,
RT dose/plan/struct, SR, multi-frame, compressed and truncated DICOM; nilearn: MNI152 templates).

They are collected at test time and copied into one input folder. ``hagan preprocess`` must
account for every file: prepared (in manifest.csv, a finite (S, S, S) volume in [-1, 1], sane
orientation), reported with a one-line reason (report.csv) or listed as no input (inputs.csv:
documentation, code, data files of a header); and the input folder stays byte-identical.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from hagan.preprocess import INPUTS_FILE, preprocess

SIZE = 32
pytestmark = pytest.mark.slow  # about 13 s on 2 CPU cores (178 files, three 197x233x189 MNI)


def shipped_files() -> dict[str, Path]:
    """Relative target name -> package file, for every package that is installed."""
    found: dict[str, Path] = {}
    import nibabel.testing

    for path in sorted(Path(nibabel.testing.data_path).iterdir()):
        if path.is_file():
            found[f"nibabel/{path.name}"] = path
    try:  # the files inside the wheel only: get_testdata_files() would try to download more
        import pydicom.data

        folder = Path(pydicom.data.__file__).parent / "test_files"
        for path in sorted(folder.iterdir()):
            if path.is_file():
                found[f"pydicom/{path.name}"] = path
    except ImportError:
        pass
    try:
        import nilearn.datasets

        folder = Path(nilearn.datasets.__file__).parent / "data"
        for path in sorted(folder.glob("*")):
            if path.is_file() and path.name.endswith((".nii.gz", ".mgz")):
                found[f"nilearn/{path.name}"] = path
    except ImportError:
        pass
    return found


def hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    files = shipped_files()
    src = tmp_path_factory.mktemp("corpus") / "in"
    for name, path in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, src / name)
    before = hashes(src)
    out = src.parent / "out"
    report = preprocess(src, out, size=SIZE, modality="mri", progress=False)
    return src, out, report, before


def test_every_shipped_file_is_accounted_for(corpus):
    src, out, report, before = corpus
    assert hashes(src) == before, "the input folder changed"
    listed = {row["file"]: row for row in read_csv(out / INPUTS_FILE)}
    assert set(listed) == set(before), "files missing from inputs.csv"
    manifest = {row["source"]: row for row in read_csv(out / "manifest.csv")}
    reasons = {row["input"]: row for row in read_csv(out / "report.csv")}
    candidates = [row for row in listed.values() if row["outcome"] not in ("ignored",)]
    assert len(candidates) >= 25
    for file, row in listed.items():
        if row["outcome"] == "prepared":
            assert row["input"] in manifest, file
        elif row["outcome"] in ("skipped", "dropped"):
            key = file if row["outcome"] == "dropped" else row["input"]
            assert key in reasons and reasons[key]["reason"].strip(), file
            assert "\n" not in reasons[key]["reason"]
        elif row["outcome"] == "data file":
            assert listed[f"{Path(file).parent.as_posix()}/{row['input'].split('/')[-1]}"]
        else:
            assert row["outcome"] == "ignored" and row["reason"], file
    # each input is in exactly one of manifest.csv (prepared) and report.csv (skipped)
    skipped = {k for k, r in reasons.items() if r["outcome"] == "skipped"}
    assert not skipped & set(manifest)
    assert len(manifest) == report.usable and len(skipped) == len(report.failed)
    kinds = collections.Counter(r["reason"].split(":")[0].split(" (")[0]
                                for r in reasons.values() if r["outcome"] == "skipped")
    print(f"\ncorpus: {len(before)} files, {len(candidates)} in inputs, {len(manifest)} "
          f"prepared, {len(skipped)} skipped; reasons: {dict(kinds.most_common())}")


def test_prepared_volumes_are_sane(corpus):
    src, out, report, before = corpus
    manifest = read_csv(out / "manifest.csv")
    assert len(manifest) >= 10
    for row in manifest:
        volume = np.load(out / "volumes" / row["file"])
        assert volume.shape == (SIZE,) * 3 and volume.dtype == np.float16, row["file"]
        values = volume.astype(np.float32)
        assert np.isfinite(values).all() and values.min() >= -1 and values.max() <= 1, row
        assert all(float(s) > 0 for s in row["original_spacing"].split("x")), row
    # orientation: the MNI152 T1 template comes out (inferior->superior, posterior->anterior,
    # left->right): left-right mirror symmetric, and the head's top is at the end of axis 0
    mni = [r for r in manifest if "mni_icbm152_t1" in r["source"]]
    if mni:
        head = np.load(out / "volumes" / mni[0]["file"]).astype(np.float32)
        foreground = head > -0.9

        def mirror(axis: int) -> float:
            return float((foreground & np.flip(foreground, axis)).sum() / foreground.sum())

        assert mirror(2) > 0.9 and mirror(2) > mirror(0) + 0.05 and mirror(2) > mirror(1)
        rows_with_head = np.nonzero(foreground.any((1, 2)))[0]
        neck, top = foreground[rows_with_head[0]].sum(), foreground[rows_with_head[-1]].sum()
        assert rows_with_head[-1] > SIZE // 2 and neck > 0 and top > 0


def test_known_cases_of_the_issue(corpus):
    """The inputs that an earlier version of the preprocessing mishandled."""
    src, out, report, before = corpus
    manifest = {row["source"]: row for row in read_csv(out / "manifest.csv")}
    reasons = {row["input"]: row["reason"] for row in read_csv(out / "report.csv")}
    if (src / "pydicom" / "rtdose.dcm").is_file():  # uint32 RT dose, 10x10x15
        assert manifest["pydicom/rtdose.dcm"]["original_shape"] == "10x10x15"
    if (src / "pydicom" / "MR_truncated.dcm").is_file():  # truncated DICOM: reported
        assert any("MR_truncated.dcm" in k or k.startswith("pydicom/series")
                   for k in reasons)
    for name in ("nibabel/minc1_1_scale.mnc", "nibabel/scaled+tlrc.HEAD"):
        assert name in manifest  # MINC1 and AFNI: read through nibabel
    for name in ("nibabel/tinypet.v", "nibabel/analyze.hdr", "nibabel/T1.PAR",
                 "nibabel/simple.trk", "pydicom/rtplan.dcm", "pydicom/zipMR.gz"):
        if (src / name).is_file():
            assert name in reasons, name
