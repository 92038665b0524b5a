"""The cost of one generator update as the cube grows: a naive step (G makes and D judges the
whole S^3 volume) against HA-GAN's hierarchical step (the (S/4)^3 image plus one S/8 slab).

Activation memory is measured as the bytes autograd saves for backward (any device), plus the
CUDA peak on a GPU; time is wall-clock seconds. Used by notebook 02 and
``benchmarks/scaling_curve.py``; :func:`hagan.viz.plot_step_costs` draws the records.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from .config import FEATURE_STRIDE, SLAB_FRACTION, Config
from .models import Discriminator, Generator, HighResHead
from .slab import low_res, slab_position

MIB = 2**20
PAPER_LATENT_DIM = 1024  # length of z in the published networks


def slab_cost(size: int, feature_depth: int, width: float = 0.125, batch: int = 1,
              device: str | torch.device = "cpu") -> dict[str, Any]:
    """Activation memory and time of the high-res head G^H alone on a feature slab.

    A feature slab ``feature_depth`` deep becomes an image slab 4x deeper, so
    ``feature_depth = S/32`` is HA-GAN's S/8 slab and ``feature_depth = S/4`` the whole volume.
    Forward and backward of ``G^H`` with an L1 loss; returns ``image_depth``, ``saved_mib``
    and ``seconds``.
    """
    cfg = Config(size=size, width=width, latent_dim=8)
    dev = torch.device(device)
    head = HighResHead(cfg).to(dev)
    side = size // FEATURE_STRIDE  # trunk features live at S/4
    features = torch.randn(batch, cfg.channels(64), feature_depth, side, side,
                           device=dev, requires_grad=True)
    meter = SavedTensorMeter(list(head.parameters()))
    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t):
        slab = head(features)  # (B, 1, 4 * feature_depth, S, S)
    slab.abs().mean().backward()
    return {"size": size, "image_depth": int(slab.shape[2]), "saved_mib": meter.nbytes / MIB,
            "seconds": time.perf_counter() - t0}


class SavedTensorMeter:
    """Counts the bytes autograd saves for backward (unique storages, parameters excluded)."""

    def __init__(self, params: Iterable[torch.Tensor]) -> None:
        self.skip = {p.untyped_storage().data_ptr() for p in params}
        self.seen: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.skip:
            self.seen[ptr] = storage.nbytes()
        return t

    @property
    def nbytes(self) -> int:
        return sum(self.seen.values())


def _naive_loss(G: Generator, D: Discriminator, z: torch.Tensor, cfg: Config
                ) -> torch.Tensor:
    """Generator loss when the whole full-resolution volume is generated and judged."""
    B, S, d = z.shape[0], cfg.size, cfg.slab_depth
    volume = G.generate(z)  # (B, 1, S, S, S): every voxel at full resolution, with gradients
    slabs = volume.reshape(B, 1, SLAB_FRACTION, d, S, S).transpose(1, 2)  # (B, 8, 1, d, S, S)
    slabs = slabs.reshape(B * SLAB_FRACTION, 1, d, S, S)  # D^H judges all 8 slabs at once
    starts = torch.arange(SLAB_FRACTION, dtype=torch.float32) * d
    position = torch.as_tensor(slab_position(starts, S)).repeat(B).to(z.device)  # c/(7S/8), (8B,)
    logit_h, _ = D.high_res(slabs, position)  # (8B, 1)
    assert D.low_res is not None, "the naive step needs D^L"
    logit_l, _ = D.low_res(low_res(volume))  # (B, 1)
    logit = (logit_h.view(B, SLAB_FRACTION).mean(1, keepdim=True) + logit_l) / 2
    return F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))


def _hierarchical_loss(G: Generator, D: Discriminator, z: torch.Tensor, cfg: Config
                       ) -> torch.Tensor:
    """Generator loss of HA-GAN: the low-res whole image plus one full-resolution slab."""
    c = cfg.max_slab_start // 2
    slab, low = G(z, c)  # (B, 1, S/8, S, S), (B, 1, S/4, S/4, S/4)
    logit, _ = D(slab, low, c)
    return F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))


def step_cost(size: int, mode: str, width: float = 0.125, latent_dim: int | None = None,
              batch: int = 1, device: str | torch.device = "cpu", repeats: int = 1
              ) -> dict[str, Any]:
    """Memory and time of one generator update (forward through G and D, backward) at ``size``.

    Args:
        size: Cube edge S.
        mode: ``naive`` (G makes the whole S^3 volume, D judges all of it) or ``hierarchical``
            (G makes the (S/4)^3 image and one S/8-deep slab, as HA-GAN trains).
        width: Network width multiplier (1.0: the paper's networks).
        latent_dim: Latent length; default ``1024 * width`` (the paper's 1024 at width 1).
        batch: Volumes per step.
        device: Where to run.
        repeats: Timed repetitions (the median is reported; the first call also warms up).

    Returns:
        ``size``, ``mode``, ``saved_mib`` (bytes autograd keeps for backward: activation memory,
        the part that grows with S^3), ``peak_mib`` (CUDA only: peak allocated during the step
        above what was allocated before it; None on CPU) and ``seconds``.
    """
    if mode not in ("naive", "hierarchical"):
        raise ValueError(f"mode must be 'naive' or 'hierarchical', not {mode!r}")
    dev = torch.device(device)
    latent_dim = latent_dim or max(8, int(PAPER_LATENT_DIM * width))
    cfg = Config(size=size, width=width, latent_dim=latent_dim)
    torch.manual_seed(0)
    G, D = Generator(cfg).to(dev), Discriminator(cfg).to(dev)
    z = torch.randn(batch, latent_dim, device=dev)
    loss_fn = _naive_loss if mode == "naive" else _hierarchical_loss
    meter = SavedTensorMeter(list(G.parameters()) + list(D.parameters()))
    times, peak = [], None
    for _ in range(max(repeats, 1)):
        G.zero_grad(set_to_none=True)
        D.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            before = torch.cuda.memory_allocated(dev)
        t0 = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t):
            loss = loss_fn(G, D, z, cfg)
        loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            peak = (torch.cuda.max_memory_allocated(dev) - before) / MIB
        times.append(time.perf_counter() - t0)
    return {"size": size, "mode": mode, "saved_mib": meter.nbytes / MIB, "peak_mib": peak,
            "seconds": statistics.median(times), "width": width, "batch": batch,
            "device": str(dev), "status": "ok"}


def _memory_limit_mib(device: torch.device) -> float:
    """Half the free memory of the device: the most a measured step may be predicted to use."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 2 / MIB
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            info = dict(line.split(":", 1) for line in fh)
        return int(info["MemAvailable"].split()[0]) * 1024 / 2 / MIB
    except (OSError, KeyError, ValueError):
        return 2048.0  # unknown: assume a small machine (Binder gives 2 GB)


def compare_steps(sizes: list[int], width: float = 0.125, latent_dim: int | None = None,
                  batch: int = 1,
                  device: str | torch.device = "cpu", repeats: int = 1) -> list[dict[str, Any]]:
    """:func:`step_cost` of both modes at growing sizes, printing one line per measurement.

    Before each size, the memory is predicted from the previous size (activations grow like S^3,
    i.e. x8 per doubling); a step predicted to need more than half the free memory is skipped
    and recorded as such, and a CUDA out-of-memory error is recorded instead of raised.
    """
    dev = torch.device(device)
    limit = _memory_limit_mib(dev)
    results: list[dict[str, Any]] = []
    last: dict[str, dict[str, Any]] = {}
    for size in sorted(sizes):
        for mode in ("naive", "hierarchical"):
            prev = last.get(mode)
            predicted = prev["saved_mib"] * (size / prev["size"]) ** 3 if prev else 0.0
            if predicted > limit:
                rec = {"size": size, "mode": mode, "saved_mib": None, "peak_mib": None,
                       "seconds": None, "status": f"skipped: predicted {predicted:.0f} MiB > "
                                                  f"limit {limit:.0f} MiB"}
            else:
                try:
                    rec = step_cost(size, mode, width, latent_dim, batch, dev, repeats)
                    last[mode] = rec
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    rec = {"size": size, "mode": mode, "saved_mib": None, "peak_mib": None,
                           "seconds": None, "status": "out of memory"}
            results.append(rec)
            print(format_cost(rec))
    return results


def format_cost(rec: dict[str, Any]) -> str:
    """One line of a :func:`step_cost` record."""
    head = f"{rec['size']:>4}^3 {rec['mode']:<12}"
    if rec["status"] != "ok":
        return f"{head} {rec['status']}"
    peak = f", CUDA peak {rec['peak_mib']:8.1f} MiB" if rec.get("peak_mib") is not None else ""
    return f"{head} saved for backward {rec['saved_mib']:8.1f} MiB{peak}, {rec['seconds']:.3f} s"
