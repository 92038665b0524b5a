"""A tiny chest-CT phantom made in code, in Hounsfield units (HU), for tests and teaching.

The phantom is a torso cross-section extruded along the body axis: air outside, a layer of
subcutaneous fat, soft tissue, two lungs, a mediastinum between them, the spine behind and a ring
of ribs. Values follow the usual CT scale (air -1000, lung ~-850, fat ~-100, soft tissue ~40,
bone 700..1000 HU), so that windowing (e.g. [-1024, 600] HU, the HA-GAN default) can be shown on
it. It can be written as NIfTI, MHA, NRRD or a DICOM series with correct orientation, so that a
round trip through ``hagan preprocess`` gives back the same anatomy the same way up.

Array convention (as everywhere in hagan-kit): axis 0 = z, inferior -> superior; axis 1 = y,
posterior -> anterior; axis 2 = x, patient left ... right in RAS terms (index 0 at the patient's
left, increasing towards the right).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .config import PathLike, Shape3D

HU_AIR = -1000.0
HU_LUNG = -850.0  # aerated lung parenchyma
HU_FAT = -100.0
HU_SOFT_TISSUE = 40.0  # muscle, mediastinum
HU_BONE = (700.0, 1000.0)  # cortical bone range: spine brighter than ribs
NOISE_HU = 10.0  # quantum noise std in soft tissue (typical low-dose CT: 10..20 HU)
RIB_PITCH_MM, RIB_THICKNESS_MM = 25.0, 10.0  # a rib every 25 mm along the body axis, 10 mm thick
FAT_LAYER = 0.1  # subcutaneous fat thickness as a fraction of the body radius


def _ellipse(y: np.ndarray, x: np.ndarray, cy: float, cx: float, ry: float, rx: float):
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def ct_phantom(shape: Shape3D = (64, 96, 96), spacing: tuple[float, float, float] = (2.5, 1.5, 1.5),
               seed: int = 0) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A synthetic chest CT volume in HU.

    Args:
        shape: ``(D, H, W)`` = (z, y, x) voxels; each at least 8.
        spacing: Voxel size in mm along (z, y, x).
        seed: Seed of the noise and the small random variations of organ size.

    Returns:
        ``(volume, spacing)``: ``volume`` is (D, H, W) float32 in HU (about -1000 .. 1000) with
        axes (z: inferior->superior, y: posterior->anterior, x: left->right); ``spacing`` is
        the (z, y, x) voxel size in mm, as passed in.

    Raises:
        ValueError: a shape below 8 voxels or a non-positive spacing.

    Example:
        >>> volume, spacing = ct_phantom((16, 32, 32))
        >>> volume.shape, bool(volume.min() < -900 and volume.max() > 600)
        ((16, 32, 32), True)
    """
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"Expected a 3D shape with every side >= 8, found {shape}.")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"Expected three positive spacings in mm, found {spacing}.")
    rng = np.random.default_rng(seed)
    depth, height, width = shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = (y + 0.5) / height * 2 - 1, (x + 0.5) / width * 2 - 1  # in-plane coordinates, [-1, 1]
    body_ry, body_rx = 0.62 * rng.uniform(0.95, 1.05), 0.88 * rng.uniform(0.95, 1.05)
    body = _ellipse(y, x, 0, 0, body_ry, body_rx)
    inner = _ellipse(y, x, 0, 0, body_ry * (1 - FAT_LAYER), body_rx * (1 - FAT_LAYER))
    spine = _ellipse(y, x, -0.42, 0, 0.13, 0.1)  # posterior midline (y < 0 is posterior)
    ribs = body & ~_ellipse(y, x, 0, 0, body_ry * 0.84, body_rx * 0.86) & \
        _ellipse(y, x, 0, 0, body_ry * 0.88, body_rx * 0.9)
    volume = np.empty(shape, dtype=np.float32)
    for k in range(depth):
        t = (k + 0.5) / depth  # 0 at the bottom slice, 1 at the top
        lung_size = np.sin(np.pi * min(1.0, 0.15 + t)) * 0.95  # lungs taper at the apex
        slab = np.full((height, width), HU_AIR, dtype=np.float32)
        slab[body] = HU_FAT
        slab[inner] = HU_SOFT_TISSUE
        for side in (-1, 1):  # left and right lung, with the mediastinum between them
            slab[_ellipse(y, x, 0.05, side * 0.42, 0.42 * lung_size, 0.3 * lung_size)] = HU_LUNG
        slab[spine] = HU_BONE[1]
        if (k * spacing[0]) % RIB_PITCH_MM < RIB_THICKNESS_MM:
            slab[ribs] = HU_BONE[0]
        volume[k] = slab
    volume += np.where(volume > HU_AIR, rng.normal(0, NOISE_HU, shape), 0).astype(np.float32)
    return volume, tuple(float(s) for s in spacing)  # type: ignore[return-value]


def _to_sitk(volume: np.ndarray, spacing: tuple[float, float, float]):
    """A SimpleITK image whose voxel (z, y, x) sits at the RAS position described above."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(volume)  # numpy (z, y, x) -> ITK index (x, y, z)
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    # ITK's physical space is LPS: index x points to the patient's right (-L) and y to the
    # front (-P), so the direction matrix is diag(-1, -1, 1)
    image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    return image


def write_volume(path: PathLike, volume: np.ndarray,
                 spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Path:
    """Write a (z, y, x) HU volume as NIfTI, MHA/MHD or NRRD (chosen by the suffix), or as a
    DICOM series when ``path`` has no suffix (a folder of ``slice_NNNN.dcm``).

    Args:
        path: ``*.nii``, ``*.nii.gz``, ``*.mha``, ``*.mhd``, ``*.nrrd`` or a folder name.
        volume: (D, H, W) array in HU, axes (z, y, x) as in :func:`ct_phantom`.
        spacing: (z, y, x) voxel size in mm.

    Returns:
        The path written (the folder for DICOM).
    """
    import SimpleITK as sitk

    path = Path(path)
    if path.suffix == "":
        return write_dicom_series(path, volume, spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(_to_sitk(np.asarray(volume, dtype=np.float32), spacing), str(path))
    return path


def write_dicom_series(folder: PathLike, volume: np.ndarray,
                       spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                       modality: str = "CT", positions: Sequence[float] | None = None,
                       series: int = 1) -> Path:
    """Write a (z, y, x) HU volume as a DICOM series: one signed int16 file per axial slice.

    Stored values are HU rounded to integers (slope 1, intercept 0); position, orientation,
    spacing and instance number are set per slice, so any DICOM reader rebuilds the volume.

    Args:
        positions: z position in mm of each slice (default ``k * spacing[0]``); other values
            make faulty series for tests (a gap, a slice far away, uneven steps).
        series: Series number; series of the same volume with different numbers get
            different SeriesInstanceUIDs (several series in one folder). Files are named
            ``s<series>_slice_NNNN.dcm`` when ``series`` != 1.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stored = np.clip(np.round(np.asarray(volume)), -32768, 32767)
    image = _to_sitk(stored.astype(np.int16), spacing)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125." + str(zlib.crc32(stored.tobytes()))  # deterministic
    if positions is not None and len(positions) != image.GetDepth():
        raise ValueError(f"positions: expected {image.GetDepth()} values (one per slice), "
                         f"found {len(positions)}")
    prefix = "" if series == 1 else f"s{series}_"
    direction = image.GetDirection()
    orientation = "\\".join(str(v) for v in (direction[0], direction[3], direction[6],
                                             direction[1], direction[4], direction[7]))
    for k in range(image.GetDepth()):
        slab = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        if positions is not None:
            position = (position[0], position[1], float(positions[k]))
        tags = {
            "0008|0060": modality, "0020|000d": uid + ".1",
            "0020|000e": uid + ".2" + ("" if series == 1 else f".{series}"),
            "0020|0011": str(series),
            "0020|0032": "\\".join(f"{p:.4f}" for p in position), "0020|0037": orientation,
            "0020|0013": str(k + 1), "0018|0050": f"{spacing[0]:.4f}",
            "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL", "0010|0010": "PHANTOM^HAGAN",
        }
        for key, value in tags.items():
            slab.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{prefix}slice_{k:04d}.dcm"))
        writer.Execute(slab)
    return folder
