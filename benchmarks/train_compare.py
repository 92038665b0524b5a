"""One HA-GAN training iteration: the kit against the published code, in the same run.

    python benchmarks/train_compare.py --size 128 --batch-size 2 --official /path/to/HA-GAN
    python benchmarks/train_compare.py --size 256 --batch-size 4 --device cuda \
        --official /path/to/HA-GAN --cases official kit kit-bf16 kit-bf16-cl

``--official`` is a clone of https://github.com/batmanlab/HA-GAN: only its ``models/`` folder is
imported, from that path (nothing of it is copied into the kit). The published iteration is
re-enacted step by step from its ``train.py`` (D, G, E^H, E^G updates; Adam (0, 0.999); BCE and
L1), calling the published modules. On CPU the published discriminator's ``.cuda()`` call is
redirected to the CPU, nothing else is changed.

Each case runs in its own process so that its peak memory is its own. Prints one JSON line per
case with the median seconds per iteration, peak RSS (CPU) or peak CUDA memory (GPU), and the
ratio to the ``official`` case when that ran.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

KIT_CASES = {  # case -> (precision, channels_last, compile)
    "kit": ("fp32", False, False),
    "kit-bf16": ("bf16", False, False),
    "kit-bf16-cl": ("bf16", True, False),
    "kit-bf16-cl-compile": ("bf16", True, True),
    "kit-compile": ("fp32", False, True),
    "kit-bf16-compile": ("bf16", False, True),
    "kit-nommap": ("fp32", False, False),  # run with MALLOC_MMAP_MAX_=0 (see CASE_ENV)
    "kit-batched-d": ("fp32", False, False),  # Config batched_d_step=True (see CASE_CONFIG)
}
# Config fields a case changes on top of the preset (options that deviate from the published step)
CASE_CONFIG = {"kit-batched-d": {"batched_d_step": True}}


def _published_step(official: str, size: int, batch: int, device):
    """Build the published networks and return a closure running one published iteration."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn, optim

    if device.type == "cpu":  # the published D calls .cuda() inside forward
        torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    sys.path.insert(0, official)
    mod = __import__(f"models.Model_HA_GAN_{size}", fromlist=["Generator"])
    torch.manual_seed(0)
    G = mod.Generator(mode="train", latent_dim=1024, num_class=0).to(device)
    D = mod.Discriminator(num_class=0).to(device)
    E = mod.Encoder().to(device)
    SubE = mod.Sub_Encoder(latent_dim=1024).to(device)
    opts = [optim.Adam(n.parameters(), lr=lr, betas=(0.0, 0.999), eps=1e-8)
            for n, lr in ((G, 1e-4), (D, 4e-4), (E, 1e-4), (SubE, 1e-4))]
    opt_g, opt_d, opt_e, opt_s = opts
    bce, l1 = nn.BCEWithLogitsLoss(), nn.L1Loss()
    ones = torch.ones(batch, 1, device=device)
    zeros = torch.zeros(batch, 1, device=device)
    x = torch.rand(batch, 1, size, size, size, device=device) * 2 - 1
    slab = size // 8

    def grads(net, on: bool) -> None:
        for p in net.parameters():
            p.requires_grad = on

    for net in (G, D, E, SubE):
        grads(net, False)

    def step() -> None:
        grads(D, True)
        D.zero_grad()
        x_small = F.interpolate(x, scale_factor=0.25)
        c = np.random.randint(0, size * 7 / 8 + 1)
        x_crop = x[:, :, c:c + slab]
        fake, fake_small = G(torch.randn(batch, 1024, device=device), crop_idx=c)
        d_loss = bce(D(x_crop, x_small, c), ones) + bce(D(fake, fake_small, c), zeros)
        d_loss.backward()
        opt_d.step()
        grads(D, False)
        grads(G, True)
        G.zero_grad()
        fake, fake_small = G(torch.randn(batch, 1024, device=device), crop_idx=c)
        bce(D(fake, fake_small, c), ones).backward()
        opt_g.step()
        grads(G, False)
        grads(E, True)
        E.zero_grad()
        l1(G(E(x_crop), crop_idx=None), x_crop).backward()
        opt_e.step()
        grads(E, False)
        grads(SubE, True)
        SubE.zero_grad()
        with torch.no_grad():
            feats = torch.cat([E(x[:, :, a:a + slab]) for a in range(0, size, slab)], dim=2)
        rec, rec_small = G(SubE(feats), crop_idx=c)
        ((l1(rec, x_crop) + l1(rec_small, x_small)) / 2).backward()
        opt_s.step()
        grads(SubE, False)

    return step


# Environment of a case's process. glibc serves every allocation above 32 MiB with a fresh mmap
# and returns it on free, so each large activation is page-faulted in again, every iteration
# (paper128 batch 2: 37 such maps, 1.8 GB, per iteration, counted with strace). With
# MALLOC_MMAP_MAX_=0 freed memory stays in the heap: faster, but a higher peak RSS.
CASE_ENV = {"kit-nommap": {"MALLOC_MMAP_MAX_": "0"}}


def _kit_step(case: str, size: int, batch: int, device):
    from hagan.bench import train_step

    precision, channels_last, compile_ = KIT_CASES[case]
    step, _ = train_step(f"paper{size}", batch, tempfile.mkdtemp(), str(device), precision,
                         channels_last, compile_)
    if case in CASE_CONFIG:  # Trainer.step reads these fields on every call
        step.trainer.cfg = step.trainer.cfg.replace(**CASE_CONFIG[case])
    return step


def run_case(case: str, size: int, batch: int, device_name: str, official: str | None,
             iters: int, warmup: int) -> dict:
    import torch

    from hagan.bench import peak_rss_gib, time_calls

    device = torch.device(device_name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the published train.py
    step = (_published_step(official, size, batch, device) if case == "official"
            else _kit_step(case, size, batch, device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cpu: list[float] = []  # CPU seconds of this process per call: less sensitive than wall
                           # time to other jobs on a shared machine (CPU only; GPU work is async)

    def timed() -> None:
        t = time.process_time()
        step()
        cpu.append(time.process_time() - t)

    times = time_calls(timed, device, iters, warmup)
    out = {"case": case, "size": size, "batch": batch, "device": device_name,
           "s_per_iter": round(statistics.median(times), 4), "iters": iters,
           "cpu_s_per_iter": round(statistics.median(cpu[warmup:]), 4),
           "peak_rss_gib": round(peak_rss_gib(), 3), "torch": torch.__version__,
           "threads": torch.get_num_threads()}
    if device.type == "cuda":
        out["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, choices=(128, 256), default=128)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--official", help="path to a clone of batmanlab/HA-GAN")
    p.add_argument("--cases", nargs="+", default=["official", "kit"],
                   choices=["official", *KIT_CASES])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1,
                   help="run all cases this many times in turn; report per-round ratios")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_case(args.one, args.size, args.batch_size, args.device, args.official,
                                  args.iters, args.warmup)))
        return 0
    if "official" in args.cases and not args.official:
        p.error("the 'official' case needs --official PATH (a clone of batmanlab/HA-GAN)")
    # Cycle through the cases --rounds times: this 2-core machine's speed drifts by up to 20 %
    # over minutes (its measured matmul peak ranged 0.14-0.20 TFLOP/s in one session), so the
    # ratio is taken within each round, where official and kit ran minutes apart at most.
    ratios: dict[str, list[float]] = {}
    cpu_ratios: dict[str, list[float]] = {}
    for rnd in range(args.rounds):
        base = base_cpu = None
        for case in args.cases:
            cmd = [sys.executable, __file__, "--one", case, "--size", str(args.size),
                   "--batch-size", str(args.batch_size), "--device", args.device, "--iters",
                   str(args.iters), "--warmup", str(args.warmup)] + (
                       ["--official", args.official] if args.official else [])
            env = {**os.environ, **CASE_ENV.get(case, {})}
            proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8",
                                  errors="replace", env=env)
            if proc.returncode != 0:
                print(json.dumps({"case": case, "error": proc.stderr.strip().splitlines()[-1:]}))
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            res["round"] = rnd
            if case == "official":
                base, base_cpu = res["s_per_iter"], res.get("cpu_s_per_iter")
            elif base:
                res["speedup_vs_official"] = round(base / res["s_per_iter"], 3)
                ratios.setdefault(case, []).append(res["speedup_vs_official"])
                if base_cpu and res.get("cpu_s_per_iter"):
                    res["cpu_speedup_vs_official"] = round(base_cpu / res["cpu_s_per_iter"], 3)
                    cpu_ratios.setdefault(case, []).append(res["cpu_speedup_vs_official"])
            print(json.dumps(res), flush=True)
    if args.rounds > 1:
        for case, values in ratios.items():
            print(json.dumps({"case": case, "rounds": len(values),
                              "speedup_median": round(statistics.median(values), 3),
                              "speedup_min": min(values), "speedup_max": max(values)}))
        for case, values in cpu_ratios.items():
            print(json.dumps({"case": case, "rounds": len(values),
                              "cpu_speedup_median": round(statistics.median(values), 3),
                              "cpu_speedup_min": min(values), "cpu_speedup_max": max(values)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
