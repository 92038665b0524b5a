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
# # Solutions · 05 Evaluation
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/hagan-kit/hagan-kit/blob/main/notebooks/solutions/05_evaluation_solutions.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/hagan-kit/hagan-kit/HEAD?labpath=notebooks%2Fsolutions%2F05_evaluation_solutions.ipynb)
#
# Worked answers to the exercises of notebook `05`. Try them yourself first.
#
# **You will learn** how FID depends on the sample size, what MS-SSIM responds to, and what a
# generator that copies its training data looks like to the memorisation check.

# %% tags=["parameters"]
work_dir = ""  # shared work dir; empty means $HAGAN_WORK_DIR, else ~/hagan-work
smoke = False  # True: tiny settings that run in seconds on a CPU (CI)
scale = "auto"  # auto (gpu with CUDA, else cpu), smoke, cpu or gpu: the sizes used below
preset = ""  # model preset; empty means the scale default (small64 GPU, demo32 CPU, tiny32 smoke)
n_subjects = 0  # demo cohort size, if it has to be made; 0 means the scale default
device = "auto"  # auto, cpu or cuda
seed = 0

# %%
import subprocess
import sys

if "google.colab" in sys.modules:  # on Colab: install the kit first (skipped everywhere else)
    KIT = "hagan-kit @ git+https://github.com/hagan-kit/hagan-kit@v0.1.0"  # pinned release
    if subprocess.run([sys.executable, "-m", "pip", "install", "-q", KIT]).returncode:
        raise SystemExit(f"could not install {KIT} (pip's message is above); rerun this cell")
from hagan import teaching, viz
from hagan.runtime import print_env

print_env()  # versions, CPU threads and the GPU, if any
teaching.seed_everything(seed)
work = teaching.work_dir(work_dir)
figures = work / "figures"
s = teaching.settings(smoke, scale, device, seed, preset=preset, n_subjects=n_subjects)

# %% [markdown]
# ## Exercise 1: FID needs many samples
#
# Both halves come from the same distribution, so the true distance is 0; what we measure is the
# estimation error of means and covariances, which shrinks as N grows. Two FIDs are comparable
# only at the same N (and with the same extractor and resolution).

# %%
import numpy as np

from hagan.features import build_extractor
from hagan.data import PreparedDataset
from hagan.metrics import fid

data = teaching.ensure_demo(work, s)
dataset = PreparedDataset(data, size=s.size)
real = build_extractor("random", device=s.device, progress=False)(dataset)
rng = np.random.default_rng(seed)
values = {}
for n in range(2, len(real) // 2 + 1, max(1, len(real) // 16)):
    order = rng.permutation(len(real))
    values[f"N={n}"] = fid(real[order[:n]], real[order[n:2 * n]])
print({k: round(v, 3) for k, v in values.items()})

# %%
fig = viz.plot_bars(values, title="real-vs-real FID (random features) against sample size",
                    ylabel="Fréchet distance", xlabel="volumes per half")
teaching.show(fig, figures / "sol05_fid_vs_n.png")

# %% [markdown]
# ## Exercise 2: what MS-SSIM sees
#
# Noise destroys the fine scales first; the coarse scales (local means, large structures) survive
# longer, so MS-SSIM falls smoothly rather than at once.

# %%
import torch

from hagan.metrics import ms_ssim_3d

volume = dataset[0]
g = torch.Generator().manual_seed(seed)
scores = {f"σ={sd:g}": float(ms_ssim_3d(volume, (volume + sd * torch.randn(volume.shape,
                                                                            generator=g)))[0])
          for sd in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8)}
print({k: round(v, 3) for k, v in scores.items()})
fig = viz.plot_bars(scores, title="MS-SSIM of a volume and its noisy copy",
                    ylabel="MS-SSIM", xlabel="noise standard deviation (intensity units)")
teaching.show(fig, figures / "sol05_ms_ssim_noise.png")

# %% [markdown]
# ## Exercise 3: catch a copier
#
# If the "generated" volumes are training volumes, each one's nearest training neighbour is
# itself at distance 0: the median distance ratio is 0 and every sample is closer to the training
# set than any held-out volume — the alarm the check is built to raise.

# %%
from hagan.metrics import memorisation, split_halves

train_idx, held_idx = split_halves(len(real), seed)
copier = memorisation(real[train_idx], real[train_idx], real[held_idx])
honest = memorisation(real[held_idx], real[train_idx], real[held_idx])
for name, m in (("copies of training volumes", copier), ("held-out real volumes", honest)):
    print(f"{name:<27}: ratio {m['ratio']:.3f}, closer than any held-out "
          f"{m['fraction_closer_than_any_heldout']:.0%}")

# %% [markdown]
# ## Next
#
# Back to `06_feature_analysis`.
