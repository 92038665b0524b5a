"""Benchmarks: one training iteration or one full-volume generation, on synthetic volumes.

Like nanoGPT's ``bench.py``, this is a short sibling of ``train.py``: it calls the trainer's own
``Trainer.step`` on fixed random volumes, so what is timed is exactly what training runs.
Prints one JSON line::

    {"mode": "train", "preset": "paper128", "batch": 2, "device": "cpu", "precision": "fp32",
     "s_per_iter": ..., "peak_rss_gib": ..., "flops_per_iter": ..., "tflops": ..., ...}

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix
products, forward and backward) on one extra iteration.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import time

import torch

from .config import preset
from .runtime import autocast_context, resolve_device


def peak_rss_gib() -> float:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class RandomVolumes(torch.utils.data.Dataset):
    """Fixed random volumes in [-1, 1] (no disk I/O), for benchmarks."""

    def __init__(self, size: int, n: int = 4, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.data = torch.rand(n, 1, size, size, size, generator=g) * 2 - 1

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.data[i]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, device: torch.device, iters: int, warmup: int) -> list[float]:
    """Seconds of each of ``iters`` calls of ``fn`` after ``warmup`` untimed ones (GPU synced)."""
    times = []
    for i in range(warmup + iters):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def train_step(preset_name: str, batch: int, run_dir: str, device: str = "cpu",
               precision: str = "fp32", channels_last: bool = False, compile: bool = False):
    """A zero-argument callable running one ``Trainer.step`` of the preset on fixed random
    volumes (B, 1, S, S, S), and its device. The callable's ``trainer`` attribute is the
    :class:`~hagan.train.Trainer`. Nothing is written to ``run_dir``."""
    from .train import Trainer

    cfg = preset(preset_name, batch_size=batch, device=device, precision=precision,
                 channels_last=channels_last, compile=compile, tensorboard=False, progress=False)
    tr = Trainer(cfg, run_dir, dataset=RandomVolumes(cfg.size, n=batch), resume=False)
    mf = torch.channels_last_3d if channels_last else torch.preserve_format
    x = RandomVolumes(cfg.size, n=batch).data.to(tr.device).contiguous(memory_format=mf)
    def step() -> dict[str, torch.Tensor]:
        return tr.step(x)

    step.trainer = tr  # type: ignore[attr-defined]
    return step, tr.device


def bench_train(preset_name: str, batch: int, device: str = "cpu", iters: int = 3,
                warmup: int = 1, precision: str = "fp32", channels_last: bool = False,
                compile: bool = False, count_flops: bool = True) -> dict:
    """Median seconds per training iteration, peak memory and achieved FLOP/s."""
    with tempfile.TemporaryDirectory() as tmp:
        step, dev = train_step(preset_name, batch, tmp, device, precision, channels_last, compile)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        times = time_calls(step, dev, iters, warmup)
        flops = _count(step) if count_flops else None
    return _result("train", preset_name, batch, dev, precision, times, flops,
                   channels_last=channels_last, compile=compile)


@torch.inference_mode()
def bench_generate(preset_name: str, device: str = "cpu", iters: int = 3, warmup: int = 1,
                   precision: str = "fp32", count_flops: bool = True,
                   chunk: int | None = 16) -> dict:
    """Median seconds to generate one full volume (batch 1) and peak memory.

    ``chunk`` is passed to ``Generator.generate`` (None: one pass, as the published code).
    """
    from .models import Generator

    cfg = preset(preset_name, device=device)
    dev = resolve_device(device)
    torch.manual_seed(0)
    G = Generator(cfg).to(dev).eval()
    z = torch.randn(1, cfg.latent_dim, device=dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def run() -> None:
        with autocast_context(dev.type, precision):
            G.generate(z, chunk=chunk)

    times = time_calls(run, dev, iters, warmup)
    flops = _count(lambda: G.generate(z, chunk=chunk)) if count_flops else None
    return _result("generate", preset_name, 1, dev, precision, times, flops, chunk=chunk)


PEAK_MATMUL_N = 4096  # side of the square matmul that measures the machine's peak FLOP/s


@torch.inference_mode()
def measured_peak_tflops(device: torch.device, precision: str = "fp32", iters: int = 10) -> float:
    """This machine's practical peak: TFLOP/s of a large square matmul in ``precision``.

    The ceiling that a convolution network can at best approach; 2 N^3 FLOPs per product. The
    fastest of ``iters`` products counts: a shared machine's speed drifts (the project's 2-core
    CPU measured 0.14-0.20 TFLOP/s fp32 within one hour), and a median taken in a slow moment
    once put a training step at 103 % of "peak".
    """
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    n = PEAK_MATMUL_N if device.type == "cuda" else PEAK_MATMUL_N // 2
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    s = min(time_calls(lambda: a @ b, device, iters, warmup=1))
    return 2 * n**3 / s / 1e12


def _count(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _result(mode, preset_name, batch, dev, precision, times, flops, **extra) -> dict:
    s = statistics.median(times)
    out = {
        "mode": mode, "preset": preset_name, "batch": batch, "device": str(dev),
        "precision": precision, **extra,
        "s_per_iter": round(s, 4), "iters": len(times),
        "peak_rss_gib": round(peak_rss_gib(), 3),
        "flops_per_iter": flops,
        "tflops": round(flops / s / 1e12, 4) if flops else None,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    if flops:
        peak = measured_peak_tflops(dev, precision)
        out["matmul_peak_tflops"] = round(peak, 3)
        out["fraction_of_peak"] = round(flops / s / 1e12 / peak, 3)
    if dev.type == "cuda":
        out["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 3)
        out["gpu"] = torch.cuda.get_device_name(dev)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=("train", "generate"), default="train")
    p.add_argument("--preset", default="tiny32", help="model preset (default tiny32)")
    p.add_argument("--batch", type=int, default=2, help="batch size for --mode train")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--iters", type=int, default=3, help="timed iterations (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up iterations")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    p.add_argument("--chunk", type=int, default=16,
                   help="--mode generate: G^H feature slices at a time (0: one pass)")


def main(args: argparse.Namespace) -> int:
    if args.mode == "train":
        res = bench_train(args.preset, args.batch, args.device, args.iters, args.warmup,
                          args.precision, args.channels_last, args.compile, not args.no_flops)
    else:
        res = bench_generate(args.preset, args.device, args.iters, args.warmup, args.precision,
                             not args.no_flops, args.chunk or None)
    print(json.dumps(res))
    return 0
