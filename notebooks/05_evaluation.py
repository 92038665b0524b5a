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
# # 05 · Evaluation: FID, MMD, MS-SSIM and memorisation, with real-vs-real baselines
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/hagan-kit/hagan-kit/blob/main/notebooks/05_evaluation.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/hagan-kit/hagan-kit/HEAD?labpath=notebooks%2F05_evaluation.ipynb)
#
# A number such as "FID 12.3" means nothing on its own: it depends on the feature extractor, its
# weights, the number of samples N and the resolution. As in the published evaluation, generated
# volumes are compared with real volumes the model never saw — the held-out split that training
# recorded in the run folder (`split.json`) — and every number is shown next to the same number
# for the real training volumes against that reference: the best a perfect generator could hope
# for at this N.
#
# **You will learn**
# * what the Fréchet distance (FID) and the maximum mean discrepancy (MMD) compare, in feature
#   space;
# * how MS-SSIM between random pairs measures diversity, and how nearest-neighbour distances
#   reveal memorisation, and how to recognise **mode collapse** in both;
# * to compute each step by hand, then all of them with one call to `hagan.metrics.evaluate`.

# %% tags=["parameters"]
work_dir = ""  # shared work dir; empty means $HAGAN_WORK_DIR, else ~/hagan-work
smoke = False  # True: tiny settings that run in seconds on a CPU (CI)
scale = "auto"  # auto (gpu with CUDA, else cpu), smoke, cpu or gpu: the sizes used below
preset = ""  # model preset; empty means the scale's (small64 GPU, demo32 CPU, tiny32 smoke)
n_subjects = 0  # demo cohort size, if this notebook has to make it; 0 means the scale's
iterations = 0  # training iterations if notebook 03's model is missing; 0 means the scale's
n_samples = 0  # generated volumes: twice this; 0 means the scale default
extractor = "random"  # random (offline), encoder, or medicalnet10/18/34/50 with weights
weights = ""  # MedicalNet weights file (resnet_50.pth ...) for a medicalnet extractor
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
                      iterations=iterations, n_samples=n_samples)

# %% [markdown]
# ## 1. Features
#
# Distances between volumes are measured on *features*: vectors a network extracts from each
# volume. The official HA-GAN FID uses MedicalNet's 3D ResNet-50 (pretrained on medical
# segmentation); its weights cannot be downloaded here, so by default we use a **seeded random**
# 3D network — it separates distributions surprisingly well but has no medical prior, so its
# numbers are for teaching and never comparable with published ones. Pass
# `extractor="medicalnet50", weights="resnet_50.pth"` to use the real thing.
#
# The model is the run's (notebook `03`); with `demo32` that is the checkpoint its validation
# kept (`checkpoints/best.pt`, notebook `03` section 7). That choice used other seeds (latents 1,
# random networks 1–4) than this notebook (latents `seed`, random network 0), so the numbers
# below did not choose the model they describe.

# %%
from hagan.features import build_extractor
from hagan.checkpoint import load_models
from hagan.generate import sample
from hagan.train import read_metrics

data = teaching.ensure_demo(work, s)
run = teaching.ensure_run(work, s, data)
cfg, nets = load_models(run, device=s.device)
features = build_extractor(extractor, weights=weights or None, models=nets, size=cfg.size,
                           device=s.device, progress=False)
print(features)

# %%
from hagan.metrics import resolve_reference

# the real sets evaluate() uses: the run's training volumes and the ones it kept out (split.json)
ref = resolve_reference(run, data, None, cfg)
print(ref.description)
train_set = ref.train.select(ref.train_files)
real_train = features(train_set)  # (N_train, F)
real_held = features(ref.heldout.select(ref.heldout_files))  # (N_held, F), never trained on
fake_volumes = sample(nets["G"], 2 * s.n_samples, seed=seed, device=s.device)
fake = features(fake_volumes)  # (N_gen, F)
print(f"features: real train {real_train.shape}, real held-out {real_held.shape}, "
      f"generated {fake.shape}")

# %% [markdown]
# ## 2. Fréchet distance (FID)
#
# Fit a Gaussian to each feature set and compare the two Gaussians:
#
# $$\mathrm{FD} = \lVert \mu_r - \mu_g \rVert^2 + \operatorname{Tr}\left(\Sigma_r + \Sigma_g -
# 2\,(\Sigma_r \Sigma_g)^{1/2}\right).$$
#
# It is 0 only for identical means and covariances. With few samples the covariances are noisy
# and FD is biased upwards, which is why the real-vs-real baseline matters.

# %%
from hagan.metrics import fid

print(f"FID train real vs held-out real: {fid(real_train, real_held):8.3f}  (baseline)")
print(f"FID generated  vs held-out real: {fid(fake, real_held):8.3f}")

# %% [markdown]
# ## 3. Maximum mean discrepancy (MMD)
#
# MMD compares the two samples through a Gaussian kernel $k(a, b) = e^{-\lVert a-b\rVert^2/m^2}$
# without assuming Gaussians:
# $\mathrm{MMD}^2 = \mathbb E[k(r, r')] + \mathbb E[k(g, g')] - 2\,\mathbb E[k(r, g)]$
# (unbiased estimate; it can dip slightly below 0 when the samples agree). The kernel scale $m$
# is the median of all pairwise distances in the pooled sample, as in the published HA-GAN
# evaluation, so these numbers are computed the way the paper's are. `mmd` is the one function
# the kit has: `evaluate` below calls it on the same sets and reports the same values. A
# permutation test turns MMD² into a p-value: how often a random relabelling of the pooled
# sample gives a larger MMD².

# %%
from hagan.metrics import mmd

permutations = 20 if smoke else 200
for name, x in (("train real", real_train), ("generated", fake)):
    value, p = mmd(x, real_held, permutations=permutations, seed=seed)
    print(f"MMD^2 {name:<10} vs held-out real: {value:8.4f}  (p = {p:.3f}, {permutations} perms)")

# %% [markdown]
# ## 4. Diversity: MS-SSIM between random pairs
#
# Multi-scale structural similarity compares two volumes' local means, contrasts and structures
# at several resolutions (3D, 11³ Gaussian windows); 1 means identical. The mean over random
# pairs of generated volumes measures diversity: a collapsed generator that always makes the same
# volume scores near 1. Compare with random pairs of real volumes.

# %%
from hagan.metrics import diversity, ms_ssim_3d

pairs = 10 if smoke else 100
gen_div, real_div = diversity(fake_volumes, n_pairs=pairs), diversity(train_set, n_pairs=pairs)
print(f"MS-SSIM of a volume with itself: {ms_ssim_3d(fake_volumes[0], fake_volumes[0])[0]:.3f}")
print(f"mean MS-SSIM, random generated pairs: {gen_div:.3f}")
print(f"mean MS-SSIM, random real pairs:      {real_div:.3f}")
print("verdict: " + ("MODE COLLAPSE: generated volumes are far more alike than real ones"
                     if gen_div > real_div + 0.1 else "no collapse by this measure"))

# %% [markdown]
# A verdict of **mode collapse** means the generator makes nearly the same volume for every z:
# the other numbers of this notebook then describe one volume, not a distribution. The training
# log shows when it happened: notebook `03` (section 6) plots the diversity checks the trainer
# records with `diversity_every`. The remedies are there too: more varied data, more
# iterations, and changes to D (the minibatch standard deviation and the R1 penalty of the
# `demo32` preset, or augmentation that D sees, `d_augment=true`).

# %%
checks = [r for r in read_metrics(run) if "ms_ssim_fake" in r]
if not checks:
    print("this run logged no diversity checks (train with diversity_every > 0 to get them)")
curve = (teaching.show(viz.plot_diversity(checks, title=f"{cfg.preset}: diversity during "
                                          "training"), figures / "05_diversity.png")
         if checks else None)
curve  # the figure (a bare last expression is what a notebook displays)

# %% [markdown]
# ## 5. Everything at once: `hagan.metrics.evaluate`
#
# `evaluate` (and the `hagan evaluate` command) does all of the above, adds the memorisation
# check — for each generated volume the feature distance to its nearest *training* volume,
# against the same distance for held-out real volumes — caches the real features, and writes a
# JSON report whose every number names extractor, weights hash, N and resolution, and which
# real volumes it compared with (its last line). Its MMD² rows are the values printed above.

# %%
from hagan.metrics import evaluate, format_table

report = evaluate(run, data, extractor=extractor, weights=weights or None, n=2 * s.n_samples,
                  out=work / f"report_{cfg.preset}.json", seed=seed, device=s.device.type,
                  progress=False, permutations=permutations, n_pairs=pairs, force=True)
print(format_table(report))

# %%
teaching.show(viz.plot_metric_report(report), figures / "05_metrics.png")

# %% [markdown]
# Reading the report: generated-vs-held-out values far above the real-train row mean the model is
# not there yet (expected after a short run); MS-SSIM of generated pairs well above real pairs
# means too little diversity (mode collapse); a memorisation ratio far below 1 would mean the
# generator copies training volumes.

# %% [markdown]
# ## Exercises
#
# 1. **FID needs many samples.** Compute the real-vs-real FID between two random halves of the
#    real features for growing subset sizes. How does it change with N, and what does that mean
#    for comparing FIDs computed with different N?
# 2. **What MS-SSIM sees.** Take one real volume and add Gaussian noise of growing standard
#    deviation; plot MS-SSIM(volume, noisy volume) against the noise level.
# 3. **Catch a copier.** Pretend the generator simply returns training volumes: run
#    `hagan.metrics.memorisation` with the training features as "generated". What happens to the
#    ratio and to the fraction of samples closer than any held-out volume?
#
# Solutions: `solutions/05_evaluation_solutions.ipynb`.

# %% [markdown]
# ## Next
#
# `06_feature_analysis` looks inside the feature space: 2D maps of real and generated volumes,
# and what moving along a latent direction does.
