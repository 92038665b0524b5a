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
# # Solutions · 02 The hierarchical idea
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/hagan-kit/hagan-kit/blob/main/notebooks/solutions/02_the_hierarchical_idea_solutions.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/hagan-kit/hagan-kit/HEAD?labpath=notebooks%2Fsolutions%2F02_the_hierarchical_idea_solutions.ipynb)
#
# Worked answers to the exercises of notebook `02`. Try them yourself first.
#
# **You will learn** to predict memory from the slab depth, to reason about slab coverage with a
# little probability, and to extrapolate a measurement to the paper's 256³ setting.

# %% tags=["parameters"]
work_dir = ""  # shared work dir; empty means $HAGAN_WORK_DIR, else ~/hagan-work
smoke = False  # True: tiny settings that run in seconds on a CPU (CI)
scale = "auto"  # auto (gpu with CUDA, else cpu), smoke, cpu or gpu: the sizes used below
preset = ""  # model preset; empty means the scale default (small64 GPU, tiny32 CPU)
device = "auto"  # auto, cpu or cuda
seed = 0

# %%
import subprocess
import sys

if "google.colab" in sys.modules:  # on Colab: install the kit first (skipped everywhere else)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "hagan-kit @ git+https://github.com/hagan-kit/hagan-kit"], check=True)
import hagan
from hagan import teaching, viz
from hagan.runtime import print_env

print_env()  # versions, CPU threads and the GPU, if any
teaching.seed_everything(seed)
work = teaching.work_dir(work_dir)
figures = work / "figures"
s = teaching.settings(smoke, scale, device, seed, preset=preset)

# %% [markdown]
# ## Exercise 1: slab depth
#
# Every activation of G^H is a full-resolution (or half-resolution) map over the slab, so its
# memory is proportional to the slab depth: S/16 needs half of S/8, S/4 twice, and the whole
# volume (S/1) eight times. The measurement at 64³ (G^H alone, forward and backward):

# %%
size = 64
costs = {f"{r['image_depth']} of {size}": r["saved_mib"] for r in
         (teaching.slab_cost(size, d, width=s.bench_width, device=s.device) for d in (1, 2, 4, 16))}
for name, mib in costs.items():
    print(f"slab depth {name:>8}: {mib:7.2f} MiB saved for backward")
fig = viz.plot_bars(costs, title=f"G^H activation memory vs slab depth ({size}^3)",
                    ylabel="MiB saved for backward", xlabel="image slab depth (axial slices)")
teaching.show(fig, figures / "sol02_slab_depth.png")

# %% [markdown]
# ## Exercise 2: coverage of the bottom slice
#
# Slice 0 is inside the slab only when $c = 0$, which has probability $p = 1/(7S/8 + 1)$ per
# iteration. After $n$ iterations it has never been covered with probability $(1-p)^n$, so
# $n \ge \ln 0.01 / \ln(1 - p)$ gives 99 %:

# %%
import math

import numpy as np

cfg = hagan.preset(s.preset)
p = 1 / (cfg.max_slab_start + 1)
n = math.ceil(math.log(0.01) / math.log(1 - p))
trials = 300 if smoke else 2000
covered = np.mean([0 in teaching.draw_slab_starts(cfg, n, seed=t) for t in range(trials)])
print(f"S = {cfg.size}: p = 1/{cfg.max_slab_start + 1}, n = {n} iterations; "
      f"simulated: slice 0 covered in {covered:.1%} of {trials} runs of {n} iterations")

# %% [markdown]
# At 256³ ($p = 1/225$) the same takes about 1000 iterations — nothing against 80 000, so every
# slice is trained, but the outermost ones much less often than the middle ones.
#
# ## Exercise 3: extrapolate to 256³
#
# Activation memory grows like $S^3$ (8× per doubling), roughly linearly with the width and with
# the batch size. From the largest size measured in notebook `02` (measured here, small, if that
# file is missing):

# %%
import json

path = work / "step_costs.json"
if path.is_file():
    costs = json.loads(path.read_text())
else:
    costs = teaching.compare_steps([32, 64], width=s.bench_width, device=s.device)
for mode in ("naive", "hierarchical"):
    ok = [r for r in costs if r["mode"] == mode and r["status"] == "ok"]
    r = max(ok, key=lambda r: r["size"])
    gib = r["saved_mib"] / 1024 * (256 / r["size"]) ** 3 / r["width"] * 4  # width 1, batch 4
    print(f"{mode:<12}: {r['saved_mib']:.1f} MiB at {r['size']}^3, width {r['width']:g}, batch 1 "
          f"-> about {gib:.0f} GiB at 256^3, width 1, batch 4")

# %% [markdown]
# Compare both with your GPU's memory, remembering what comes on top of the activations:
# weights, gradients and Adam's two moments (80 M parameters × 4 copies × 4 bytes ≈ 1.3 GB), the
# D step, and the framework's workspace. The estimate is rough: channel counts are rounded to
# multiples of 8 at small widths, and layers of fixed size (the trunk's 4³ start) do not grow.

# %% [markdown]
# ## Next
#
# Back to `03_training`.
