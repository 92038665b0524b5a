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
# # 06 · Feature analysis: what the encoders learned
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/hagan-kit/hagan-kit/blob/main/notebooks/06_feature_analysis.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/hagan-kit/hagan-kit/HEAD?labpath=notebooks%2F06_feature_analysis.ipynb)
#
# HA-GAN's encoders map any volume to a latent vector $\hat z = E^G(E^H(x))$. The authors use
# these vectors to reconstruct real scans and as features of them. Here we look at them directly.
#
# **You will learn**
# * to embed real and generated volumes in the encoder's latent space;
# * to draw 2D maps of that space with PCA and with metric MDS, and read the 2σ ellipses;
# * to find the main directions of variation of real data and walk along one with the
#   generator (a latent traversal).

# %% tags=["parameters"]
work_dir = ""  # shared work dir; empty means $HAGAN_WORK_DIR, else ~/hagan-work
smoke = False  # True: tiny settings that run in seconds on a CPU (CI)
scale = "auto"  # auto (gpu with CUDA, else cpu), smoke, cpu or gpu: the sizes used below
preset = ""  # model preset; empty means the scale's (small64 GPU, demo32 CPU, tiny32 smoke)
n_subjects = 0  # demo cohort size, if this notebook has to make it; 0 means the scale's
iterations = 0  # training iterations if notebook 03's model is missing; 0 means the scale's
n_samples = 0  # generated volumes: twice this; 0 means the scale default
device = "auto"  # auto, cpu or cuda
seed = 0

# %%
import subprocess
import sys

if "google.colab" in sys.modules:  # on Colab: install the kit first (skipped everywhere else)
    KIT = "hagan-kit @ git+https://github.com/hagan-kit/hagan-kit@v0.1.0"  # pinned release
    if subprocess.run([sys.executable, "-m", "pip", "install", "-q", KIT]).returncode:
        raise SystemExit(f"could not install {KIT} (pip's message is above); rerun this cell")
from hagan import analysis, teaching, viz
from hagan.runtime import print_env

print_env()  # versions, CPU threads and the GPU, if any
teaching.seed_everything(seed)
work = teaching.work_dir(work_dir)
figures = work / "figures"
s = teaching.settings(smoke, scale, device, seed, preset=preset, n_subjects=n_subjects,
                      iterations=iterations, n_samples=n_samples)

# %% [markdown]
# ## 1. Encoder features of real and generated volumes
#
# `build_extractor("encoder", models=nets)` wraps $x \mapsto E^G(E^H(x))$: one latent-size vector
# per volume. We encode every real volume and as many generated ones.

# %%
from hagan.features import build_extractor
from hagan.checkpoint import load_models
from hagan.data import PreparedDataset
from hagan.generate import sample

data = teaching.ensure_demo(work, s)
run = teaching.ensure_run(work, s, data)
cfg, nets = load_models(run, device=s.device)
encoder = build_extractor("encoder", models=nets, size=cfg.size, device=s.device, progress=False)
dataset = PreparedDataset(data, size=cfg.size)
real = encoder(dataset)
fake = encoder(sample(nets["G"], max(len(dataset), 2 * s.n_samples), seed=seed, device=s.device))
print(f"{encoder}: real {real.shape}, generated {fake.shape}")

# %% [markdown]
# ## 2. PCA: the two directions of largest variance
#
# Both sets are standardised together, then projected on the first two principal components of
# the pooled features. The axis labels give the share of variance each component explains; the
# dashed ellipses cover ±2 standard deviations of each group. Overlapping clouds of similar shape
# are what a good generator produces; separate clouds mean the encoder can tell them apart.

# %%
fig = analysis.plot_embedding({"real": real, "generated": fake}, method="pca",
                         title=f"PCA of encoder features ({cfg.preset}, {real.shape[1]}-d)")
teaching.show(fig, figures / "06_pca.png")

# %% [markdown]
# ## 3. MDS: keep the distances instead
#
# Metric multidimensional scaling (as in the authors' analysis notebook) places the points in 2D
# so that their pairwise distances match the distances in feature space as well as possible.
# PCA keeps the directions of largest variance; MDS keeps the neighbourhoods.

# %%
fig = analysis.plot_embedding({"real": real, "generated": fake}, method="mds", seed=seed,
                         title="metric MDS of encoder features")
teaching.show(fig, figures / "06_mds.png")

# %% [markdown]
# ## 4. A latent traversal
#
# The principal directions of the *real* volumes' latent vectors are the ways real anatomy varies
# most, as the model understands it. Moving $z$ along the first one, $z_t = \bar z + t\,d_1$,
# and generating shows what that direction means.

# %%
import torch

from hagan.analysis import latent_traversal, principal_directions

directions = principal_directions(real, k=2)  # (2, latent_dim), unit vectors
centre = torch.as_tensor(real.mean(axis=0), dtype=torch.float32)
walk = latent_traversal(nets["G"], directions[0], steps=4, span=2.0, z=centre)
fig = viz.plot_volumes(list(walk), [f"t = {t:+.1f}" for t in torch.linspace(-2, 2, 4)],
                       title="traversal along the first principal direction of real latents")
teaching.show(fig, figures / "06_traversal.png")

# %% [markdown]
# ## Exercises
#
# 1. **Which features?** Redo the PCA map with the seeded random network
#    (`build_extractor("random")`) instead of the encoder. Do real and generated volumes separate
#    more or less, and why might the two extractors disagree?
# 2. **Lesions in latent space.** Encode the lesion cohort of notebook `04` with the conditional
#    model's encoders and colour the PCA map by label (healthy / lesion). Are the classes
#    separable?
# 3. **The second direction.** Traverse along the second principal direction. Describe what
#    changes, and compare the spread of the real latents along $d_1$ and $d_2$.
#
# Solutions: `solutions/06_feature_analysis_solutions.ipynb`.

# %% [markdown]
# ## Next
#
# `07_scaling_up` moves from the CPU to GPUs: precision, several GPUs with `torchrun`, Colab, and
# loading the weights the HA-GAN authors published.
