"""Benchmarks: one training iteration or one full-volume generation, on synthetic volumes.

Like nanoGPT's ``bench.py``, this is a short sibling of ``train.py``: it calls the trainer's own
``Trainer.step`` on fixed random volumes, so what is timed is exactly what training runs.
``hagan bench`` prints a short table; ``hagan bench --json`` prints one JSON line instead::

    {"mode": "train", "preset": "paper128", "batch_size": 2, "device": "cpu",
     "precision": "fp32", "s_per_iter": ..., "peak_rss_gib": ..., "flops_per_iter": ...,
     "tflops": ..., ...}

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

from .cliargs import non_negative_int, positive_int
from .config import PRECISIONS, preset
from .runtime import DTYPES, autocast_context, resolve_device


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


def train_step(preset_name: str, batch_size: int, run_dir: str, device: str = "auto",
               precision: str = "fp32", channels_last: bool = False, compile: bool = False):
    """A zero-argument callable running one ``Trainer.step`` of the preset on fixed random
    volumes (B, 1, S, S, S), and its device. The callable's ``trainer`` attribute is the
    :class:`~hagan.train.Trainer`. Nothing is written to ``run_dir``."""
    from .train import Trainer

    # one Trainer.step at a time, never the loop: no checkpoint is scored (keep_best_from=0)
    cfg = preset(preset_name, batch_size=batch_size, device=device, precision=precision,
                 channels_last=channels_last, compile=compile, tensorboard=False, progress=False,
                 keep_best_from=0)
    tr = Trainer(cfg, run_dir, dataset=RandomVolumes(cfg.size, n=batch_size), resume=False)
    mf = torch.channels_last_3d if channels_last else torch.preserve_format
    x = RandomVolumes(cfg.size, n=batch_size).data.to(tr.device).contiguous(memory_format=mf)
    def step() -> dict[str, torch.Tensor]:
        return tr.step(x)

    step.trainer = tr  # type: ignore[attr-defined]
    return step, tr.device


def bench_train(preset_name: str, batch_size: int, device: str = "auto", iters: int = 3,
                warmup: int = 1, precision: str = "fp32", channels_last: bool = False,
                compile: bool = False, count_flops: bool = True) -> dict:
    """Median seconds per training iteration, peak memory and achieved FLOP/s (unrounded;
    :func:`format_result` rounds for display)."""
    with tempfile.TemporaryDirectory() as tmp:
        step, dev = train_step(preset_name, batch_size, tmp, device, precision, channels_last,
                               compile)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        times = time_calls(step, dev, iters, warmup)
        flops = _count(step) if count_flops else None
    return _result("train", preset_name, batch_size, dev, precision, times, flops,
                   channels_last=channels_last, compile=compile)


@torch.inference_mode()
def bench_generate(preset_name: str, device: str = "auto", iters: int = 3, warmup: int = 1,
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
    fastest of ``iters`` products counts, not the median: a shared machine's speed drifts, and a
    median taken in a slow moment can put a training step above 100 % of "peak" (see
    benchmarks/RESULTS.md).
    """
    dtype = DTYPES[precision] or torch.float32
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


def _result(mode, preset_name, batch_size, dev, precision, times, flops, **extra) -> dict:
    s = statistics.median(times)
    out = {
        "mode": mode, "preset": preset_name, "batch_size": batch_size, "device": str(dev),
        "precision": precision, **extra,
        "s_per_iter": s, "iters": len(times),
        "s_fastest": min(times), "s_slowest": max(times),  # the spread around the median
        "peak_rss_gib": peak_rss_gib(),
        "flops_per_iter": flops,
        "tflops": flops / s / 1e12 if flops else None,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    if flops:
        peak = measured_peak_tflops(dev, precision)
        out["matmul_peak_tflops"] = peak
        out["fraction_of_peak"] = flops / s / 1e12 / peak
    if dev.type == "cuda":
        out["peak_cuda_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        out["gpu"] = torch.cuda.get_device_name(dev)
    return out


def format_result(res: dict) -> str:
    """A result of :func:`bench_train` / :func:`bench_generate` as a short human-readable table.

    Example:
        >>> print(format_result({"mode": "generate", "preset": "tiny32", "batch_size": 1,
        ...     "device": "cpu", "precision": "fp32", "s_per_iter": 0.0123, "iters": 3,
        ...     "peak_rss_gib": 0.51, "flops_per_iter": None, "tflops": None, "torch": "2.x",
        ...     "threads": 2, "machine": "x86_64", "chunk": 16}))
        hagan bench: generate one volume, preset tiny32, batch size 1, cpu, fp32, chunk 16
          time per volume      12.3 ms (median of 3)
          peak memory          0.51 GiB resident
          machine              x86_64, 2 threads, torch 2.x
    """
    unit = "iteration" if res["mode"] == "train" else "volume"
    what = "one training iteration" if res["mode"] == "train" else "generate one volume"
    extras = [f"{k.replace('_', ' ')}" for k in ("channels_last", "compile") if res.get(k)]
    if "chunk" in res:
        extras.append(f"chunk {res['chunk']}" if res["chunk"] else "one pass")
    head = (f"hagan bench: {what}, preset {res['preset']}, batch size {res['batch_size']}, "
            f"{res['device']}, {res['precision']}")
    rows = [(f"time per {unit}", f"{_duration(res['s_per_iter'])} (median of {res['iters']})")]
    if res.get("flops_per_iter"):
        rows.append((f"FLOPs per {unit}", f"{res['flops_per_iter'] / 1e9:.3g} GFLOP"))
        rows.append(("achieved", f"{res['tflops']:.3g} TFLOP/s = "
                                 f"{res['fraction_of_peak']:.1%} of this machine's matmul peak "
                                 f"({res['matmul_peak_tflops']:.3g} TFLOP/s)"))
    memory = f"{res['peak_rss_gib']:.2f} GiB resident"
    if "peak_cuda_gib" in res:
        memory += f", {res['peak_cuda_gib']:.2f} GiB CUDA ({res['gpu']})"
    rows.append(("peak memory", memory))
    rows.append(("machine", f"{res['machine']}, {res['threads']} threads, torch {res['torch']}"))
    return "\n".join([", ".join([head, *extras])]
                     + [f"  {name:<20} {value}" for name, value in rows])


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=("train", "generate"), default="train",
                   help="time one training iteration or one full-volume generation "
                        "(default train)")
    p.add_argument("--preset", default="tiny32", help="model preset (default tiny32)")
    p.add_argument("--batch-size", type=positive_int, default=2,
                   help="volumes per iteration for --mode train (default 2)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--iters", type=positive_int, default=3,
                   help="timed iterations, the median is reported (default 3)")
    p.add_argument("--warmup", type=non_negative_int, default=1,
                   help="untimed warm-up iterations (default 1)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="autocast precision (default fp32)")
    p.add_argument("--channels-last", action="store_true",
                   help="channels-last 3D memory format (helps on GPU)")
    p.add_argument("--compile", action="store_true", help="wrap the networks in torch.compile")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    p.add_argument("--chunk", type=non_negative_int, default=16,
                   help="--mode generate: G^H feature slices at a time (0: one pass)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON line (unrounded numbers) instead of the table")


def main(args: argparse.Namespace) -> int:
    if args.mode == "train":
        res = bench_train(args.preset, args.batch_size, args.device, args.iters, args.warmup,
                          args.precision, args.channels_last, args.compile, not args.no_flops)
    else:
        res = bench_generate(args.preset, args.device, args.iters, args.warmup, args.precision,
                             not args.no_flops, args.chunk or None)
    print(json.dumps(res) if args.json else format_result(res))
    return 0


# --- activation memory, counted from shapes (notebook 02) ---------------------------------------
MIB = 2**20


class _LiveStorages:
    """Follows every tensor storage created while :attr:`mode` is active: the bytes alive now
    and the most alive at once. A storage counts once however many views share it, and stops
    counting when Python and autograd both let it go (a weak reference's callback)."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves
        from torch.utils.weak import WeakIdKeyDictionary

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_leaves(out):
                    if isinstance(t, torch.Tensor):
                        tracker.add(t)
                return out

        self.mode = _Mode()
        self.known: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.live = 0
        self.peak = 0

    def add(self, t: torch.Tensor) -> None:
        import weakref

        storage = t.untyped_storage()
        if storage in self.known:  # a view, or an in-place result: no new memory
            return
        nbytes = storage.nbytes()
        self.known[storage] = nbytes
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, nbytes)

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes


def activation_memory(step, params=()) -> dict[str, float]:
    """Exact tensor memory of ``step()`` (a forward and backward pass), counted, not measured.

    Run ``step`` on networks and inputs built on the ``meta`` device and nothing is allocated:
    every operation still computes its output's shape, so a 256^3 paper-width iteration is
    counted in a second on any laptop. On real tensors the same count comes out (a check).

    Args:
        step: A callable running forward and backward (e.g. one G update without the optimizer).
        params: The networks' parameters: excluded from the saved-tensor count (they are memory
            before and after the step, not activations).

    Returns:
        ``saved_mib``: the bytes autograd keeps for backward at the end of the forward pass (the
        activations; unique storages, parameters excluded). ``peak_mib``: the most bytes of
        tensors created during the step alive at one time (activations, their gradients,
        temporaries and the parameters' gradients). Neither counts the parameters themselves,
        optimizer state, allocator rounding or library workspaces (cuDNN), which a GPU's
        ``max_memory_allocated`` adds.
    """
    skip = {id(p.untyped_storage()) for p in params}  # parameters stay alive: ids stay unique
    saved: dict[int, int] = {}
    live = _LiveStorages()

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if id(storage) not in skip:
            saved[id(storage)] = storage.nbytes()  # saved tensors live until backward
        return t

    with live.mode, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return {"saved_mib": sum(saved.values()) / MIB, "peak_mib": live.peak / MIB}


def cuda_peak_mib(step, device: torch.device) -> float:
    """Measured: peak CUDA memory allocated by ``step()`` above what was allocated before it."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / MIB
