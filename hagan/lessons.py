"""Helpers of notebook 02's lessons: the shapes of one pass, slab sampling and coverage, and
parameter counts. (The cost measurements are in :mod:`hagan.scaling`; notebook 03's ablation
without D^L is the config option ``low_res_critic=False``.)
"""

from __future__ import annotations

import numpy as np
import torch

from . import slab
from .config import FEATURE_STRIDE, Config, preset
from .models import Discriminator, Generator, build_models, count_parameters


def trace_shapes(cfg: Config, batch: int = 1, slab_start: int = 0
                 ) -> list[tuple[str, tuple[int, ...]]]:
    """(stage, shape) of every tensor of one training pass and one inference pass of ``cfg``."""
    with torch.device("meta"):  # shapes only: no memory, no compute, any size (even 256^3)
        G, D = Generator(cfg).eval(), Discriminator(cfg).eval()
    with torch.no_grad():
        z = torch.zeros(batch, cfg.latent_dim, device="meta")
        features = G.features(z)
        slab, low = G(z, slab_start)
        logit, _ = D(slab, low, slab_start)
        start = slab_start // FEATURE_STRIDE
        volume = G.generate(z)
    d = cfg.feature_slab_depth
    return [
        ("z (latent)", tuple(z.shape)),
        ("G^A trunk: features", tuple(features.shape)),
        ("G^L low-res head: whole image at 1/4", tuple(low.shape)),
        (f"feature slab [{start}:{start + d}] (depth S/32)", (batch, features.shape[1], d,
                                                            *features.shape[3:])),
        ("G^H high-res head: image slab (depth S/8)", tuple(slab.shape)),
        ("D = (D^H + D^L)/2: logit", tuple(logit.shape)),
        ("inference: G^H on all features = full volume", tuple(volume.shape)),
    ]


def draw_slab_starts(cfg: Config, iterations: int, seed: int = 0) -> np.ndarray:
    """Slab starts c ~ U{0, ..., 7S/8} (multiples of 4 with ``cfg.align_slabs``) for
    ``iterations`` iterations, drawn like the trainer (:func:`hagan.slab.draw_slab_starts`)."""
    gen = torch.Generator().manual_seed(seed)
    return slab.draw_slab_starts(cfg.size, iterations, gen, cfg.align_slabs).numpy()


def slab_coverage(starts: np.ndarray, size: int, depth: int) -> np.ndarray:
    """How many times each axial slice 0..S-1 fell inside a slab, (S,) int."""
    cover = np.zeros(size, dtype=int)
    for c in starts:
        cover[int(c):int(c) + depth] += 1
    return cover


def parameter_table(presets: tuple[str, ...] = ("tiny32", "demo32", "small64", "paper128",
                                                "paper256")
                    ) -> list[tuple[str, int, dict[str, float]]]:
    """(preset, size, {network: millions of parameters}) for each preset (counted on the meta
    device, so even the paper's networks cost nothing to count)."""
    rows = []
    for name in presets:
        cfg = preset(name)
        with torch.device("meta"):
            nets = build_models(cfg)
        rows.append((name, cfg.size, {k: count_parameters(v) / 1e6 for k, v in nets.items()}))
    return rows
