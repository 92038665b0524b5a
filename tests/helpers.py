"""Small builders shared by the tests (nothing is downloaded)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from hagan.data import Record, write_info, write_manifest
from hagan.fileio import atomic_save_npy

REPO = Path(__file__).resolve().parents[1]


def blob_volume(shape: tuple[int, int, int] = (20, 24, 16), seed: int = 0) -> np.ndarray:
    """A smooth ellipsoid 'head' (values ~100..900) on a zero background, float32 (x, y, z)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius = np.sqrt(sum((g / 0.7) ** 2 for g in grids))
    volume = np.where(radius < 1, 500 + 400 * (1 - radius), 0.0)
    volume += np.where(radius < 1, rng.normal(0, 10, shape), 0.0)
    return volume.astype(np.float32)


def make_random_dataset(root: Path, n: int = 4, size: int = 32, seed: int = 0,
                        labels: list[str] | None = None) -> Path:
    """A prepared dataset of smooth random blobs in [-1, 1] (fast, deterministic)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij"))
    records = []
    for i in range(n):
        centre = rng.uniform(-0.3, 0.3, size=(3, 1, 1, 1))
        radius = rng.uniform(0.4, 0.7)
        vol = np.where(((grid - centre) ** 2).sum(0) < radius**2, 0.5, -1.0)
        vol = vol + rng.normal(0, 0.05, vol.shape)
        name = f"vol_{i:03d}.npy"
        atomic_save_npy(root / "volumes" / name, np.clip(vol, -1, 1).astype(np.float16))
        records.append(Record(file=name, label=labels[i % len(labels)] if labels else "",
                              source="synthetic"))
    write_manifest(root, records)
    write_info(root, {"size": size, "modality": "synthetic", "spacing_mm": [1.0, 1.0, 1.0],
                      "label_names": sorted(set(labels)) if labels else []})
    return root


def run_cli(*args: str, timeout: float = 600, check: bool = False,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m hagan ARGS``; on an unexpected failure the message shows the output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
    cmd = [sys.executable, "-m", "hagan", *args]
    # decoded as UTF-8 whatever the locale (SimpleITK can switch this process's locale)
    proc = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace",
                          timeout=timeout, env=env,
                          cwd=cwd or REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc
