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
# # Solutions · 04 Inference
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/hagan-kit/hagan-kit/blob/main/notebooks/solutions/04_inference_solutions.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/hagan-kit/hagan-kit/HEAD?labpath=notebooks%2Fsolutions%2F04_inference_solutions.ipynb)
#
# Worked answers to the exercises of notebook `04`. Try them yourself first.
#
# **You will learn** why slerp suits Gaussian latents, how well the encoders invert the
# generator, and where a class label changes the generated volume.

# %% tags=["parameters"]
work_dir = ""  # shared work dir; empty means $HAGAN_WORK_DIR, else ~/hagan-work
smoke = False  # True: tiny settings that run in seconds on a CPU (CI)
scale = "auto"  # auto (gpu with CUDA, else cpu), smoke, cpu or gpu: the sizes used below
preset = ""  # model preset; empty means the scale default (small64 GPU, demo32 CPU, tiny32 smoke)
n_subjects = 0  # demo cohort size, if it has to be made; 0 means the scale default
iterations = 0  # training iterations if a model is missing; 0 means the scale default
cond_iterations = 0  # iterations of the conditional model; 0 means the scale default
n_samples = 0  # latent vectors per exercise; 0 means the scale default
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
s = teaching.settings(smoke, scale, device, seed, preset=preset, n_subjects=n_subjects,
                      iterations=iterations, cond_iterations=cond_iterations,
                      n_samples=n_samples)

# %% [markdown]
# ## Exercise 1: linear or spherical?
#
# Two independent draws are nearly orthogonal and both have norm close to $\sqrt d$. Halfway
# along the straight line, $\lVert (z_0 + z_1)/2 \rVert \approx \sqrt{d/2}$: about 0.71 of the
# typical norm — a region the generator never saw in training. Slerp keeps the norm.

# %%
import torch

from hagan.generate import slerp
from hagan.config import preset as make_preset

d = make_preset(s.preset).latent_dim
z0, z1 = torch.randn(2, d, generator=torch.Generator().manual_seed(seed))
print(f"d = {d}, sqrt(d) = {d ** 0.5:.2f}")
for t in (0.0, 0.25, 0.5, 0.75, 1.0):
    linear, spherical = (1 - t) * z0 + t * z1, slerp(z0, z1, t)
    print(f"t = {t:.2f}: |linear| = {linear.norm():6.2f}, |slerp| = {spherical.norm():6.2f}")

# %% [markdown]
# ## Exercise 2: can the encoders invert the generator?
#
# We know the true $z$ of generated volumes, so we can check both the latent and the image. For
# scale: two unrelated random vectors of $d$ dimensions have a cosine of about $0 \pm 1/\sqrt d$.
# E^G is trained to invert exactly this generator, so a cosine clearly above that band means the
# encoders have learned something; after a short run expect it near 0, i.e. not (yet) inverted.
# The last line of the output says which case this run is. A small image L1 next to cosines near
# 0 is no success either: G then gives nearly the same volume for quite different latents, so
# many directions of z change little; at the extreme that is mode collapse (notebook `03`,
# section 6, says whether this model collapsed).

# %%
import torch.nn.functional as F

from hagan.checkpoint import load_models
from hagan.generate import encode, sample

data = teaching.ensure_demo(work, s)
_, nets = load_models(teaching.ensure_run(work, s, data), device=s.device)
z = torch.randn(s.n_samples, d, generator=torch.Generator().manual_seed(seed + 7))
volumes = sample(nets["G"], s.n_samples, z=z)
z_hat = encode(nets["E"], nets["SubE"], volumes).cpu()
again = sample(nets["G"], s.n_samples, z=z_hat)
print("cosine(z, z_hat):", [f"{c:.2f}" for c in F.cosine_similarity(z, z_hat)])
print("L1(G(z), G(z_hat)):", [f"{e:.3f}" for e in (again - volumes).abs().mean((1, 2, 3, 4))])
mean_cos, chance = float(F.cosine_similarity(z, z_hat).mean()), 1 / d**0.5
print(f"mean cosine {mean_cos:.2f} vs chance band ±{chance:.2f}: "
      + ("the encoders invert G in part" if mean_cos > 2 * chance else "not inverted (yet)"))

# %% [markdown]
# ## Exercise 3: where does the label act?
#
# The mean of $G(z, 1) - G(z, 0)$ over several $z$ cancels what the label does not change and
# keeps what it does. A well-trained conditional model shows a bright spot where lesions were
# in the training data (the template's white-matter lesion sites); after a short run the map
# may be noise, or the label may have learned something else. The printed peak and the figure
# show which this run is: a peak on the brain's outline (e.g. y or x near 0 or S) and bright and
# dark rims mean the label changes the head's shape and size, not a lesion. The demo's CPU run
# (1000 conditional iterations) has its peak on the outline and such rims; a weaker bright spot
# inside the brain in its axial slice may be the start of a lesion.

# %%
lesion_data = teaching.ensure_demo(work, s, lesion_fraction=0.5, made_by="notebook 04")
_, cond = load_models(teaching.ensure_run(work, s, lesion_data, conditional=True,
                                          made_by="notebook 04"), device=s.device)
diff = (sample(cond["G"], s.n_samples, labels=1, z=z) -
        sample(cond["G"], s.n_samples, labels=0, z=z)).mean(0)[0]  # (S, S, S)
peak = [int(i) for i in torch.nonzero(diff == diff.max())[0]]
limit = float(diff.abs().max())
print(f"largest mean difference {limit:.3f} at (z, y, x) {tuple(peak)}")

# %%
fig = viz.plot_volumes([diff], ["label 1 minus label 0"], index=peak, vmin=-limit, vmax=limit,
                       cbar_label="mean difference (lesion - healthy)",
                       title=f"what the label changes, averaged over {s.n_samples} latents")
teaching.show(fig, figures / "sol04_label_effect.png")

# %% [markdown]
# ## Next
#
# Back to `05_evaluation`.
