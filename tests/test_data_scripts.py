"""data_scripts/: download resume and checksum, safe unpacking, and the unpack-and-prepare path of
each public-dataset script on small fake archives built here. The network is never touched."""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import json
import shutil
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import blob_volume

from hagan.data import PreparedDataset
from hagan.phantom import ct_phantom, write_dicom_series, write_volume

SCRIPTS = Path(__file__).resolve().parents[1] / "data_scripts"
SIZE = 32


def load(name: str):
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module(name)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def fake_download(monkeypatch):
    """Patch _common.download: ``urls`` maps a URL substring to the local file to 'download'."""
    common = load("_common")
    urls: dict[str, Path] = {}
    seen: list[str] = []

    def download(url, dest, checksum=None):
        seen.append(url)
        source = next(path for key, path in urls.items() if key in url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, dest)
        return dest

    monkeypatch.setattr(common, "download", download)
    return urls, seen


def nifti_bytes(array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> bytes:
    """The bytes of a .nii.gz file holding ``array``."""
    image = nib.Nifti1Image(array.astype(np.float32), np.diag([*spacing, 1.0]))
    return gzip.compress(image.to_bytes())


def make_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def dataset_info(out: Path) -> dict:
    return json.loads((out / "dataset.json").read_text())


# --- _common -------------------------------------------------------------------------------------
class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, status: int):
        super().__init__(data)
        self.status = status
        self.headers = {"Content-Length": str(len(data))}


def test_download_resumes_with_a_range_request_and_checks_md5(tmp_path, monkeypatch):
    common = load("_common")
    payload = bytes(range(256)) * 40
    asked = []

    def urlopen(request, timeout):
        asked.append(request.headers.get("Range"))
        start = int(request.headers["Range"].split("=")[1].rstrip("-"))
        return FakeResponse(payload[start:], 206)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    dest = tmp_path / "big.tar"
    (tmp_path / "big.tar.part").write_bytes(payload[:1000])  # an interrupted earlier download
    md5 = hashlib.md5(payload).hexdigest()
    assert common.download("https://example.org/big.tar", dest, f"md5:{md5}") == dest
    assert asked == ["bytes=1000-"] and dest.read_bytes() == payload
    assert not (tmp_path / "big.tar.part").exists()
    common.download("https://example.org/big.tar", dest, f"md5:{md5}")  # done: no request
    assert len(asked) == 1
    (tmp_path / "bad.tar.part").write_bytes(payload[:10])
    with pytest.raises(ValueError, match="md5 is .*expected 0+"):
        common.download("https://example.org/bad.tar", tmp_path / "bad.tar", "md5:" + "0" * 32)
    assert not (tmp_path / "bad.tar").exists()


def test_download_restarts_when_the_server_ignores_range(tmp_path, monkeypatch):
    common = load("_common")
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda request, timeout: FakeResponse(b"fresh content", 200))
    (tmp_path / "f.zip.part").write_bytes(b"stale")
    common.download("https://example.org/f.zip", tmp_path / "f.zip")
    assert (tmp_path / "f.zip").read_bytes() == b"fresh content"


def test_unpack_refuses_members_outside_the_folder(tmp_path):
    common = load("_common")
    evil = make_tar(tmp_path / "evil.tar", {"ok.txt": b"fine", "../escaped.txt": b"bad"})
    with pytest.raises(ValueError, match="outside"):
        common.unpack(evil, tmp_path / "raw")
    assert not (tmp_path / "escaped.txt").exists()
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("/etc/absolute.txt", b"bad")
    with pytest.raises(ValueError, match="outside"):
        common.unpack(tmp_path / "evil.zip", tmp_path / "raw2")
    (tmp_path / "junk.bin").write_bytes(b"neither")
    with pytest.raises(ValueError, match="neither a tar nor a zip"):
        common.unpack(tmp_path / "junk.bin", tmp_path / "raw3")


def test_data_dir_comes_from_the_environment(tmp_path, monkeypatch):
    common = load("_common")
    monkeypatch.setenv("HAGAN_DATA_DIR", str(tmp_path / "env"))
    assert common.data_dir() == tmp_path / "env" and (tmp_path / "env").is_dir()
    assert common.data_dir(str(tmp_path / "cli")) == tmp_path / "cli"


# --- the scripts ---------------------------------------------------------------------------------
def test_ixi_t1(tmp_path, fake_download):
    ixi = load("ixi_t1")
    urls, seen = fake_download
    urls["IXI-T1.tar"] = make_tar(tmp_path / "IXI-T1.tar", {
        f"IXI00{i}-Guys-0828-T1.nii.gz": nifti_bytes(blob_volume(seed=i), (1.2, 0.94, 0.94))
        for i in (2, 12)})
    report = ixi.fetch_and_prepare(tmp_path / "data", size=SIZE)
    out = tmp_path / "data" / "ixi_t1" / f"prepared-{SIZE}"
    assert seen == [ixi.URL] and report.usable == 2 and not report.failed
    assert dataset_info(out)["modality"] == "mri" and len(PreparedDataset(out, size=SIZE)) == 2
    again = ixi.fetch_and_prepare(tmp_path / "data", size=SIZE)  # unpack and prepare are skipped
    assert again.up_to_date and not again.written


def test_msd_lung(tmp_path, fake_download):
    lung = load("msd_lung")
    urls, _ = fake_download
    volume, spacing = ct_phantom((16, 40, 48), (3.0, 1.5, 1.5))
    ct = tmp_path / "ct.nii.gz"
    write_volume(ct, volume, spacing)
    mask = nifti_bytes((volume > 500).astype(np.float32).transpose(2, 1, 0))
    urls["Task06_Lung"] = make_tar(tmp_path / "Task06_Lung.tar", {
        "Task06_Lung/dataset.json": b"{}",
        "Task06_Lung/imagesTr/lung_001.nii.gz": ct.read_bytes(),
        "Task06_Lung/imagesTr/._lung_001.nii.gz": b"macOS metadata",
        "Task06_Lung/imagesTs/lung_002.nii.gz": ct.read_bytes(),
        "Task06_Lung/labelsTr/lung_001.nii.gz": mask,
    })
    report = lung.fetch_and_prepare(tmp_path / "data", size=SIZE)
    out = tmp_path / "data" / "msd_lung" / f"prepared-{SIZE}"
    assert sorted(report.written) == ["lung_001.nii.gz", "lung_002.nii.gz"]
    info = dataset_info(out)
    assert info["modality"] == "ct" and info["window"] == [-1024.0, 600.0]


def test_msd_brain_tumour_splits_the_sequence_and_labels(tmp_path, fake_download):
    brain = load("msd_brain_tumour")
    urls, _ = fake_download
    members = {"Task01_BrainTumour/dataset.json": b"{}"}
    for i, tumour in ((1, 2.0), (2, 4.0), (3, 6.0)):
        channels = np.stack([blob_volume(seed=10 * i + c) * (c + 1) for c in range(4)], axis=-1)
        label = np.zeros(channels.shape[:3], np.float32)
        label[:int(tumour), :4, :4] = 1
        members[f"Task01_BrainTumour/imagesTr/BRATS_00{i}.nii.gz"] = nifti_bytes(channels)
        members[f"Task01_BrainTumour/labelsTr/BRATS_00{i}.nii.gz"] = nifti_bytes(label)
    members["Task01_BrainTumour/imagesTs/BRATS_009.nii.gz"] = nifti_bytes(channels)
    urls["Task01_BrainTumour"] = make_tar(tmp_path / "Task01.tar", members)
    report = brain.fetch_and_prepare(tmp_path / "data", size=SIZE, sequence="T1w")
    assert len(report.written) == 4  # three training images and one test image
    split = tmp_path / "data" / "msd_brain_tumour" / "raw-T1w" / "BRATS_001.nii.gz"
    assert nib.load(split).shape == blob_volume().shape  # 3D now
    report = brain.fetch_and_prepare(tmp_path / "data", size=SIZE, sequence="T1w",
                                     labels="tumour-size")
    out = tmp_path / "data" / "msd_brain_tumour" / f"prepared-T1w-{SIZE}-labelled"
    assert dataset_info(out)["label_names"] == ["large", "small"]
    data = PreparedDataset(out, size=SIZE, num_classes=2)
    assert data.labels == [1, 1, 0]  # 32 and 64 tumour voxels: small; 96: large
    with pytest.raises(ValueError, match="--sequence"):
        brain.fetch_and_prepare(tmp_path / "data", sequence="DWI")


def test_lidc_idri_dicom_series(tmp_path, fake_download):
    lidc = load("lidc_idri")
    urls, seen = fake_download
    series = [{"SeriesInstanceUID": "1.2.3.4", "PatientID": "LIDC-IDRI-0001"},
              {"SeriesInstanceUID": "1.2.3.5", "PatientID": "LIDC-IDRI-0002"}]
    (tmp_path / "series.json").write_text(json.dumps(series))
    urls["getSeries"] = tmp_path / "series.json"
    volume, spacing = ct_phantom((12, 32, 32), (2.5, 1.5, 1.5))
    dicom = write_dicom_series(tmp_path / "dicom", volume, spacing)
    with zipfile.ZipFile(tmp_path / "series.zip", "w") as zf:
        rows = ["FileName,MD5Hash"]
        for path in sorted(dicom.iterdir()):
            zf.write(path, path.name)
            rows.append(f"{path.name},{hashlib.md5(path.read_bytes()).hexdigest()}")
        zf.writestr("md5hashes.csv", "\n".join(rows) + "\n")
    urls["getImage"] = tmp_path / "series.zip"
    report = lidc.fetch_and_prepare(tmp_path / "data", size=SIZE)
    assert len(seen) == 3 and "Collection=LIDC-IDRI" in seen[0]
    assert sorted(report.written) == ["LIDC-IDRI-0001/1.2.3.4", "LIDC-IDRI-0002/1.2.3.5"]
    out = tmp_path / "data" / "lidc_idri" / f"prepared-{SIZE}"
    assert dataset_info(out)["window"] == [-1024.0, 600.0]
    first = np.load(out / "volumes" / "LIDC-IDRI-0001__1.2.3.4.npy")
    assert first.shape == (SIZE,) * 3 and first.min() == -1 and first.max() == 1


def test_lidc_md5_mismatch_is_an_error(tmp_path, fake_download):
    lidc = load("lidc_idri")
    urls, _ = fake_download
    (tmp_path / "series.json").write_text(json.dumps([{"SeriesInstanceUID": "9.9"}]))
    urls["getSeries"] = tmp_path / "series.json"
    with zipfile.ZipFile(tmp_path / "s.zip", "w") as zf:
        zf.writestr("1-001.dcm", b"slice")
        zf.writestr("md5hashes.csv", "FileName,MD5Hash\n1-001.dcm," + "0" * 32 + "\n")
    urls["getImage"] = tmp_path / "s.zip"
    with pytest.raises(ValueError, match="md5"):
        lidc.fetch_and_prepare(tmp_path / "data", size=SIZE)


def test_skip_download_without_archive_is_a_clear_error(tmp_path):
    ixi = load("ixi_t1")
    with pytest.raises(FileNotFoundError, match="IXI-T1.tar is missing"):
        ixi.main(["--data-dir", str(tmp_path), "--size", "32", "--skip-download"])
