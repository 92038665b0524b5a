#!/usr/bin/env bash
# Every GPU check of benchmarks/RESULTS.md in one call, from the repository root on a CUDA machine:
#   OFFICIAL=/path/to/HA-GAN OUT=results/ bash benchmarks/gpu_suite.sh
# 1. the GPU tests (tests/test_gpu.py), 2. paper256 batch 4 training: the published code against
# the kit in fp32 / bf16 / bf16 + channels-last / + torch.compile, 3. paper256 batch 2 memory,
# 4. full-volume generation, 5. a profile of one bf16 paper256 batch-4 iteration (per phase and
# top CUDA kernels; Chrome trace in $OUT), 6. torch.compile. JSON lines go to stdout and to
# $OUT/gpu_suite.jsonl.
# The kit only needs torch here (PYTHONPATH=.); OFFICIAL is a clone of batmanlab/HA-GAN.
set -uo pipefail
OUT=${OUT:-.}
OFFICIAL=${OFFICIAL:-.official}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
log() { tee -a "$OUT/gpu_suite.jsonl"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | log
python3 -c "import torch; print({'torch': torch.__version__, 'cuda': torch.version.cuda})" | log
python3 -m pytest tests/test_gpu.py -m gpu -q -p no:cacheprovider 2>&1 | tail -15 | log
cmp() { python3 benchmarks/train_compare.py --device cuda --official "$OFFICIAL" "$@" | log; }
cmp --size 256 --batch-size 4 --iters 10 --warmup 3 --cases official kit kit-bf16 kit-bf16-cl
cmp --size 256 --batch-size 2 --iters 5 --warmup 2 --cases official kit kit-bf16 kit-bf16-cl
gen() { python3 -m hagan bench --mode generate --preset paper256 --device cuda --iters 5 --json "$@" | log; }
gen --precision fp32 --chunk 0
gen --precision fp32
gen --precision bf16
python3 benchmarks/profile_step.py --preset paper256 --batch-size 4 --device cuda --precision bf16 \
    --iters 5 --warmup 3 --top 30 --trace "$OUT/profile_paper256_b4_bf16_$(date +%s).json" | log
cmp --size 256 --batch-size 4 --iters 10 --warmup 3 --cases kit-bf16-cl-compile
