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
# # 02 · The hierarchical idea: train on slabs, anchor with a low-resolution image
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/hagan-kit/hagan-kit/blob/main/notebooks/02_the_hierarchical_idea.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/hagan-kit/hagan-kit/HEAD?labpath=notebooks%2F02_the_hierarchical_idea.ipynb)
#
# A 3D GAN that makes 256³ volumes directly needs more GPU memory than exists: every
# full-resolution feature map of the generator and the discriminator is 16.8 million voxels per
# channel, and backpropagation keeps many of them. HA-GAN (Sun et al., JBHI 2022, Sec. III)
# never builds the full-resolution volume while training.
#
# **You will learn**
# * the three parts of the generator (G^A, G^L, G^H) and the two of the discriminator (D^H, D^L),
#   with the shape of every tensor;
# * how a training step samples one full-resolution *slab* and why the low-resolution image
#   keeps the anatomy together;
# * to **measure on your machine** the memory and time of a naive full-resolution step against
#   the hierarchical step at growing sizes — the paper's central claim, live.

# %% tags=["parameters"]
work_dir = ""  # shared work dir; empty means $HAGAN_WORK_DIR, else ~/hagan-work
smoke = False  # True: tiny settings that run in seconds on a CPU (CI)
scale = "auto"  # auto (gpu with CUDA, else cpu), smoke, cpu or gpu: the sizes used below
preset = ""  # model preset; empty means the scale's (small64 GPU, tiny32 CPU)
n_subjects = 0  # demo cohort size, if this notebook has to make it; 0 means the scale's
bench_sizes = []  # cube sizes to measure; empty: GPU 32-256, CPU 32-128, smoke 32-64
bench_width = 0.0  # width of the measured networks; 0 means the scale's (1.0 is the paper's)
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
s = teaching.settings(smoke, scale, device, seed, preset=preset, n_subjects=n_subjects,
                      bench_sizes=bench_sizes, bench_width=bench_width)

# %% [markdown]
# ## 1. One generator, three parts
#
# The generator is split where the resolution changes (paper Fig. 1):
#
# * **G^A**, the shared trunk: $f = G^A(z)$ maps the latent $z \sim \mathcal N(0, I)$ to a
#   feature volume at a quarter of the resolution, 64 × (S/4)³;
# * **G^L**, the low-resolution head: $\hat x_L = G^L(f)$, the *whole* image at (S/4)³;
# * **G^H**, the high-resolution head: $\hat x_H = G^H(f_{[c/4\,:\,c/4 + S/32]})$ turns a thin
#   slice of the features into the matching *full-resolution slab*, S/8 deep, starting at
#   axial index $c$.
#
# The discriminator judges both together, with the slab position as an extra input:
#
# $$D(\hat x_L, \hat x_H, c) = \tfrac12\left[D^L(\hat x_L) + D^H\!\left(\hat x_H, \tfrac{c}{7S/8}\right)\right].$$
#
# At inference there is no memory problem (no backward pass), so G^H runs on *all* the features
# and emits the full volume in one pass: $\hat x = G^H(G^A(z))$. The shapes, for the model used
# in this notebook (computed on PyTorch's `meta` device, so nothing is allocated):

# %%
cfg = hagan.preset(s.preset)
c = cfg.max_slab_start // 2  # a slab in the middle
for stage, shape in teaching.trace_shapes(cfg, slab_start=c):
    print(f"{stage:<48} {shape}")

# %% [markdown]
# The same rule gives the published 256³ network. Its slab is 32 × 256 × 256, 1/8 of the
# volume, while the low-resolution image is 64³, 1/64 of it:

# %%
for stage, shape in teaching.trace_shapes(hagan.preset("paper256"), slab_start=112):
    print(f"{stage:<48} {shape}")

# %% [markdown]
# Parameter counts (in millions) do not depend on the hierarchy: the same networks train on
# slabs and generate whole volumes. The 128³ and 256³ rows reproduce the published models.

# %%
for name, size, counts in teaching.parameter_table():
    print(f"{name:<9} {size:>3}^3  " + "  ".join(f"{k} {v:6.2f} M" for k, v in counts.items()))

# %% [markdown]
# ## 2. Slab sampling
#
# Every iteration draws a new slab start $c \sim \mathcal U\{0, \dots, 7S/8\}$ and the same $c$
# is used for the real volume: D sees the real slab $x_{[c\,:\,c+S/8]}$ and the real image
# downsampled by 4. Here is what that means for one demo subject (made by notebook `00`, or now):

# %%
from hagan.data import PreparedDataset

data = teaching.ensure_demo(work, s)
x = PreparedDataset(data, size=cfg.size)[0]
fig = viz.plot_slab(x, start=c, depth=cfg.slab_depth,
                    title=f"one training view of a {cfg.size}^3 volume (slab start c = {c})")
teaching.show(fig, figures / "02_slab.png")

# %% [markdown]
# Over many iterations the slabs cover the whole depth, so G^H learns every part of the
# anatomy; the low-resolution image ties the slabs together into one consistent body, because
# D^L sees the whole image every time. Coverage is not uniform: a slice near the top or bottom
# lies inside the slab only when $c$ is at its extreme, so the edges are seen less often.

# %%
iterations = 1000
starts = teaching.draw_slab_starts(cfg, iterations, seed=seed)
coverage = teaching.slab_coverage(starts, cfg.size, cfg.slab_depth)
fig = viz.plot_slab_coverage(coverage, cfg.slab_depth, iterations,
                             title=f"slab coverage of {cfg.size} axial slices, {iterations} draws")
teaching.show(fig, figures / "02_coverage.png")

# %% [markdown]
# ## 3. Measure it: naive full resolution versus hierarchical
#
# We time one **generator update** (forward through G and D, loss, backward) in two ways, with
# the same networks:
#
# * **naive**: G makes the whole S³ volume (`G.generate(z)`, with gradients) and the
#   discriminator judges all of it (D^H on all 8 slabs of the volume at once, D^L on the
#   downsampled volume);
# * **hierarchical**: HA-GAN's step, G makes the (S/4)³ image and one S/8 slab, D judges them.
#
# *Memory* is the activation memory autograd keeps between forward and backward (we count the
# bytes of every saved tensor with `torch.autograd.graph.saved_tensors_hooks`; weights are not
# included). This is the term that grows with S³ and that HA-GAN amortises. On a GPU the CUDA
# peak (`torch.cuda.max_memory_allocated`) is measured as well. A size whose memory is predicted
# (×8 per doubling) to exceed half the free memory is skipped rather than crashing the machine.

# %%
repeats = 1 if s.scale == "smoke" else 3
costs = teaching.compare_steps(s.bench_sizes, width=s.bench_width, device=s.device,
                               repeats=repeats)
saved = teaching.save_json(costs, work / "step_costs.json")

# %%
fig = viz.plot_step_costs(costs, title=f"one generator update on {s.device} (width "
                                       f"{s.bench_width:g}, batch 1)")
teaching.show(fig, figures / "02_step_costs.png")

# %% [markdown]
# The ratio of the two is what HA-GAN saves. It is not 8×: only the full-resolution parts (G^H
# and D^H) shrink to one slab in eight, while the trunk G^A, which works at ¼ resolution and also
# grows like S³, costs the same in both modes. What the hierarchy removes are the largest
# tensors, the full-resolution ones, and that is what keeps 256³ within a GPU's memory.

# %%
for size in sorted({r["size"] for r in costs}):
    naive, hier = ([r for r in costs if r["size"] == size and r["mode"] == m][0]
                   for m in ("naive", "hierarchical"))
    if naive["status"] == hier["status"] == "ok":
        print(f"{size:>4}^3: naive / hierarchical = {naive['saved_mib'] / hier['saved_mib']:.1f}x "
              f"memory, {naive['seconds'] / hier['seconds']:.1f}x time")

# %% [markdown]
# ## Exercises
#
# 1. **Slab depth.** HA-GAN's slab is S/8 deep. Predict how the activation memory of the
#    high-resolution head G^H grows if the slab were S/16, S/4 or the whole volume, then measure
#    it with `teaching.slab_cost(size, feature_depth)` (a feature slab d deep gives an image slab
#    4d deep).
# 2. **Coverage.** With $c \sim \mathcal U\{0, \dots, 7S/8\}$, how many iterations does it take
#    until slice 0 (the very bottom) has been inside a slab at least once, with 99 % probability?
#    Compute it, then check by simulation with `teaching.draw_slab_starts`.
# 3. **Extrapolate to 256³.** Fit the S³ law to your measured memory and predict the naive and
#    the hierarchical memory at 256³ for the paper's width 1 and batch 4. Which of the two fits
#    on an 80 GB GPU?
#
# Solutions: `solutions/02_the_hierarchical_idea_solutions.ipynb`.

# %% [markdown]
# ## Next
#
# `03_training` trains a model with exactly this step (plus two encoders) and shows the losses.
