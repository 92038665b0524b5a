"""Differentiable augmentation that the discriminator sees (DiffAugment for HA-GAN's inputs).

A GAN trained on a few dozen volumes collapses: D memorises the training set within a few hundred
iterations and G's best answer is one volume that D currently rates as real. Augmenting only the
real volumes does not help (G then learns to produce the augmentations). DiffAugment (Zhao et
al., "Differentiable Augmentation for Data-Efficient GAN Training", NeurIPS 2020) applies the
*same kind* of random, differentiable transform to every input of D, real and generated, in both
the D and the G step; gradients flow through the transform back to G.

HA-GAN's D judges a pair: the full-resolution slab (B, 1, S/8, S, S) and the whole volume at 1/4
resolution (B, 1, S/4, S/4, S/4). Both views of one volume get the same transform, so that they
still show the same volume:

* ``color``: intensity offset U(-0.2, 0.2) and contrast U(0.7, 1.3) about the volume's mean;
* ``translation``: an in-plane (y, x) shift of a multiple of 4 voxels, up to S/8 (the low-res view
  moves by a quarter of it), the uncovered border filled with background (-1);
* ``cutout``: an in-plane square of side S/4 (a multiple of 4 voxels) set to background in both
  views.

Off by default (``Config.d_augment``): the paper's recipe has no augmentation of D's inputs.
"""

from __future__ import annotations

import torch

POLICIES = ("color", "translation", "cutout")
BACKGROUND = -1.0  # intensity of air / outside the body in the kit's [-1, 1] convention
STRIDE = 4  # image voxels per low-res voxel (the low-res view is x at 1/4 resolution)


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift (..., H, W) by (dy, dx) voxels, filling the uncovered border with background."""
    out = torch.full_like(x, BACKGROUND)
    h, w = x.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = x[..., ys, xs]
    return out


def diff_augment(slab: torch.Tensor, low: torch.Tensor, generator: torch.Generator,
                 policy: tuple[str, ...] = POLICIES) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one random transform per volume to D's two views, differentiably.

    Args:
        slab: Full-resolution slabs (B, 1, S/8, S, S).
        low: The same volumes at 1/4 resolution (B, 1, S/4, S/4, S/4).
        generator: CPU generator the random draws come from (the caller seeds it).
        policy: Which of :data:`POLICIES` to apply, in that order.

    Returns:
        ``(slab, low)`` with the same shapes; gradients flow to both inputs.
    """
    unknown = set(policy) - set(POLICIES)
    if unknown:
        raise ValueError(f"unknown augmentation {sorted(unknown)}; known: {POLICIES}")
    B, size = slab.shape[0], slab.shape[-1]
    if "color" in policy:
        offset = (torch.rand(B, generator=generator) * 0.4 - 0.2).to(slab)
        contrast = (torch.rand(B, generator=generator) * 0.6 + 0.7).to(slab)
        mean = low.mean(dim=(1, 2, 3, 4))  # one mean per volume, from its whole low-res view
        view = (B, 1, 1, 1, 1)
        slab = (slab - mean.view(view)) * contrast.view(view) + (mean + offset).view(view)
        low = (low - mean.view(view)) * contrast.view(view) + (mean + offset).view(view)
    if "translation" in policy:
        steps = max(size // 8 // STRIDE, 1)  # shifts of up to S/8 in multiples of 4 voxels
        shifts = torch.randint(-steps, steps + 1, (B, 2), generator=generator) * STRIDE
        slab = torch.stack([_shift(slab[i], int(dy), int(dx)) for i, (dy, dx) in
                            enumerate(shifts.tolist())])
        low = torch.stack([_shift(low[i], int(dy) // STRIDE, int(dx) // STRIDE) for i, (dy, dx)
                           in enumerate(shifts.tolist())])
    if "cutout" in policy:
        side = max(size // 4, STRIDE)
        starts = torch.randint(0, (size - side) // STRIDE + 1, (B, 2), generator=generator)
        mask_hi = torch.ones(B, 1, 1, size, size, dtype=slab.dtype, device=slab.device)
        mask_lo = torch.ones(B, 1, 1, size // STRIDE, size // STRIDE, dtype=low.dtype,
                             device=low.device)
        for i, (y, x) in enumerate(starts.tolist()):
            mask_hi[i, ..., y * STRIDE:y * STRIDE + side, x * STRIDE:x * STRIDE + side] = 0
            mask_lo[i, ..., y:y + side // STRIDE, x:x + side // STRIDE] = 0
        slab = slab * mask_hi + BACKGROUND * (1 - mask_hi)
        low = low * mask_lo + BACKGROUND * (1 - mask_lo)
    return slab, low
