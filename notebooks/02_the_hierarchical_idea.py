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
# A 3D GAN that makes 256³ volumes directly keeps the full-resolution feature maps of its
# generator and discriminator for backpropagation, 16.8 million voxels per channel each, and
# memory grows 8× with every doubling of the size. HA-GAN (Sun et al., JBHI 2022, Sec. III)
# never builds the full-resolution volume while training; this notebook counts what that saves.
#
# **You will learn**
# * the three parts of the generator (G^A, G^L, G^H) and the two of the discriminator (D^H, D^L),
#   with the shape of every tensor;
# * how a training step samples one full-resolution *slab* and why the low-resolution image
#   keeps the anatomy together;
# * to **count exactly** (without allocating anything) the memory of a naive full-resolution
#   iteration against the hierarchical one at the paper's 128³ and 256³, and to measure small
#   sizes on your machine — the paper's central claim, checked.

# %% tags=["parameters"]
work_dir = ""  # shared work dir; empty means $HAGAN_WORK_DIR, else ~/hagan-work
smoke = False  # True: tiny settings that run in seconds on a CPU (CI)
scale = "auto"  # auto (gpu with CUDA, else cpu), smoke, cpu or gpu: the sizes used below
preset = ""  # model preset; empty means the scale's (small64 GPU, demo32 CPU, tiny32 smoke)
n_subjects = 0  # demo cohort size, if this notebook has to make it; 0 means the scale's
bench_sizes = []  # cube sizes to measure; empty: GPU 32-256, CPU 32-128, smoke 32-64
bench_width = 0.0  # width of the measured networks; 0 means the scale's (1.0 is the paper's)
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
from hagan import lessons, teaching, viz
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
for stage, shape in lessons.trace_shapes(cfg, slab_start=c):
    print(f"{stage:<48} {shape}")

# %% [markdown]
# The same rule gives the published 256³ network. Its slab is 32 × 256 × 256, 1/8 of the
# volume, while the low-resolution image is 64³, 1/64 of it:

# %%
for stage, shape in lessons.trace_shapes(hagan.preset("paper256"), slab_start=112):
    print(f"{stage:<48} {shape}")

# %% [markdown]
# Parameter counts (in millions) do not depend on the hierarchy: the same networks train on
# slabs and generate whole volumes. The 128³ and 256³ rows reproduce the published models.

# %%
for name, size, counts in lessons.parameter_table():
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
starts = lessons.draw_slab_starts(cfg, iterations, seed=seed)
coverage = lessons.slab_coverage(starts, cfg.size, cfg.slab_depth)
fig = viz.plot_slab_coverage(coverage, cfg.slab_depth, iterations,
                             title=f"slab coverage of {cfg.size} axial slices, {iterations} draws")
teaching.show(fig, figures / "02_coverage.png")

# %% [markdown]
# ## 3. Count it, then measure it: naive full resolution versus hierarchical
#
# One training iteration has a **D step** (D learns real from fake) and a **G step** (G learns
# to fool D), each a forward and a backward pass. Below are both, written out in two ways with
# the same networks:
#
# * **naive**: G makes the whole S³ volume (`G.generate(z)`, with gradients in the G step) and D
#   judges all of it: D^H on all 8 slabs of the volume at once, D^L on the downsampled volume;
# * **hierarchical**: HA-GAN's step: G makes the (S/4)³ image and one S/8 slab, D judges them,
#   and the real volume is shown to D the same way (its slab at $c$ and its ¼-resolution image).
#
# The loss is the GAN's binary cross-entropy: $-\log\sigma(\text{logit})$ for "real",
# $-\log(1-\sigma(\text{logit}))$ for "fake".

# %%
import torch
import torch.nn.functional as F
from hagan.slab import crop_slab, low_res, slab_position

def bce(logit, target):  # -log sigma(logit) for target 1, -log(1 - sigma(logit)) for target 0
    return F.binary_cross_entropy_with_logits(logit, torch.full_like(logit, float(target)))

def judge_whole(D, volume, cfg):
    """The naive D: D^H on all 8 slabs of the whole volume at once, D^L on its low-res image."""
    B, S, d = volume.shape[0], cfg.size, cfg.slab_depth
    slabs = volume.reshape(B, 1, 8, d, S, S).transpose(1, 2).reshape(B * 8, 1, d, S, S)
    position = slab_position(torch.arange(8.0) * d, S).repeat(B).to(volume.device)
    logit_h, _ = D.high_res(slabs, position)  # (8B, 1)
    logit_l, _ = D.low_res(low_res(volume))  # (B, 1)
    return (logit_h.view(B, 8).mean(1, keepdim=True) + logit_l) / 2

# %%
def naive_d_step(G, D, x, z, cfg):  # real and fake whole volumes, judged whole
    with torch.no_grad():
        fake = G.generate(z)  # (B, 1, S, S, S)
    (bce(judge_whole(D, x, cfg), 1) + bce(judge_whole(D, fake, cfg), 0)).backward()

def naive_g_step(G, D, x, z, cfg):  # every voxel made with gradients, all of it judged
    bce(judge_whole(D, G.generate(z), cfg), 1).backward()

def hierarchical_d_step(G, D, x, z, cfg, c=0):  # one slab at c (any c costs the same) + low-res
    with torch.no_grad():
        fake_slab, fake_low = G(z, c)  # (B, 1, S/8, S, S), (B, 1, S/4, S/4, S/4)
    real, fake = D(crop_slab(x, c), low_res(x), c)[0], D(fake_slab, fake_low, c)[0]
    (bce(real, 1) + bce(fake, 0)).backward()

def hierarchical_g_step(G, D, x, z, cfg, c=0):
    bce(D(*G(z, c), c)[0], 1).backward()

# %% [markdown]
# **What is counted.** `bench.activation_memory(step)` runs a step and follows every tensor it
# creates: *saved* is what autograd keeps for the backward pass at the end of the forward pass
# (the activations), *peak* is the most memory of tensors created by the step alive at one time
# (activations, their gradients, temporaries and the parameters' gradients). Neither counts the
# weights themselves, Adam's state, the encoders' updates, or the GPU allocator's rounding and
# library workspaces. Built on PyTorch's `meta` device, the networks have shapes but no data:
# every operation still computes the shape of its result, so the count is exact and nothing is
# allocated. That lets any laptop count the paper's networks (width 1) at batch 4.

# %%
from hagan import bench
from hagan.config import Config
from hagan.models import Discriminator, Generator

STEPS = {"naive": (naive_d_step, naive_g_step),
         "hierarchical": (hierarchical_d_step, hierarchical_g_step)}

def networks(size, width, batch, device):
    """G, D and a batch of real volumes x and latents z; width 1 is the paper's networks."""
    cfg = Config(size=size, width=width, latent_dim=max(8, int(1024 * width)))
    torch.manual_seed(0)
    with torch.device(device):
        G, D = Generator(cfg), Discriminator(cfg)
        x, z = torch.rand(batch, 1, size, size, size) * 2 - 1, torch.randn(batch, cfg.latent_dim)
    return cfg, G, D, x, z

# %%
def count(size, width=1.0, batch=4, device="meta"):
    """Counted memory (MiB) of the D and the G step of both modes: four records."""
    cfg, G, D, x, z = networks(size, width, batch, device)
    params = [*G.parameters(), *D.parameters()]
    rows = []
    for mode, (d_step, g_step) in STEPS.items():
        for name, step in (("D", d_step), ("G", g_step)):
            mib = bench.activation_memory(lambda: step(G, D, x, z, cfg), params)
            rows.append({"size": size, "mode": mode, "step": name, **mib})
    return rows

def worst(rows, size, mode, key):  # an iteration needs the larger of its D and G step
    return max(r[key] for r in rows if r["size"] == size and r["mode"] == mode)

# %% [markdown]
# The paper's networks and batch (width 1, batch 4) at 128³ and 256³, counted:

# %%
paper = count(128) + count(256)
for r in paper:
    print(f"{r['size']:>4}^3 {r['mode']:<12} {r['step']} step: saved for backward "
          f"{r['saved_mib']:6.0f} MiB, peak {r['peak_mib']:6.0f} MiB")
for size in (128, 256):
    n, h = (worst(paper, size, mode, "peak_mib") for mode in STEPS)
    print(f"{size}^3 iteration peak: naive {n / 1024:.2f} GiB, hierarchical {h / 1024:.2f} GiB "
          f"({n / h:.1f}x)")
ratio = {size: worst(paper, size, "naive", "peak_mib") / worst(paper, size, "hierarchical",
                                                                "peak_mib") for size in (128, 256)}
assert ratio[256] > ratio[128] > 1  # the saving grows with the size (the text below says so)

# %% [markdown]
# Read the numbers as they are. With this kit's networks a naive 256³ iteration at batch 4 needs
# a few GiB of tensors, the hierarchical one well under half of that, and the gap widens with
# every doubling of S: the full-resolution maps of G^H and D^H grow 8× per doubling, and HA-GAN
# computes them for one slab in eight. The naive 256³ step would still fit a large modern GPU;
# what the hierarchy buys is a factor that grows with size, which is what allows bigger batches,
# wider networks, or 512³, on the same GPU (and on the smaller GPUs of 2022). The kit's
# upsampling layers already save memory the published code spends (they never keep an upsampled
# copy), so the published networks need more than these counts.
#
# Now measure small sizes on this machine: the same count on real tensors (it must agree with
# the `meta` count: an assert checks it), the time of one D + G update as the median of several
# runs with the fastest and slowest, and on a GPU the CUDA peak that
# `torch.cuda.max_memory_allocated` reports (which includes the allocator's rounding).

# %%
import statistics

def measure(size, width, batch, device, repeats):
    """Time (median, fastest, slowest) and CUDA peak (GPU only) of one D + G update per mode."""
    cfg, G, D, x, z = networks(size, width, batch, device)
    dev, rows = torch.device(device), []
    for mode, (d_step, g_step) in STEPS.items():
        def both():
            d_step(G, D, x, z, cfg)
            g_step(G, D, x, z, cfg)
        times = bench.time_calls(both, dev, iters=repeats, warmup=1)
        cuda = bench.cuda_peak_mib(both, dev) if dev.type == "cuda" else None
        rows.append({"size": size, "mode": mode, "seconds": statistics.median(times),
                     "fastest": min(times), "slowest": max(times), "peak_mib": cuda})
    return rows

# %%
repeats = 3 if s.scale == "smoke" else 5
costs = []
for size in s.bench_sizes:
    real = count(size, s.bench_width, 1, s.device)  # real tensors on this machine
    meta = count(size, s.bench_width, 1, "meta")
    assert all(abs(a["peak_mib"] - b["peak_mib"]) < 0.01 for a, b in zip(real, meta))
    for r in measure(size, s.bench_width, 1, s.device, repeats):
        r.update(saved_mib=worst(real, size, r["mode"], "saved_mib"), status="ok",
                 counted_peak_mib=worst(real, size, r["mode"], "peak_mib"))
        costs.append(r)
        cuda = f", CUDA peak {r['peak_mib']:.1f} MiB" if r["peak_mib"] is not None else ""
        print(f"{size:>4}^3 {r['mode']:<12} peak {r['counted_peak_mib']:7.1f} MiB{cuda}; "
              f"{r['seconds']:.3f} s ({r['fastest']:.3f}-{r['slowest']:.3f}, {repeats} runs)")

# %%
from hagan.fileio import write_json

write_json(work / "step_costs.json", costs)
write_json(work / "memory_counts.json", paper)  # the paper-scale counts (solution 3 uses them)
fig = viz.plot_step_costs(costs, title=f"one D + G update on {s.device} (width "
                                       f"{s.bench_width:g}, batch 1)")
teaching.show(fig, figures / "02_step_costs.png")

# %% [markdown]
# **Why small sizes save little.** At 32³ or 64³ the full-resolution maps are small, and much of
# a step's memory does not grow with S at all: the parameters' gradients (in the peak), the
# trunk's first layers at 4³ and 8³, the fully connected layers. Both modes pay those in full,
# so the ratio starts near 1 (at the smallest size the hierarchical peak can even be the larger:
# its G step runs G^L, G^H and both parts of D). The saving appears where the full-resolution
# tensors dominate — the counts at 128³ and 256³ above. Times at these sizes are short and
# noisy on a shared CPU: compare medians, and look at the spread before reading a difference.

# %%
for size in s.bench_sizes:
    n, h = ([r for r in costs if r["size"] == size and r["mode"] == m][0] for m in STEPS)
    print(f"{size:>4}^3: peak naive / hierarchical = "
          f"{n['counted_peak_mib'] / h['counted_peak_mib']:.2f}x; median time "
          f"{n['seconds']:.3f} s vs {h['seconds']:.3f} s")

# %% [markdown]
# ## Exercises
#
# 1. **Slab depth.** HA-GAN's slab is S/8 deep. Predict how the activation memory of the
#    high-resolution head G^H grows if the slab were S/16, S/4 or the whole volume, then measure
#    it with `hagan.scaling.slab_cost(size, feature_depth)` (a feature slab d deep gives an image
#    slab 4d deep).
# 2. **Coverage.** With $c \sim \mathcal U\{0, \dots, 7S/8\}$, how many iterations does it take
#    until slice 0 (the very bottom) has been inside a slab at least once, with 99 % probability?
#    Compute it, then check by simulation with `hagan.lessons.draw_slab_starts`.
# 3. **Batch size at 256³.** Memory grows linearly with the batch. With `count`, find the
#    largest batch of each mode whose iteration peak (plus 1.3 GB for weights, gradients and
#    Adam's moments) fits a 24 GB GPU at 256³, width 1.
#
# Solutions: `solutions/02_the_hierarchical_idea_solutions.ipynb`.

# %% [markdown]
# ## Next
#
# `03_training` trains a model with this step (plus two encoders; the CPU preset `demo32` also
# changes D in two ways, explained there) and shows the losses.
