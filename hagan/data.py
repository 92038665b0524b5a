"""The prepared-dataset format and its PyTorch Dataset.

A prepared dataset is a folder::

    DIR/
      volumes/*.npy   one (S, S, S) float16/float32 array per volume, values in [-1, 1],
                      axis 0 = axial (inferior -> superior), axis 1 = posterior -> anterior,
                      axis 2 = left -> right (RAS+ canonical, transposed to z, y, x)
      manifest.csv    file, label, source, original_shape, original_spacing
      dataset.json    size, modality, intensity window, spacing_mm, label names, ...

Volumes are memory-mapped, so a dataset larger than RAM trains fine.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .config import PathLike
from .errors import DataError

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("file", "label", "source", "original_shape", "original_spacing")


@dataclass
class Record:
    """One row of ``manifest.csv``."""

    file: str
    label: str = ""
    source: str = ""
    original_shape: str = ""
    original_spacing: str = ""


def atomic_save_npy(path: PathLike, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` via a temporary file and ``os.replace`` (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npy.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write a text file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(root: PathLike, records: Sequence[Record]) -> None:
    """Write ``manifest.csv`` atomically."""
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(MANIFEST_COLUMNS)
    for r in records:
        writer.writerow([r.file, r.label, r.source, r.original_shape, r.original_spacing])
    atomic_write_text(Path(root) / "manifest.csv", buf.getvalue())


def read_manifest(root: PathLike) -> list[Record]:
    path = Path(root) / "manifest.csv"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [Record(**{k: (row.get(k) or "") for k in MANIFEST_COLUMNS}) for row in rows]


def write_info(root: PathLike, info: dict[str, Any]) -> None:
    atomic_write_text(Path(root) / "dataset.json", json.dumps(info, indent=2) + "\n")


def read_info(root: PathLike) -> dict[str, Any]:
    path = Path(root) / "dataset.json"
    if not path.is_file():
        raise DataError(
            f"{root} is not a prepared dataset: dataset.json is missing. Make one with "
            "`hagan demo-data DIR` or `hagan preprocess IN DIR`."
        )
    return json.loads(path.read_text())


def safe_volume_path(root: Path, name: str) -> Path:
    """Resolve a manifest file name inside ``root/volumes``; refuse paths that escape it."""
    base = (root / "volumes").resolve()
    path = (base / name).resolve()
    if base not in path.parents:
        raise DataError(f"manifest entry {name!r} points outside {base}; refusing to read it")
    return path


class PreparedDataset(Dataset):
    """Volumes of a prepared dataset as tensors ``(1, S, S, S)`` float32 in [-1, 1].

    Args:
        root: The prepared-dataset folder.
        size: Expected cube size; a mismatch raises :class:`DataError` naming both sizes.
        num_classes: Classes of the model that will consume the data. When > 0, items are
            ``(volume, label)`` and the dataset must carry exactly that many classes.
        augment: Apply on-the-fly TorchIO augmentation (see :func:`augmentation`).

    Raises:
        DataError: the folder, its files or its labels do not match what is expected.
    """

    def __init__(self, root: PathLike, size: int | None = None, num_classes: int = 0,
                 augment: bool = False) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"data folder {self.root} does not exist")
        self.info = read_info(self.root)
        if not (self.root / "manifest.csv").is_file():
            raise DataError(f"{self.root}/manifest.csv is missing; re-run the preparation step")
        self.records = read_manifest(self.root)
        if not self.records:
            raise DataError(f"{self.root} holds no volumes (manifest.csv is empty)")
        self.size = int(self.info.get("size", 0))
        if size is not None and self.size != size:
            raise DataError(
                f"the model expects {size}^3 volumes but {self.root} holds {self.size}^3 volumes; "
                f"use a dataset prepared with --size {size} or a preset of size {self.size}"
            )
        self.paths = [safe_volume_path(self.root, r.file) for r in self.records]
        missing = [str(p) for p in self.paths if not p.is_file()]
        if missing:
            raise DataError(f"{len(missing)} volume file(s) listed in manifest.csv are missing, "
                            f"e.g. {missing[0]}")
        self.num_classes = num_classes
        self.labels: list[int] = []
        if num_classes > 0:
            names = list(self.info.get("label_names", []))
            if len(names) != num_classes:
                raise DataError(
                    f"the model has {num_classes} classes but {self.root} has {len(names)} "
                    f"label names ({names}); set num_classes={len(names)} or relabel the data"
                )
            for r in self.records:
                if r.label == "":
                    raise DataError(f"volume {r.file} has no label in manifest.csv")
                try:
                    idx = int(r.label) if r.label.isdigit() else names.index(r.label)
                except ValueError:
                    raise DataError(f"volume {r.file} has unknown label {r.label!r}; "
                                    f"known labels: {names}") from None
                if not 0 <= idx < num_classes:
                    raise DataError(f"volume {r.file} has label {idx}, outside [0, {num_classes})")
                self.labels.append(idx)
        self.transform = augmentation() if augment else None

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> np.ndarray:
        """The stored (S, S, S) array, memory-mapped."""
        return np.load(self.paths[index], mmap_mode="r")

    def __getitem__(self, index: int):
        array = np.asarray(self.load(index), dtype=np.float32)
        if array.shape != (self.size,) * 3:
            raise DataError(f"{self.paths[index]} has shape {array.shape}, expected "
                            f"{(self.size,) * 3}")
        volume = torch.from_numpy(array.copy())[None]  # (1, S, S, S)
        if self.transform is not None:
            volume = self.transform(volume).clamp_(-1, 1)
        if self.num_classes:
            return volume, self.labels[index]
        return volume


def augmentation():
    """Light TorchIO augmentation for small datasets: left-right flip, small affine, gamma.

    Works on (1, S, S, S) tensors in [-1, 1] with axis 3 = left-right.
    """
    import torchio as tio

    return tio.Compose([
        tio.RandomFlip(axes=(2,), flip_probability=0.5),
        tio.RandomAffine(scales=0.05, degrees=5, translation=2, default_pad_value="minimum", p=0.5),
        tio.RescaleIntensity(out_min_max=(0, 1), in_min_max=(-1, 1)),
        tio.RandomGamma(log_gamma=0.15, p=0.5),
        tio.RescaleIntensity(out_min_max=(-1, 1), in_min_max=(0, 1)),
    ])


class InfiniteSampler(Sampler[int]):
    """Endless shuffled indices that can start at any position, for exact resumption.

    Epoch ``e`` is a permutation drawn from ``seed + e``; the stream is split between DDP ranks
    by striding. ``start`` is the number of indices this rank has already consumed.
    """

    def __init__(self, n: int, seed: int = 0, start: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.n, self.seed, self.start, self.rank, self.world = n, seed, start, rank, world_size

    def __iter__(self) -> Iterator[int]:
        position = self.start * self.world + self.rank  # global position in the shared stream
        cached_epoch, order = -1, np.arange(0)
        while True:
            epoch, offset = divmod(position, self.n)
            if epoch != cached_epoch:
                rng = np.random.default_rng(self.seed + epoch)
                cached_epoch, order = epoch, rng.permutation(self.n)
            yield int(order[offset])
            position += self.world

    def __len__(self) -> int:  # pragma: no cover - endless
        return 2**62
