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
# # Solutions · 06 Feature analysis
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/hagan-kit/hagan-kit/blob/main/notebooks/solutions/06_feature_analysis_solutions.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/hagan-kit/hagan-kit/HEAD?labpath=notebooks%2Fsolutions%2F06_feature_analysis_solutions.ipynb)
#
# Worked answers to the exercises of notebook `06`. Try them yourself first.
#
# **You will learn** how the choice of feature extractor changes the picture, whether the
# encoders separate lesion from healthy subjects, and how to read a second latent direction.

# %% tags=["parameters"]
work_dir = ""  # shared work dir; empty means $HAGAN_WORK_DIR, else ~/hagan-work
smoke = False  # True: tiny settings that run in seconds on a CPU (CI)
scale = "auto"  # auto (gpu with CUDA, else cpu), smoke, cpu or gpu: the sizes used below
preset = ""  # model preset; empty means the scale default (small64 GPU, demo32 CPU, tiny32 smoke)
n_subjects = 0  # demo cohort size, if it has to be made; 0 means the scale default
iterations = 0  # training iterations if a model is missing; 0 means the scale default
cond_iterations = 0  # iterations of the conditional model; 0 means the scale default
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
                      iterations=iterations, cond_iterations=cond_iterations)

# %% [markdown]
# ## Exercise 1: which features?
#
# The random network measures generic image statistics (intensity, texture, blob sizes at four
# scales); the encoder measures what the generator needs to rebuild a volume. A generator can
# match one and not the other, so the two maps can disagree — which is why a report must name
# its extractor.

# %%
from hagan.features import build_extractor
from hagan.checkpoint import load_models
from hagan.data import PreparedDataset
from hagan.generate import sample

data = teaching.ensure_demo(work, s)
cfg, nets = load_models(teaching.ensure_run(work, s, data), device=s.device)
dataset = PreparedDataset(data, size=cfg.size)
fake = sample(nets["G"], len(dataset), seed=seed, device=s.device)
random_net = build_extractor("random", device=s.device, progress=False)
fig = analysis.plot_embedding({"real": random_net(dataset), "generated": random_net(fake)},
                         method="pca", title="PCA of random-network features")
teaching.show(fig, figures / "sol06_random_pca.png")

# %% [markdown]
# ## Exercise 2: lesions in latent space
#
# The conditional model's encoders were trained on the lesion cohort. A lesion is a small bright
# region, so it moves the latent vector only a little; with a short run the two groups overlap,
# with a long one they drift apart along some direction (not necessarily the first two PCs).

# %%
lesion_data = teaching.ensure_demo(work, s, lesion_fraction=0.5, made_by="notebook 04")
_, cond = load_models(teaching.ensure_run(work, s, lesion_data, conditional=True,
                                          made_by="notebook 04"), device=s.device)
cohort = PreparedDataset(lesion_data, size=cfg.size, num_classes=2)
encoder = build_extractor("encoder", models=cond, size=cfg.size, device=s.device, progress=False)
features, labels = encoder(cohort), [cohort[i][1] for i in range(len(cohort))]
groups = {name: features[[i for i, y in enumerate(labels) if y == k]]
          for k, name in enumerate(("healthy", "lesion"))}
fig = analysis.plot_embedding(groups, method="pca", title="encoder features of the lesion cohort")
teaching.show(fig, figures / "sol06_lesion_pca.png")

# %% [markdown]
# ## Exercise 3: the second direction
#
# Principal directions are ordered by variance: the real latents spread more along $d_1$ than
# along $d_2$. What each direction *means* depends on the run; look at the traversal.

# %%
import torch

from hagan.analysis import latent_traversal, principal_directions

real = build_extractor("encoder", models=nets, size=cfg.size, device=s.device,
                       progress=False)(dataset)
d1, d2 = principal_directions(real, k=2)
centred = torch.as_tensor(real - real.mean(axis=0), dtype=torch.float32)
print(f"std of real latents along d1 {(centred @ d1).std():.3f}, "
      f"along d2 {(centred @ d2).std():.3f}")
walk = latent_traversal(nets["G"], d2, steps=4, span=2.0,
                        z=torch.as_tensor(real.mean(axis=0), dtype=torch.float32))
fig = viz.plot_volumes(list(walk), [f"t = {t:+.1f}" for t in torch.linspace(-2, 2, 4)],
                       title="traversal along the second principal direction")
teaching.show(fig, figures / "sol06_traversal_d2.png")

# %% [markdown]
# ## Next
#
# Back to `07_scaling_up`.
