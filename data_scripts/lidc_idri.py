"""LIDC-IDRI chest CT (1010 patients, ~1018 CT series, DICOM) -> prepared dataset.

Source:  The Cancer Imaging Archive, https://www.cancerimagingarchive.net/collection/lidc-idri/
         (Armato et al., Medical Physics 38(2), 2011; DOI 10.7937/K9/TCIA.2015.LO9QL9SX),
         fetched series by series through TCIA's public NBIA REST API (v1):
         https://services.cancerimagingarchive.net/nbia-api/services/v1/
Licence: Creative Commons CC BY 3.0 (https://creativecommons.org/licenses/by/3.0/); follow
         TCIA's data usage policy and citation requirements.
Checksum: TCIA publishes no checksum per series archive; when a series zip carries an
         ``md5hashes.csv`` the files are checked against it.

Each series arrives as a zip of DICOM slices, is unpacked into ``raw/<PatientID>/<SeriesUID>/``
and the whole tree is prepared with ``hagan preprocess --modality ct`` and the HA-GAN CT window
[-1024, 600] HU. ``--limit N`` takes the first N series (about 75 MB each) for a quick start.
If the API is not reachable from your network, download the collection with the NBIA Data
Retriever into ``raw/`` and run with ``--skip-download``.

Usage::

    python data_scripts/lidc_idri.py --size 128 --limit 50
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

NAME = "lidc_idri"
API = "https://services.cancerimagingarchive.net/nbia-api/services/v1"
COLLECTION = "LIDC-IDRI"
WINDOW = (-1024.0, 600.0)  # HU, the published HA-GAN CT window


def list_series(downloads: Path) -> list[dict]:
    """The collection's CT series (SeriesInstanceUID, PatientID, ...), cached in series.json."""
    query = urllib.parse.urlencode({"Collection": COLLECTION, "Modality": "CT"})
    path = common.download(f"{API}/getSeries?{query}", downloads / "series.json")
    series = json.loads(path.read_text(encoding="utf-8"))
    return sorted(series, key=lambda s: (s.get("PatientID", ""), s["SeriesInstanceUID"]))


def verify_md5s(folder: Path) -> None:
    """Check the files of an unpacked series against its md5hashes.csv, when there is one."""
    table = folder / "md5hashes.csv"
    if not table.is_file():
        return
    with open(table, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            name, expected = row.get("FileName") or row.get("filename"), row.get("MD5Hash")
            if not name or not expected:
                continue
            found = hashlib.md5((folder / name).read_bytes()).hexdigest()
            if found != expected.lower():
                raise ValueError(f"{folder / name}: md5 {found}, expected {expected}; delete "
                                 f"{folder} and its zip in downloads/ and run again")
    table.unlink()  # not an image: keep the prepared tree to DICOM only


def fetch_and_prepare(root: Path, size: int = 128, workers: int = 1, download: bool = True,
                      limit: int | None = None, window: tuple[float, float] = WINDOW):
    """Download (resumable, per series), unpack and prepare LIDC-IDRI under ``root/lidc_idri``."""
    base = root / NAME
    raw = base / "raw"
    if download:
        series = list_series(base / "downloads")[:limit]
        for item in series:
            uid = item["SeriesInstanceUID"]
            query = urllib.parse.urlencode({"SeriesInstanceUID": uid})
            archive = common.download(f"{API}/getImage?{query}", base / "downloads" / f"{uid}.zip")
            folder = raw / item.get("PatientID", "unknown") / uid
            if not (folder / f"{common.UNPACKED_MARKER}-{archive.name}").is_file():
                common.unpack(archive, folder)
                verify_md5s(folder)
    elif not raw.is_dir():
        raise FileNotFoundError(f"{raw} is missing; put the DICOM folders there (NBIA Data "
                                "Retriever) or drop --skip-download")
    return common.prepare(raw, base / f"prepared-{size}", size=size, modality="ct",
                          window=window, workers=workers)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--limit", type=int, help="only the first N series (default: all)")
    args = p.parse_args(argv)
    fetch_and_prepare(common.data_dir(args.data_dir), args.size, args.workers,
                      download=not args.skip_download, limit=args.limit)
    return 0


if __name__ == "__main__":
    common.run(main)
