"""Medical Segmentation Decathlon, Task06 lung (63 + 32 chest CT with lung tumours) -> dataset.

Source:  http://medicaldecathlon.com/ (Simpson et al., 2019, arXiv:1902.09063; the scans come
         from The Cancer Imaging Archive); archive mirrored by the MONAI project at
         https://msd-for-monai.s3-us-west-2.amazonaws.com/Task06_Lung.tar (~8.5 GB)
Licence: Creative Commons CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/).
Checksum: md5 8afd997733c7fc0432f71255ba4e52dc (as listed by MONAI's DecathlonDataset).

The images (``imagesTr``, ``imagesTs``: 3D NIfTI in HU) are prepared with ``hagan preprocess
--modality ct`` and HA-GAN's CT window [-1024, 600] HU (the COPDGene setting of the paper);
``--window`` changes it, e.g. ``--window -1000 200`` for lung parenchyma only. The segmentation
masks in ``labelsTr`` are not images to learn from and are left out.

Usage::

    python data_scripts/msd_lung.py --size 128
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

NAME = "msd_lung"
TASK = "Task06_Lung"
URL = f"https://msd-for-monai.s3-us-west-2.amazonaws.com/{TASK}.tar"
CHECKSUM = "md5:8afd997733c7fc0432f71255ba4e52dc"
WINDOW = (-1024.0, 600.0)  # HU, the published HA-GAN CT window


def collect_images(task_dir: Path, dest: Path) -> Path:
    """Hard-link (or copy) imagesTr/imagesTs into one folder, leaving the masks out."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for part in ("imagesTr", "imagesTs"):
        for path in sorted((task_dir / part).glob("*.nii.gz")):
            target = dest / path.name
            if path.name.startswith("._") or target.exists():  # skip macOS metadata files
                continue
            try:
                target.hardlink_to(path)
            except OSError:
                shutil.copy2(path, target)
    return dest


def fetch_and_prepare(root: Path, size: int = 128, workers: int = 1, download: bool = True,
                      window: tuple[float, float] = WINDOW):
    """Download, unpack and prepare the MSD lung CT under ``root/msd_lung``."""
    base = root / NAME
    archive = base / "downloads" / f"{TASK}.tar"
    if download:
        common.download(URL, archive, CHECKSUM)
    elif not archive.is_file():
        raise FileNotFoundError(f"{archive} is missing; download it from {URL}")
    raw = common.unpack(archive, base / "raw")
    images = collect_images(raw / TASK, base / "raw-images")
    return common.prepare(images, base / f"prepared-{size}", size=size, modality="ct",
                          window=window, workers=workers)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--window", type=float, nargs=2, default=list(WINDOW), metavar=("LOW", "HIGH"),
                   help=f"HU window mapped to [-1, 1] (default {list(WINDOW)})")
    args = p.parse_args(argv)
    fetch_and_prepare(common.data_dir(args.data_dir), args.size, args.workers,
                      download=not args.skip_download, window=tuple(args.window))
    return 0


if __name__ == "__main__":
    common.run(main)
