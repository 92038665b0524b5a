"""Where one training iteration spends its time: per phase (D, G, E^H, E^G) and per operator.

    python benchmarks/profile_step.py --preset paper128 --batch-size 2 --device cpu
    python benchmarks/profile_step.py --preset paper256 --batch-size 4 --device cuda \
        --precision bf16

Runs ``Trainer.step`` (through ``hagan.bench.train_step``, so exactly what training runs) on
fixed random volumes: ``--warmup`` untimed iterations, then ``--iters`` timed ones split into the
four phases (each phase ends when its optimizer step returns; the GPU is synchronised there), then
one iteration under ``torch.profiler``. Prints JSON lines: one per phase (median milliseconds and
share of the iteration), then the ``--top`` operators by self time on the device (CUDA time on a
GPU, CPU time otherwise) with their input shapes. ``--trace FILE`` also writes a Chrome trace
(open it in chrome://tracing or https://ui.perfetto.dev).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hagan.bench import train_step  # noqa: E402
from hagan.config import PRECISIONS  # noqa: E402

PHASES = ("D", "G", "E", "SubE")


def phase_times(step, trainer, device: torch.device, iters: int) -> dict[str, list[float]]:
    """Milliseconds of each phase in each of ``iters`` iterations."""
    marks: list[tuple[str, float]] = []
    update = trainer._update

    def timed_update(name: str, loss: torch.Tensor) -> None:
        update(name, loss)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        marks.append((name, time.perf_counter()))

    trainer._update = timed_update
    out: dict[str, list[float]] = {p: [] for p in PHASES}
    try:
        for _ in range(iters):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            marks.clear()
            start = time.perf_counter()
            step()
            for name, t in marks:
                out[name].append((t - start) * 1e3)
                start = t
    finally:
        trainer._update = update
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="paper128")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--iters", type=int, default=3, help="timed iterations for the phase split")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--top", type=int, default=25, help="operators to list")
    p.add_argument("--trace", type=Path, help="also write a Chrome trace of the profiled step")
    args = p.parse_args(argv)
    if args.trace is not None and args.trace.exists():
        p.error(f"--trace {args.trace} exists; pick a new file name (nothing is overwritten)")

    with tempfile.TemporaryDirectory() as tmp:
        step, device = train_step(args.preset, args.batch_size, tmp, args.device, args.precision,
                                  args.channels_last)
        trainer = step.trainer
        for _ in range(args.warmup):
            step()
        per_phase = phase_times(step, trainer, device, args.iters)
        total = sum(statistics.median(v) for v in per_phase.values())
        for name, values in per_phase.items():
            ms = statistics.median(values)
            print(json.dumps({"phase": name, "ms": round(ms, 2),
                              "share": round(ms / total, 3), "iters": len(values)}))

        on_gpu = device.type == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
        with profile(activities=activities, record_shapes=True) as prof:
            step()
            if on_gpu:
                torch.cuda.synchronize(device)
    key = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    events = [e for e in prof.key_averages(group_by_input_shape=True) if getattr(e, key) > 0]
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    profiled = sum(getattr(e, key) for e in events)
    for e in events[:args.top]:
        print(json.dumps({"op": e.key, "calls": e.count, "self_ms": round(getattr(e, key) / 1e3, 2),
                          "share": round(getattr(e, key) / profiled, 3),
                          "shapes": str(e.input_shapes)[:160]}))
    if args.trace is not None:
        prof.export_chrome_trace(str(args.trace))
        print(json.dumps({"trace": str(args.trace)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
