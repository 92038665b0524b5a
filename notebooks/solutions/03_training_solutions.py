# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Solutions · 03 Training HA-GAN
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/hagan-kit/hagan-kit/blob/main/notebooks/solutions/03_training_solutions.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/hagan-kit/hagan-kit/HEAD?labpath=notebooks%2Fsolutions%2F03_training_solutions.ipynb)
#
# Worked answers to the exercises of notebook `03`. Try them yourself first. Each exercise
# trains a short run of its own (half the iterations of notebook `03`).
#
# **You will learn** what the low-resolution anchor does, how resuming continues a run exactly,
# and how the learning-rate balance between D and G shows in the losses.

# %% tags=["parameters"]
work_dir = ""  # shared work dir; empty means $HAGAN_WORK_DIR, else ~/hagan-work
smoke = False  # True: tiny settings that run in seconds on a CPU (CI)
scale = "auto"  # auto (gpu with CUDA, else cpu), smoke, cpu or gpu: the sizes used below
preset = ""  # model preset; empty means the scale default (small64 GPU, demo32 CPU, tiny32 smoke)
n_subjects = 0  # demo cohort size, if it has to be made; 0 means the scale default
iterations = 0  # iterations of notebook 03; 0 means the scale default (exercises use half)
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
from hagan import teaching, viz
from hagan.runtime import print_env

print_env()  # versions, CPU threads and the GPU, if any
teaching.seed_everything(seed)
work = teaching.work_dir(work_dir)
figures = work / "figures"
s = teaching.settings(smoke, scale, device, seed, preset=preset, n_subjects=n_subjects,
                      iterations=iterations)

# %% [markdown]
# The exercises share one short configuration: half the iterations of notebook `03`, at most
# 300 (three runs have to fit in a class), with the paper's learning rates G 1e-4, D 4e-4 (the
# CPU presets change them: `tiny32` G 4e-4, `demo32` both 2e-4).

# %%
data = teaching.ensure_demo(work, s)
short = max(min(s.iterations // 2, 300), 10)
cfg = hagan.preset(s.preset, data=str(data), iterations=short, seed=seed, lr_g=1e-4,
                   lr_d=4e-4, device=s.device.type, tensorboard=False, checkpoint_every=short)

# %% [markdown]
# ## Exercise 1: break the low-resolution anchor
#
# Without D^L, nothing judges the whole image: the low-resolution head G^L never receives a
# gradient (its weights keep their initial values), and the slabs of one volume are judged one
# at a time, so nothing makes them agree with each other. We train both variants for the same
# number of iterations and compare what G^L makes, and the full volumes.

# %%
from hagan.train import train

anchored = work / f"exercise_anchored_{s.preset}"
train(cfg, anchored)
no_anchor = work / f"exercise_no_anchor_{s.preset}"
_ = train(cfg.replace(low_res_critic=False), no_anchor)  # D^L left out: D = D^H / 2

# %%
import torch

from hagan.checkpoint import load_models
from hagan.models import Generator

G_anchor, G_free = (load_models(run, device=s.device)[1]["G"] for run in (anchored, no_anchor))
z = torch.randn(1, cfg.latent_dim, generator=torch.Generator().manual_seed(seed)).to(s.device)
with torch.no_grad():
    lows = [G(z, 0)[1][0].cpu() for G in (G_anchor, G_free)]  # G^L: (1, S/4, S/4, S/4)
    fulls = [G.generate(z)[0].cpu() for G in (G_anchor, G_free)]  # (1, S, S, S)
torch.manual_seed(cfg.seed)  # the trainer builds its networks right after this seed
initial = Generator(cfg).low_res_head.state_dict()
unchanged = all(torch.equal(initial[k].to(v.device), v)
                for k, v in G_free.low_res_head.state_dict().items())
print(f"G^L weights without the anchor still equal their initial values: {unchanged}")

# %%
fig = viz.plot_volumes(lows + fulls, ["G^L, D^L on", "G^L, D^L off", "volume, D^L on",
                                      "volume, D^L off"],
                       title=f"the low-resolution anchor after {short} iterations (same z)")
teaching.show(fig, figures / "sol03_anchor.png")

# %% [markdown]
# The printed check is the part that holds at any length: without D^L, G^L is never trained
# (its image above stays the random pattern of its initial weights). The full volumes show what
# the anchor is for, and that it acts slowly: D^L judges only G^L's low-resolution image, and
# G^H's slabs follow it through the trunk features they share; nothing else judges where the
# head lies in the cube or whether the slabs of one volume belong together. In the `make demo`
# run we looked at (cpu scale, 300 iterations) G^L with the anchor already made a centred,
# head-sized blob at 8³, while its full volume was still a bright blob in the right half of the
# cube; without the anchor the full volume was a bright band along the left edge beside a dimmer
# mass, parts that do not agree. Neither full volume is a head yet. At a few iterations (smoke)
# both may be noise; in a longer run look for slabs that disagree at their borders.
#
# ## Exercise 2: resume
#
# A run folder remembers everything (weights, optimisers, random states, the step); asking for
# more iterations continues from the last checkpoint, and the log's steps continue without a gap.

# %%
from hagan.train import read_metrics

result = train(cfg.replace(iterations=short + 10), anchored)
steps = [r["step"] for r in read_metrics(anchored)]
print(f"now at iteration {result.step}; logged steps {steps}")

# %% [markdown]
# ## Exercise 3: two time scales
#
# With `lr_d = 4e-4` D adapts four times faster than G (the "two time-scale update rule" of
# Heusel et al., 2017), so it can keep up with a moving generator; with equal rates it adapts
# at G's pace. Compare the D and G curves of the two runs (the first run was extended by 10
# iterations in exercise 2) and their mean losses: a lower mean $\mathcal L_D$ means D is
# winning. The cell prints which run's D wins; at a few dozen iterations the difference can be
# small and either way, so read it with the curves.

# %%
import numpy as np

equal = work / f"exercise_equal_lr_{s.preset}"
train(cfg.replace(lr_d=1e-4), equal)
for name, run in (("lr_d 4e-4 (paper)", anchored), ("lr_d 1e-4 = lr_g", equal)):
    records = read_metrics(run)
    print(f"{name:<18}: mean loss_d {np.mean([r['loss_d'] for r in records]):.3f}, "
          f"mean loss_g {np.mean([r['loss_g'] for r in records]):.3f}")
mean_d = {run: np.mean([r["loss_d"] for r in read_metrics(run)]) for run in (anchored, equal)}
print("D wins more (lower mean loss_d) with " + ("lr_d 4e-4" if mean_d[anchored] < mean_d[equal]
                                                else "lr_d 1e-4"))

# %%
teaching.show(viz.plot_losses(read_metrics(anchored), title="lr_d 4e-4 (the paper's)"),
              figures / "sol03_losses_paper.png")

# %%
teaching.show(viz.plot_losses(read_metrics(equal), title="lr_d 1e-4, equal to lr_g"),
              figures / "sol03_losses_equal.png")

# %% [markdown]
# ## Next
#
# Back to `04_inference`.
