"""Medical Segmentation Decathlon, Task01 brain tumour (484 + 266 multi-parametric MRI) -> dataset.

Source:  http://medicaldecathlon.com/ (Simpson et al., 2019, arXiv:1902.09063; the images come
         from BraTS 2016/2017); archive mirrored by the MONAI project at
         https://msd-for-monai.s3-us-west-2.amazonaws.com/Task01_BrainTumour.tar (~7.1 GB)
Licence: Creative Commons CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/).
Checksum: md5 240a19d752f0d9e9101544901065d872 (as listed by MONAI's DecathlonDataset).

Each image is a 4D NIfTI holding four MRI sequences (0 FLAIR, 1 T1w, 2 T1gd, 3 T2w), which HA-GAN
cannot use as one volume: this script first writes the chosen sequence (default T1gd) of every
training and test image as its own 3D file in ``raw-<sequence>/`` and then prepares those with
``hagan preprocess --modality mri``. ``--labels tumour-size`` adds a two-class label (tumour volume
below/above the median, from ``labelsTr``) for the conditional model.

Usage::

    python data_scripts/msd_brain_tumour.py --size 128 --sequence T1gd
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

NAME = "msd_brain_tumour"
TASK = "Task01_BrainTumour"
URL = f"https://msd-for-monai.s3-us-west-2.amazonaws.com/{TASK}.tar"
CHECKSUM = "md5:240a19d752f0d9e9101544901065d872"
SEQUENCES = {"FLAIR": 0, "T1w": 1, "T1gd": 2, "T2w": 3}  # channel order of the task's dataset.json


def split_sequence(task_dir: Path, out: Path, sequence: str) -> Path:
    """Write channel ``sequence`` of every 4D image in imagesTr/imagesTs as a 3D NIfTI in
    ``out``."""
    channel = SEQUENCES[sequence]
    out.mkdir(parents=True, exist_ok=True)
    for part in ("imagesTr", "imagesTs"):
        for path in sorted((task_dir / part).glob("*.nii.gz")):
            if path.name.startswith("._"):  # macOS metadata files shipped in the MSD tars
                continue
            target = out / path.name
            if target.is_file():
                continue
            image = nib.load(path)
            volume = np.asarray(image.dataobj[..., channel], dtype=np.float32)
            tmp = target.with_name(".tmp-" + target.name)
            nib.save(nib.Nifti1Image(volume, image.affine), tmp)
            tmp.replace(target)
    return out


def tumour_size_labels(task_dir: Path, images: Path, dest: Path) -> Path:
    """labels.csv: 'small' / 'large' tumour (voxel count below / above the median, training set)."""
    sizes = {}
    for path in sorted((task_dir / "labelsTr").glob("*.nii.gz")):
        if not path.name.startswith("._") and (images / path.name).is_file():
            sizes[path.name] = int(np.count_nonzero(np.asarray(nib.load(path).dataobj)))
    median = float(np.median(list(sizes.values())))
    rows = "".join(f"{n},{'large' if v > median else 'small'}\n" for n, v in sizes.items())
    dest.write_text("file,label\n" + rows, encoding="utf-8")
    return dest


def fetch_and_prepare(root: Path, size: int = 128, workers: int = 1, download: bool = True,
                      sequence: str = "T1gd", labels: str | None = None):
    """Download, unpack, split out one MRI sequence and prepare it under
    ``root/msd_brain_tumour``."""
    if sequence not in SEQUENCES:
        raise ValueError(f"Expected --sequence one of {list(SEQUENCES)}, found {sequence!r}.")
    base = root / NAME
    archive = base / "downloads" / f"{TASK}.tar"
    if download:
        common.download(URL, archive, CHECKSUM)
    elif not archive.is_file():
        raise FileNotFoundError(f"{archive} is missing; download it from {URL}")
    raw = common.unpack(archive, base / "raw")
    images = split_sequence(raw / TASK, base / f"raw-{sequence}", sequence)
    label_csv = None
    if labels == "tumour-size":
        # only the training images have segmentations: prepare those alone
        train = base / f"raw-{sequence}-train"
        train.mkdir(exist_ok=True)
        for path in sorted((raw / TASK / "labelsTr").glob("*.nii.gz")):
            if (images / path.name).is_file() and not (train / path.name).exists():
                shutil.copy2(images / path.name, train / path.name)
        label_csv = tumour_size_labels(raw / TASK, train, base / "labels-tumour-size.csv")
        images = train
    suffix = f"{sequence}-{size}" + ("-labelled" if label_csv else "")
    return common.prepare(images, base / f"prepared-{suffix}", size=size, modality="mri",
                          labels=label_csv, workers=workers)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--sequence", default="T1gd", choices=list(SEQUENCES),
                   help="which MRI sequence to keep (default T1gd)")
    p.add_argument("--labels", choices=["tumour-size"], help="add a two-class label")
    args = p.parse_args(argv)
    fetch_and_prepare(common.data_dir(args.data_dir), args.size, args.workers,
                      download=not args.skip_download, sequence=args.sequence, labels=args.labels)
    return 0


if __name__ == "__main__":
    common.run(main)
