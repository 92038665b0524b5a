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
# # 00 · Setup and a tour of the demo data
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/hagan-kit/hagan-kit/blob/main/notebooks/00_setup_and_data_tour.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/hagan-kit/hagan-kit/HEAD?labpath=notebooks%2F00_setup_and_data_tour.ipynb)
#
# This course builds **HA-GAN**, the Hierarchical Amortized GAN of Sun et al. (*IEEE JBHI* 2022),
# which synthesises whole 3D medical volumes at up to 256³ voxels. The notebooks run in order and
# share one *work dir*: this one makes the data, `03` trains a model on it, `04` samples from it,
# `05` and `06` evaluate it.
#
# **You will learn**
# * how to set up the kit on your machine, on Binder or on Colab, and where it writes files;
# * what a *prepared dataset* is: `volumes/*.npy`, `manifest.csv`, `dataset.json`;
# * the axis and intensity conventions every later notebook relies on;
# * what the offline demo cohort is (nilearn's MNI152 brain template, randomly deformed with TorchIO).

# %% tags=["parameters"]
work_dir = ""  # shared work dir; empty means $HAGAN_WORK_DIR, else ~/hagan-work
smoke = False  # True: tiny settings that run in seconds on a CPU (CI)
scale = "auto"  # auto (gpu with CUDA, else cpu), smoke, cpu or gpu: the sizes used below
preset = ""  # model preset (fixes the cube size); empty: small64 on GPU, demo32 on CPU, tiny32 smoke
n_subjects = 0  # volumes in the demo cohort; 0 means the scale's (64 GPU, 32 CPU, 8 smoke)
device = "auto"  # auto, cpu or cuda
seed = 0
interactive = True  # sliders; False draws static figures (papermill, make demo)

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
work = teaching.work_dir(work_dir)  # created if needed
figures = work / "figures"
s = teaching.settings(smoke, scale, device, seed, preset=preset, n_subjects=n_subjects)
print("work dir:", work)

# %% [markdown]
# ## 1. Where things go
#
# Every notebook reads and writes inside the work dir printed above, never next to the notebook
# itself. Set the environment variable `HAGAN_WORK_DIR` (or the `work_dir` parameter) to move it,
# e.g. to a Google Drive folder on Colab so that a trained model survives the session.
# The `scale` parameter picks sizes that fit the machine: `gpu` (Colab), `cpu` (Binder, laptops)
# or `smoke` (the CI run of every notebook). The line above says which one is in use.
#
# ## 2. The demo cohort
#
# Real brain MRI cannot ship with a course, so the kit makes a small cohort offline: nilearn's
# MNI152 template (an average brain, 1 mm) is cut to a cube, then every "subject" gets a random
# affine and elastic deformation, a bias field, a gamma change and noise (TorchIO transforms),
# and is resized to the model's cube of side S. The next cell builds it, or reuses it when it
# already exists in the work dir.

# %%
data = teaching.ensure_demo(work, s)

# %% [markdown]
# ## 3. Anatomy of a prepared dataset
#
# Every dataset the kit trains on, demo or real, has the same layout:
# `volumes/*.npy` holds one S × S × S array per volume (float16, memory-mapped while training),
# `manifest.csv` lists the files with their label and source, and `dataset.json` records how the
# data were made (size, modality, voxel spacing, label names, transforms).

# %%
from hagan.data import PreparedDataset, read_info, read_manifest

info = read_info(data)
print({k: info[k] for k in ("size", "modality", "spacing_mm", "label_names", "source")})
print(f"{len(read_manifest(data))} volumes; first manifest row: {read_manifest(data)[0]}")

# %% [markdown]
# `PreparedDataset` turns the folder into a PyTorch dataset. Each item is a tensor of shape
# **(1, S, S, S)** (one channel) with values in **[-1, 1]**: -1 is background, brighter tissue is
# higher. The three spatial axes are always **(z, y, x) = (inferior → superior,
# posterior → anterior, left → right)**; axis z is the *axial* axis along which HA-GAN cuts its
# slabs (notebook 02).

# %%
dataset = PreparedDataset(data, size=s.size)
x = dataset[0]
print(f"{len(dataset)} items; item 0: shape {tuple(x.shape)}, dtype {x.dtype}, "
      f"values in [{x.min():.2f}, {x.max():.2f}]")

# %% [markdown]
# The three orthogonal central slices of one subject. Panels are named by view and slice index;
# axes carry the anatomical directions.

# %%
teaching.show(viz.plot_orthogonal(x, title="demo subject 0"), figures / "00_subject0.png")

# %% [markdown]
# Three subjects side by side: same anatomy, different shape, size and brightness. This
# variation is what the GAN has to learn.

# %%
subjects = [dataset[i] for i in range(3)]
fig = viz.plot_volumes(subjects, [f"subject {i}" for i in range(3)], title="three demo subjects")
teaching.show(fig, figures / "00_three_subjects.png")

# %% [markdown]
# The intensity histogram shows the value convention: a large spike at -1 (background), then
# the brain's tissues spread over (-1, 1].

# %%
fig = viz.plot_histograms({f"subject {i}": v for i, v in enumerate(subjects)},
                          title="intensity histograms of three demo subjects",
                          xlabel="intensity (scaled to [-1, 1])")
teaching.show(fig, figures / "00_histograms.png")

# %% [markdown]
# Browse a volume with sliders (a static figure when the notebook runs without a browser).

# %%
teaching.show(viz.slice_viewer(x, "demo subject 0", interactive=interactive),
              figures / "00_viewer.png")

# %% [markdown]
# ## Exercises
#
# 1. **Voxel size.** Build a cohort of 2 subjects at 64³ in `work / "exercise_demo64"`
#    (`hagan.demo.make_demo_dataset`). Before looking, predict its `spacing_mm` from the 32³
#    cohort's. Check your prediction.
# 2. **How much is brain?** What fraction of the voxels of each subject is brain (value > -0.95)?
#    Does it vary much between subjects, and why?
# 3. **A lesion class.** Build a small cohort with `lesion_fraction=0.5` and show a subject with
#    label 1 ("lesion") next to one with label 0. Where is the lesion?
#
# Solutions: `solutions/00_setup_and_data_tour_solutions.ipynb`.

# %% [markdown]
# ## Next
#
# `01_preprocessing_with_torchio` shows how real CT and MRI files become a prepared dataset like
# this one (intensity windows, reorientation, resizing), using a synthetic CT phantom.
