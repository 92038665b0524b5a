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
preset = ""  # model preset; empty means the scale default (small64 GPU, demo32 CPU, tiny32 smoke)
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
from hagan import lessons, scaling, teaching, viz
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
# memory grows in proportion to the slab depth: S/16 needs about half of S/8, S/4 about twice,
# and the whole volume (S/1) about eight times. A small part that does not depend on the depth
# (at the slab's edges and in the layers' bookkeeping) makes the measured ratios a little
# smaller than that. The measurement at 64³ (G^H alone, forward and backward):

# %%
size = 64
costs = {f"{r['image_depth']} of {size}": r["saved_mib"] for r in
         (scaling.slab_cost(size, d, width=s.bench_width, device=s.device) for d in (1, 2, 4, 16))}
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

cfg = hagan.preset(s.preset)
p = 1 / (cfg.max_slab_start + 1)
n = math.ceil(math.log(0.01) / math.log(1 - p))
expected = 1 - (1 - p) ** n  # just above 0.99: n is the first count that reaches it
trials = 2000 if smoke else 20000
runs = lessons.draw_slab_starts(cfg, n * trials, seed=seed).reshape(trials, n)
covered = (runs == 0).any(axis=1).mean()
se = math.sqrt(expected * (1 - expected) / trials)  # the simulation's standard error
print(f"S = {cfg.size}: p = 1/{cfg.max_slab_start + 1}, n = {n} iterations, P = {expected:.4f}; "
      f"simulated {covered:.4f} ± {se:.4f} over {trials} runs ({(covered - expected) / se:+.1f} SE)")
assert abs(covered - expected) < 4 * se, "the simulation disagrees with the formula"

# %% [markdown]
# A simulation is itself a random estimate: with $T$ runs its standard error is
# $\sqrt{P(1-P)/T}$, about 0.0007 for 20 000 runs, so a difference of one or two standard errors
# from the formula is expected and more than four would point at a bug (the assert checks it).
#
# At 256³ ($p = 1/225$) the same takes about 1000 iterations — nothing against 80 000, so every
# slice is trained, but the outermost ones much less often than the middle ones.
#
# ## Exercise 3: the largest batch at 256³
#
# Notebook `02` counted one iteration of the paper's networks at batch 4 (saved in
# `memory_counts.json`). Activations grow linearly with the batch; the parameters' gradients in
# the peak do not, so dividing the batch-4 peak by 4 slightly overestimates the cost of one
# volume, and the batch below is on the safe side. On top come the weights, their gradients and
# Adam's two moments for G, D and the encoders: about 80 M parameters × 4 copies × 4 bytes ≈ 1.3 GB.

# %%
import json

counts_path = work / "memory_counts.json"
if not counts_path.is_file():
    raise SystemExit(f"{counts_path} is missing: run notebook 02 first (it counts the memory)")
counts = json.loads(counts_path.read_text())
gpu_gib, fixed_gib = 24, 1.3
batches = {}
for mode in ("naive", "hierarchical"):
    peak = max(r["peak_mib"] for r in counts if r["size"] == 256 and r["mode"] == mode) / 1024
    batches[mode] = int((gpu_gib - fixed_gib) // (peak / 4))
    print(f"{mode:<12}: {peak:.2f} GiB at batch 4 -> about batch {batches[mode]} on {gpu_gib} GB")
assert batches["hierarchical"] > 2 * batches["naive"]  # what the text below says

# %% [markdown]
# The hierarchical step fits more than twice the batch of the naive one at 256³, and the factor
# grows with the size. The count leaves out the allocator's rounding and cuDNN's workspace:
# on a real GPU keep a margin, and check with `torch.cuda.max_memory_allocated`.

# %% [markdown]
# ## Next
#
# Back to `03_training`.
