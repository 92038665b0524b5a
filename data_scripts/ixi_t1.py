"""IXI T1-weighted brain MRI (about 580 healthy adults, three London hospitals) -> prepared dataset.

Source:  https://brain-development.org/ixi-dataset/
         archive http://biomedic.doc.ic.ac.uk/brain-development/downloads/IXI/IXI-T1.tar (~4.5 GB)
Licence: Creative Commons CC BY-SA 3.0 (https://creativecommons.org/licenses/by-sa/3.0/);
         cite the IXI dataset (Imperial College London) when you publish.
Checksum: the source publishes none, so only completeness is checked.

The tar holds one ``IXI<id>-<site>-<scan>-T1.nii.gz`` per subject (1.2 x 0.94 x 0.94 mm, sagittal
acquisition). They are reoriented to RAS, scaled with the (0.5, 99.5) MRI percentiles, trimmed,
padded to a cube and resized by ``hagan preprocess --modality mri``.

Usage::

    HAGAN_DATA_DIR=/data python data_scripts/ixi_t1.py --size 128 --workers 4
    # -> /data/ixi_t1/prepared-128  (train with: hagan train --set data=/data/ixi_t1/prepared-128)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

NAME = "ixi_t1"
URL = "http://biomedic.doc.ic.ac.uk/brain-development/downloads/IXI/IXI-T1.tar"
CHECKSUM = None  # not published by the source


def fetch_and_prepare(root: Path, size: int = 128, workers: int = 1, download: bool = True):
    """Download (resumable), unpack and prepare IXI T1 under ``root/ixi_t1``."""
    base = root / NAME
    archive = base / "downloads" / "IXI-T1.tar"
    if download:
        common.download(URL, archive, CHECKSUM)
    elif not archive.is_file():
        raise FileNotFoundError(f"{archive} is missing; download it from {URL} or drop "
                                "--skip-download")
    raw = common.unpack(archive, base / "raw")
    return common.prepare(raw, base / f"prepared-{size}", size=size, modality="mri",
                          workers=workers)


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__.split("\n")[0]).parse_args(argv)
    fetch_and_prepare(common.data_dir(args.data_dir), args.size, args.workers,
                      download=not args.skip_download)
    return 0


if __name__ == "__main__":
    common.run(main)
