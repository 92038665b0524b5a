"""Slab sampling, in one place: HA-GAN's sub-volume selection (Sun et al., JBHI 2022, Sec. III-A).

Each training iteration draws one slab start ``c`` and uses it four ways:

* the real slab ``x[:, :, c:c + S/8]`` (:func:`crop_slab`), what D^H judges against G^H's slab;
* the feature slab ``h[:, :, c//4:c//4 + S/32]`` of the trunk's (S/4)^3 features
  (:func:`crop_feature_slab`), what G^H turns into the generated slab;
* the position ``c / (7S/8)`` in [0, 1] (:func:`slab_position`), which D^H reads beside the slab;
* and the whole image at 1/4 resolution (:func:`low_res`), what D^L judges.

``c`` is uniform on {0, ..., 7S/8} like the published ``train.py``
(``np.random.randint(0, S*7/8 + 1)``); with ``align=True`` (Config ``align_slabs``) only
multiples of 4, so that the real slab and the generated slab cover the same voxels (the
published code crops the features at ``c // 4``, up to 3 voxels from the real slab).

The constants are :data:`hagan.config.FEATURE_STRIDE` (4) and :data:`hagan.config.SLAB_FRACTION`
(8). Volumes are cubes (B, C, S, S, S), so every depth here follows from the tensor's shape.
"""

from __future__ import annotations

import torch

from .config import FEATURE_STRIDE, SLAB_FRACTION


def slab_depth(size: int) -> int:
    """Depth of a training slab in image voxels: S/8."""
    return size // SLAB_FRACTION


def max_slab_start(size: int) -> int:
    """Largest slab start: 7S/8 (the slab then ends at the last slice)."""
    return size - slab_depth(size)


def draw_slab_start(size: int, generator: torch.Generator | None = None,
                    align: bool = False) -> int:
    """One slab start ``c`` ~ U{0, ..., 7S/8}; U{0, 4, ..., 7S/8} when ``align``.

    Args:
        size: Edge S of the cubic volume (a multiple of 32).
        generator: Source of randomness (the trainer's own); None uses torch's global one.
        align: Draw multiples of FEATURE_STRIDE only (Config ``align_slabs``).

    Returns:
        ``c`` as a Python int in [0, 7S/8].
    """
    return int(draw_slab_starts(size, 1, generator, align)[0])


def draw_slab_starts(size: int, n: int, generator: torch.Generator | None = None,
                     align: bool = False) -> torch.Tensor:
    """``n`` independent slab starts (int64 tensor (n,)), drawn like :func:`draw_slab_start`.

    With the same generator state, ``draw_slab_starts(S, 1, g)[0]`` is the start the trainer draws.
    """
    top = max_slab_start(size)
    if align:
        steps = torch.randint(0, top // FEATURE_STRIDE + 1, (n,), generator=generator)
        return steps * FEATURE_STRIDE
    return torch.randint(0, top + 1, (n,), generator=generator)


def crop_slab(x: torch.Tensor, c: int) -> torch.Tensor:
    """The real slab: x (B, C, S, S, S) -> x[:, :, c:c + S/8] (B, C, S/8, S, S), a view."""
    return x[:, :, c:c + slab_depth(x.shape[-1])]


def crop_feature_slab(h: torch.Tensor, c: int) -> torch.Tensor:
    """The feature slab under slab start ``c`` (image voxels): h (B, C, S/4, S/4, S/4) ->
    h[:, :, c//4:c//4 + S/32] (B, C, S/32, S/4, S/4), a view. Published: ``crop_idx//4``."""
    start = int(c) // FEATURE_STRIDE
    return h[:, :, start:start + h.shape[-1] // SLAB_FRACTION]


def slab_position(c: int | float | torch.Tensor, size: int) -> torch.Tensor | float:
    """D^H's position input: c / (7S/8) in [0, 1] (published: ``crop_idx / 112.`` at 128^3)."""
    return c / max_slab_start(size)


def low_res(x: torch.Tensor) -> torch.Tensor:
    """The whole image at 1/4 resolution, nearest: x (B, C, S, S, S) -> (B, C, S/4, S/4, S/4).

    Equal to the published ``F.interpolate(x, scale_factor=0.25)`` (nearest picks voxel 4i).
    """
    s = FEATURE_STRIDE
    return x[:, :, ::s, ::s, ::s]


def slab_starts(size: int) -> range:
    """Starts of the 8 non-overlapping slabs that tile a volume: 0, S/8, ..., 7S/8."""
    return range(0, size, slab_depth(size))
