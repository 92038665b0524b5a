"""Shared fixtures: tiny synthetic volumes on disk and a temporary work folder (no downloads)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import blob_volume


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    """An empty scratch folder for one test."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def make_nifti(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_nifti(name, array=None, spacing=(1, 1, 1), folder=None) -> path``.

    Writes a NIfTI file (``.nii`` or ``.nii.gz``, from the name) with a diagonal RAS affine; the
    default array is :func:`blob_volume`.
    """
    import nibabel as nib

    def make(name: str = "vol.nii.gz", array: np.ndarray | None = None,
             spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
             folder: Path | None = None, seed: int = 0) -> Path:
        folder = folder or tmp_path / "nifti"
        folder.mkdir(parents=True, exist_ok=True)
        data = blob_volume(seed=seed) if array is None else array
        path = folder / name
        nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), path)
        return path

    return make
