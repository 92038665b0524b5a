# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Solutions · 07 Scaling up
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/hagan-kit/hagan-kit/blob/main/notebooks/solutions/07_scaling_up_solutions.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/hagan-kit/hagan-kit/HEAD?labpath=notebooks%2Fsolutions%2F07_scaling_up_solutions.ipynb)
#
# Worked answers to the exercises of notebook `07`. Try them yourself first.
#
# **You will learn** how data-parallel ranks share the data, how much bf16 changes a generated
# volume, and what the importer says about a file that does not fit.

# %% tags=["parameters"]
work_dir = ""  # shared work dir; empty means $HAGAN_WORK_DIR, else ~/hagan-work
smoke = False  # True: tiny settings that run in seconds on a CPU (CI)
scale = "auto"  # auto (gpu with CUDA, else cpu), smoke, cpu or gpu: the sizes used below
preset = ""  # model preset; empty means the scale default (small64 GPU, demo32 CPU, tiny32 smoke)
n_subjects = 0  # demo cohort size, if it has to be made; 0 means the scale default
iterations = 0  # training iterations if a model is missing; 0 means the scale default
device = "auto"  # auto, cpu or cuda
seed = 0

# %%
import subprocess
import sys

if "google.colab" in sys.modules:  # on Colab: install the kit first (skipped everywhere else)
    KIT = "hagan-kit @ git+https://github.com/hagan-kit/hagan-kit@v0.1.0"  # pinned release
    if subprocess.run([sys.executable, "-m", "pip", "install", "-q", KIT]).returncode:
        raise SystemExit(f"could not install {KIT} (pip's message is above); rerun this cell")
import hagan
from hagan import teaching
from hagan.runtime import print_env

print_env()  # versions, CPU threads and the GPU, if any
teaching.seed_everything(seed)
work = teaching.work_dir(work_dir)
s = teaching.settings(smoke, scale, device, seed, preset=preset, n_subjects=n_subjects,
                      iterations=iterations)

# %% [markdown]
# ## Exercise 1: who gets which volume?
#
# Each epoch is one seeded permutation of the dataset; rank r of W processes takes positions
# r, r + W, r + 2W, … of that stream. The ranks never read the same volume in the same step, and
# one optimisation step sees W × `batch_size` volumes: the effective batch.

# %%
from itertools import islice

from hagan.data import InfiniteSampler

n, world, batch = 8, 2, 2
for rank in range(world):
    sampler = InfiniteSampler(n, seed=seed, rank=rank, world_size=world)
    stream = list(islice(iter(sampler), 3 * batch))
    print(f"rank {rank}: batches {[stream[i:i + batch] for i in range(0, len(stream), batch)]}")
print(f"effective batch: {world} processes x {batch} = {world * batch} volumes per step")

# %% [markdown]
# ## Exercise 2: how much does bf16 change a volume?
#
# bfloat16 keeps 8 bits of mantissa, a relative precision of about 0.4 %; through a deep network
# the errors add up to differences of the order of 1 % of the intensity range, far below what
# separates two samples.

# %%
from hagan.checkpoint import load_models
from hagan.generate import sample

data = teaching.ensure_demo(work, s)
_, nets = load_models(teaching.ensure_run(work, s, data), device=s.device)
full, half = (sample(nets["G"], 1, seed=seed, device=s.device, precision=p)
              for p in ("fp32", "bf16"))
other = sample(nets["G"], 1, seed=seed + 1, device=s.device)
print(f"fp32 vs bf16, same z:   max |diff| {(full - half).abs().max():.4f}, "
      f"mean {(full - half).abs().mean():.5f}")
print(f"two different z (fp32): mean |diff| {(full - other).abs().mean():.4f}")

# %% [markdown]
# ## Exercise 3: a file that does not fit
#
# The 128³ and 256³ sub-encoders differ by one stride-2 layer, so a 128³ file cannot load into a
# 256³ network. The importer compares every name and shape before loading and says what it found,
# including which `--size` would load the file.

# %%
import torch

from hagan.checkpoint import CheckpointError
from hagan.models import SubEncoder
from hagan.official import load_official, to_official_state_dict

path = work / "official" / "Sub_E_iter80000.pth"
path.parent.mkdir(exist_ok=True)
sub_encoder = SubEncoder(hagan.preset("paper128"))
torch.save({"model": {f"module.{k}": v for k, v in
                      to_official_state_dict(sub_encoder, "SubE", 128).items()}}, path)
try:
    load_official(256, generator=None, sub_encoder=path)
except CheckpointError as exc:
    print(f"CheckpointError: {exc}")
print("as 128^3:", type(load_official(128, generator=None, sub_encoder=path).sub_encoder).__name__)
path.unlink()

# %% [markdown]
# ## Next
#
# You have finished the course notebooks; `docs/teaching.md` has the course plan.
