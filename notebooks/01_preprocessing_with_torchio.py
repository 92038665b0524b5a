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
# # 01 · Preprocessing CT and MRI with TorchIO
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/hagan-kit/hagan-kit/blob/main/notebooks/01_preprocessing_with_torchio.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/hagan-kit/hagan-kit/HEAD?labpath=notebooks%2F01_preprocessing_with_torchio.ipynb)
#
# A GAN learns whatever the data show it, including a wrong orientation, a squashed aspect
# ratio or an intensity scale that hides the anatomy. This notebook turns scanner files into the
# prepared-dataset format of notebook `00`.
#
# **You will learn**
# * what Hounsfield units are and how an intensity *window* decides which tissues a CT model can
#   see (shown on a synthetic chest CT phantom made in code);
# * the steps of `hagan.preprocess` — read any format, reorient, window or percentile-scale,
#   trim blank slices, pad to a cube, resize — and the TorchIO transform behind each;
# * how to check a prepared volume against its source, for CT and for MRI.

# %% tags=["parameters"]
work_dir = ""  # shared work dir; empty means $HAGAN_WORK_DIR, else ~/hagan-work
smoke = False  # True: tiny settings that run in seconds on a CPU (CI)
scale = "auto"  # auto (gpu with CUDA, else cpu), smoke, cpu or gpu: the sizes used below
preset = ""  # model preset, which fixes the cube size; empty means the scale's
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
s = teaching.settings(smoke, scale, device, seed, preset=preset)

# %% [markdown]
# ## 1. A chest CT phantom in Hounsfield units
#
# CT measures X-ray attenuation in **Hounsfield units**, $\mathrm{HU} = 1000\,(\mu -
# \mu_\text{water}) / \mu_\text{water}$: air is -1000, water 0, fat about -100, soft tissue
# +40, bone several hundred to over 1000. `hagan.phantom.ct_phantom` draws a torso with these
# values (air, fat, soft tissue, two lungs, spine and ribs) so that we can experiment freely.

# %%
from hagan.phantom import ct_phantom

shape = (32, 48, 48) if smoke else (64, 96, 96)  # (z, y, x) voxels
volume_hu, spacing = ct_phantom(shape, spacing=(2.5, 1.5, 1.5), seed=seed)
print(f"phantom {volume_hu.shape}, spacing {spacing} mm, HU in "
      f"[{volume_hu.min():.0f}, {volume_hu.max():.0f}]")
fig = viz.plot_orthogonal(volume_hu, "CT phantom", vmin=-1000, vmax=1000,
                          cbar_label="Hounsfield units")
teaching.show(fig, figures / "01_phantom_hu.png")

# %% [markdown]
# ## 2. The intensity window
#
# A GAN works on values in [-1, 1], so CT intensities are *windowed*: everything below the low
# end becomes -1, everything above the high end +1, and the range between is stretched linearly.
# HA-GAN's published preprocessing uses **[-1024, 600] HU** (chest CT of COPDGene): lungs and soft
# tissue keep their contrast, and only dense bone saturates. The histogram shows where the window
# falls:

# %%
from hagan.preprocess import CT_WINDOW

fig = viz.plot_histograms({"phantom": volume_hu}, title="HU histogram of the phantom",
                          xlabel="Hounsfield units", window=CT_WINDOW)
teaching.show(fig, figures / "01_hu_histogram.png")

# %% [markdown]
# In TorchIO a window is two transforms: `Clamp` to the window, then `RescaleIntensity` from the
# window to [-1, 1]. The same phantom under three windows — the HA-GAN default, a *lung* window
# and a *bone* window — shows how the choice decides what the model can learn:

# %%
import torch
import torchio as tio

image = tio.ScalarImage(tensor=torch.from_numpy(volume_hu)[None])  # (1, z, y, x) as a TorchIO image
windows = {"HA-GAN [-1024, 600]": CT_WINDOW, "lung [-1000, -400]": (-1000, -400),
           "bone [300, 1500]": (300, 1500)}
windowed = [tio.Compose([tio.Clamp(lo, hi), tio.RescaleIntensity((-1, 1), in_min_max=(lo, hi))])(
    image).data[0] for lo, hi in windows.values()]
fig = viz.plot_volumes(windowed, list(windows),
                       title="one phantom, three windows (scaled to [-1, 1])")
teaching.show(fig, figures / "01_windows.png")

# %% [markdown]
# ## 3. The whole pipeline: files in, prepared dataset out
#
# `hagan.preprocess.preprocess(IN, OUT, size, modality)` does, per file:
# read (NIfTI, NRRD, MHA/MHD, MGZ, DICOM series) → `tio.ToCanonical` (RAS orientation) →
# optional `tio.Resample` to isotropic voxels → window (CT) or percentiles (MRI) → trim blank
# axial slices → `tio.CropOrPad` to a cube *in millimetres* (the aspect ratio is kept) →
# `tio.Resample(antialias=True)` to S³. It never writes into IN; a file it cannot use is
# skipped and listed in `OUT/report.csv`.
#
# We write the phantom in three formats a hospital might hand over, then prepare all of them:

# %%
from hagan.phantom import write_volume

raw_ct = work / "raw_ct"
for name in ("phantom.nii.gz", "phantom.mha", "phantom_dicom"):  # no suffix: a DICOM series
    write_volume(raw_ct / name, volume_hu, spacing)
print(sorted(p.name for p in raw_ct.iterdir()))

# %%
from hagan.preprocess import preprocess

prepared_ct = work / f"prepared_ct{s.size}"
report = preprocess(raw_ct, prepared_ct, size=s.size, modality="ct", progress=False)
print(report.summary())

# %% [markdown]
# All three files give the same cube. The prepared volume next to its source: the same anatomy
# the same way up, only windowed to [-1, 1] and resized to S³ (the body was padded to a square
# field of view first, so it keeps its proportions).

# %%
from hagan.data import PreparedDataset

ct = PreparedDataset(prepared_ct, size=s.size)
print([r.file for r in ct.records])
fig = viz.plot_volumes([windowed[0], ct[0]], ["source, HA-GAN window", f"prepared {s.size}^3"],
                       title="CT: source phantom vs prepared volume")
teaching.show(fig, figures / "01_ct_source_vs_prepared.png")

# %% [markdown]
# ## 4. MRI: percentiles instead of a window
#
# MRI intensities have no physical unit, so a fixed window makes no sense. The kit maps the
# 0.5th and 99.5th percentiles of each volume to -1 and +1 (TorchIO's `RescaleIntensity` with
# percentiles), because the generator's tanh output is bounded to [-1, 1]. Segmentation
# pipelines do otherwise: nnU-Net, for example, z-scores each MRI volume (subtract its mean,
# divide by its standard deviation), which gives no fixed range. Our MRI is nilearn's MNI152
# T1 template (1 mm, 197 × 233 × 189 voxels), the source of the demo cohort.

# %%
import shutil

from hagan.demo import template_path

raw_mri = work / "raw_mri"
raw_mri.mkdir(exist_ok=True)
shutil.copy(template_path(), raw_mri / "mni152_t1.nii.gz")
prepared_mri = work / f"prepared_mri{s.size}"
report = preprocess(raw_mri, prepared_mri, size=s.size, modality="mri", progress=False)
print(report.summary())

# %%
from hagan.data import load_nifti

source = load_nifti(raw_mri / "mni152_t1.nii.gz")  # RAS, kit axis order (z, y, x)
fig = viz.plot_orthogonal(source, "MNI152 source, 1 mm", vmin=0, vmax=float(source.max()),
                          cbar_label="MRI intensity (arbitrary units)")
teaching.show(fig, figures / "01_mri_source.png")

# %%
mri = PreparedDataset(prepared_mri, size=s.size)
teaching.show(viz.plot_orthogonal(mri[0], f"MNI152 prepared, {s.size}^3"),
              figures / "01_mri_prepared.png")

# %% [markdown]
# ## Exercises
#
# 1. **Choose a window.** Prepare `raw_ct` again with the lung window `window=(-1000, -400)`
#    into a new folder. Before looking, predict which tissues end up at exactly +1. Count the
#    fraction of voxels at +1 for both windows.
# 2. **Bad inputs.** Copy `raw_ct` to a new folder, add an empty file `broken.nii.gz` and a 2D
#    image, and prepare it. What does `report.csv` say? Check (with a hash) that the input folder
#    is byte-for-byte unchanged afterwards.
# 3. **Resolution.** Prepare the MNI152 template at 64³ as well. What is the voxel size (mm)
#    at 32³ and at 64³ (`dataset.json` / the report), and which structures disappear at 32³?
#
# Solutions: `solutions/01_preprocessing_with_torchio_solutions.ipynb`.

# %% [markdown]
# ## Next
#
# `02_the_hierarchical_idea` explains how HA-GAN trains on such cubes at 256³ with a fraction of the
# memory a plain 3D GAN needs, and measures it on your machine.
