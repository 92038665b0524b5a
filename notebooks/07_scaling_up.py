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
# # 07 · Scaling up: GPUs, precision, several GPUs, Colab, published weights
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/hagan-kit/hagan-kit/blob/main/notebooks/07_scaling_up.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/hagan-kit/hagan-kit/HEAD?labpath=notebooks%2F07_scaling_up.ipynb)
#
# The authors trained their 256³ model for 80 000 iterations at batch 4 on two V100 GPUs (about
# 22 hours, fp32). The same code runs from a laptop CPU to a multi-GPU node; this notebook shows
# the switches.
#
# **You will learn**
# * how the kit picks the device, and what fp32, bf16 and fp16 (with a gradient scaler) change,
#   measured on this machine;
# * how `torchrun` runs data-parallel training on several GPUs (shown live with two CPU
#   processes);
# * practical tips for Colab;
# * how to load the checkpoints the HA-GAN authors published, with `hagan.official`.

# %% tags=["parameters"]
work_dir = ""  # shared work dir; empty means $HAGAN_WORK_DIR, else ~/hagan-work
smoke = False  # True: tiny settings that run in seconds on a CPU (CI)
scale = "auto"  # auto (gpu with CUDA, else cpu), smoke, cpu or gpu: the sizes used below
preset = ""  # model preset; empty means the scale's (small64 GPU, demo32 CPU, tiny32 smoke)
n_subjects = 0  # demo cohort size, if this notebook has to make it; 0 means the scale's
device = "auto"  # auto, cpu or cuda
seed = 0
ddp_demo = True  # run a 2-process torchrun training for 2 iterations (CPU, gloo)

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
s = teaching.settings(smoke, scale, device, seed, preset=preset, n_subjects=n_subjects)

# %% [markdown]
# ## 1. Device and precision
#
# `device="auto"` (the default of every config) uses CUDA when a GPU is visible and the CPU
# otherwise; `hagan.runtime.resolve_device` is the one place that decides. Precision is a config
# field too:
#
# * `fp32` — full precision, the reference;
# * `bf16` — autocast to bfloat16: same exponent range as fp32, fewer mantissa bits; no loss
#   scaling needed. Fast on Ampere and newer GPUs (A100, L4, H100) and on recent CPUs;
# * `fp16` — autocast to float16 with a `GradScaler` that scales the losses so small gradients do
#   not underflow. The choice for older GPUs such as Colab's T4. CUDA only.
#
# One autocast context (`hagan.runtime.autocast_context`) serves training, generation and the
# benchmarks. Here is one full training iteration (batch 2) in each precision this device runs:

# %%
import torch

from hagan.bench import bench_train

precisions = ["fp32", "bf16"] + (["fp16"] if s.device.type == "cuda" else [])
iters, warmup = (2, 0) if smoke else (7, 1)
runs = {p: bench_train(s.preset, batch_size=2, device=s.device.type, iters=iters, warmup=warmup,
                       precision=p, count_flops=False) for p in precisions}
for p, r in runs.items():
    print(f"{p}: median {r['s_per_iter'] * 1000:.0f} ms per iteration "
          f"(fastest {r['s_fastest'] * 1000:.0f}, slowest {r['s_slowest'] * 1000:.0f}; {iters} runs)")
fig = viz.plot_bars({p: r["s_per_iter"] * 1000 for p, r in runs.items()}, xlabel="precision",
                    title=f"one {s.preset} training iteration (batch 2) on {s.device}, median",
                    ylabel="milliseconds per iteration")
teaching.show(fig, figures / "07_precision.png")

# %%
fp32, bf16 = runs["fp32"], runs["bf16"]
apart = bf16["s_slowest"] < fp32["s_fastest"] or fp32["s_slowest"] < bf16["s_fastest"]
print(f"bf16 / fp32 median time: {bf16['s_per_iter'] / fp32['s_per_iter']:.2f}; the two ranges "
      + ("do not overlap: a real difference on this machine" if apart else
         "overlap: no difference this measurement can show"))

# %% [markdown]
# Read the medians *with* their spread: on a shared or busy machine (Binder, a laptop running
# other work) one iteration can take twice as long as the next, and a difference smaller than
# the spread is noise. Whether bf16 helps depends on the hardware: CPUs without bf16 arithmetic
# (AVX-512 BF16 or AMX) emulate it, and the CPU presets' small convolutions are dominated by
# overheads; GPUs with bf16 tensor cores (A100, L4, H100) run the large paper-size convolutions
# faster and keep activations at half the size (`benchmarks/RESULTS.md` has measured numbers). Further
# switches: `channels_last=True` (a memory layout cuDNN prefers for 3D
# convolutions) and `compile=True` (`torch.compile`). Measure before you trust any of them:
# `hagan bench --preset paper128 --device cuda --precision bf16`.
#
# ## 2. Several GPUs: `torchrun` and DDP
#
# Data-parallel training runs one process per GPU. Each process holds a full copy of the four
# networks, draws its own batch (`batch_size` is *per process*), and after every backward pass
# the gradients are averaged across processes (an all-reduce), so all copies stay identical.
# Only rank 0 writes the training log (`metrics.jsonl`, TensorBoard) and the checkpoints;
# seeds are offset per rank so the processes draw different latents and slabs. Each process
# still prints its own closing lines, so below you see "trained to iteration 2" once per rank,
# each with the losses of its own last batch. The command on a node with 4 GPUs:
#
# ```
# torchrun --nproc_per_node=4 -m hagan train --preset paper256 --data DATA --out RUN
# ```
#
# The same machinery works on the CPU with the gloo backend, so we can watch it here with two
# processes and two iterations. The R1 penalty of the `demo32` preset (`r1_gamma`) is refused in
# distributed training (its double backward through DDP is untested), so the command turns it
# off; the paper presets do not use it.

# %%
import shutil

data = teaching.ensure_demo(work, s)
ddp_run = work / "run_ddp_demo"
shutil.rmtree(ddp_run, ignore_errors=True)  # a fresh run each time, to see it train
command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "hagan",
           "train", "--preset", s.preset, "--data", data, "--out", ddp_run, "--set",
           "iterations=2", "--set", "device=cpu", "--set", "progress=false", "--set",
           "r1_gamma=0"]
if ddp_demo:
    teaching.run_command(command)

# %% [markdown]
# ## 3. Colab tips
#
# * *Runtime → Change runtime type → GPU.* The setup cell installs the kit; PyTorch with CUDA is
#   already there. The settings line above then says `scale gpu`.
# * Sessions end without warning. Put the work dir on Google Drive so checkpoints survive:
#   `from google.colab import drive; drive.mount("/content/drive")`, then
#   `import os; os.environ["HAGAN_WORK_DIR"] = "/content/drive/MyDrive/hagan-work"` before
#   running the setup cell (or pass `work_dir`). Training resumes from the last checkpoint.
# * T4 GPUs: `precision="fp16"`; A100/L4: `precision="bf16"`. `hagan bench` tells you the speed
#   and the peak memory before you commit to a long run.
# * Memory: the authors trained the 256³ model at batch 4 split over two V100s (notebook `02`
#   counts what one iteration needs). On one 16 GB GPU, measure first (`hagan bench --preset paper256
#   --batch-size 2 --device cuda --precision fp16`) and lower the batch size if needed.
#
# ## 4. Loading the published HA-GAN weights
#
# The authors released checkpoints of the original code (GSP brain MRI and COPDGene lung CT,
# 80 000 iterations each). Their
# files are named `G_iter80000.pth`, `E_iter80000.pth`, …; each holds `{"model": state_dict}`
# with every weight name prefixed by `module.` (the networks were wrapped in `nn.DataParallel`),
# and their layer names differ from the kit's. `hagan.official.load_official` renames every weight,
# checks every name and shape, and loads them into kit networks, reading the files with
# `weights_only=True` (no code in a checkpoint can run).
#
# The real files cannot be downloaded here, so we make one **in the published layout** from a
# kit generator with random weights (`to_official_state_dict` is the inverse mapping), then
# import it as if it came from the authors:

# %%
from hagan.models import Generator
from hagan.official import load_official, to_official_state_dict

torch.manual_seed(seed)
original = Generator(hagan.preset("paper128"))  # 52.5 M parameters, random weights
published = {"model": {f"module.{k}": v for k, v in
                       to_official_state_dict(original, "G", 128).items()}}
path = work / "official" / "G_iter80000.pth"
path.parent.mkdir(exist_ok=True)
torch.save(published, path)
print(f"{path.name}: {path.stat().st_size / 1e6:.0f} MB, first keys {list(published['model'])[:2]}")

# %%
imported = load_official(128, generator=path)
same = all(torch.equal(a, b) for a, b in zip(original.state_dict().values(),
                                             imported.generator.state_dict().values()))
print(f"imported config: preset {imported.config.preset}, size {imported.config.size}; "
      f"weights identical to the original: {same}")
path.unlink()  # 210 MB we no longer need

# %% [markdown]
# With real files, the command line does the same and writes a kit checkpoint that `hagan
# generate`, `hagan evaluate` and these notebooks accept:
#
# ```
# hagan import-official --size 256 --generator G_iter80000.pth --encoder E_iter80000.pth \
#     --sub-encoder Sub_E_iter80000.pth --out gsp256.pt
# ```

# %% [markdown]
# ## Exercises
#
# 1. **Who gets which volume?** With `torchrun --nproc_per_node=2`, each rank reads a different
#    part of one shuffled stream (`hagan.data.InfiniteSampler`). List the dataset indices ranks 0
#    and 1 read in their first 3 batches of 2 volumes. What is the effective batch size?
# 2. **How much does bf16 change a volume?** Generate one volume from the same $z$ with fp32 and
#    with bf16 autocast (`hagan.generate.sample(..., precision=...)`) and report the largest and
#    the mean absolute difference.
# 3. **A file that does not fit.** Write a published-layout 128³ sub-encoder (E^G) file and try
#    to load it as a 256³ model. Read the error message: does it tell you how to fix it?
#
# Solutions: `solutions/07_scaling_up_solutions.ipynb`.

# %% [markdown]
# ## Next
#
# You have the whole loop: data, preprocessing, the hierarchical idea, training, inference,
# evaluation, feature analysis and scale. Train `small64` or the paper's `paper128` on your own
# data (`hagan preprocess`, then notebook `03` with `preset="paper128"`), and see
# `docs/teaching.md` for a course plan built on these notebooks.
