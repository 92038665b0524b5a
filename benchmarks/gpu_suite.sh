#!/usr/bin/env bash
# Every GPU benchmark of benchmarks/RESULTS.md in one call (run from the repository root on a
# CUDA machine with the kit installed): paper256 batch 4 training in fp32 / bf16 /
# bf16 + channels-last / bf16 + channels-last + torch.compile, paper256 batch 2 memory, and
# full-volume generation. Prints one JSON line per configuration.
set -euo pipefail
run() { python benchmarks/train_step.py --device cuda --iters 5 --warmup 2 "$@"; }
run --preset paper256 --batch 4 --precision fp32
run --preset paper256 --batch 4 --precision bf16
run --preset paper256 --batch 4 --precision bf16 --channels-last
run --preset paper256 --batch 4 --precision bf16 --channels-last --compile
run --preset paper256 --batch 2 --precision bf16 --channels-last
python -m hagan bench --mode generate --preset paper256 --device cuda --iters 5
python -m hagan bench --mode generate --preset paper256 --device cuda --iters 5 --precision bf16
