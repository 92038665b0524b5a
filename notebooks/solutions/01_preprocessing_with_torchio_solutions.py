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
# # Solutions · 01 Preprocessing CT and MRI with TorchIO
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/hagan-kit/hagan-kit/blob/main/notebooks/solutions/01_preprocessing_with_torchio_solutions.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/hagan-kit/hagan-kit/HEAD?labpath=notebooks%2Fsolutions%2F01_preprocessing_with_torchio_solutions.ipynb)
#
# Worked answers to the exercises of notebook `01`. Try them yourself first.
#
# **You will learn** how the window decides what saturates, how the preprocessing reports bad
# files without touching its input, and what resolution costs.

# %% tags=["parameters"]
work_dir = ""  # shared work dir; empty means $HAGAN_WORK_DIR, else ~/hagan-work
smoke = False  # True: tiny settings that run in seconds on a CPU (CI)
scale = "auto"  # auto (gpu with CUDA, else cpu), smoke, cpu or gpu: the sizes used below
preset = ""  # model preset (fixes the cube size); empty: small64 on GPU, demo32 on CPU, tiny32 smoke
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
# ## Exercise 1: choose a window
#
# With the lung window [-1000, -400] HU everything denser than -400 HU — fat (-100), soft tissue
# (+40) and bone — saturates at +1: the whole body wall and the mediastinum become one flat
# bright region, and only the lungs keep their texture. With the HA-GAN window only bone
# (> 600 HU) can saturate, and after resizing to S³ hardly any voxel does: the anti-aliased
# resize averages the phantom's thin bone with the tissue around it (the printout says how many).

# %%
from hagan.phantom import ct_phantom, write_volume
from hagan.preprocess import preprocess

shape = (32, 48, 48) if smoke else (64, 96, 96)
volume_hu, spacing = ct_phantom(shape, spacing=(2.5, 1.5, 1.5), seed=seed)
raw = write_volume(work / "exercise_ct" / "phantom.nii.gz", volume_hu, spacing).parent
outputs = {"HA-GAN [-1024, 600]": (work / "exercise_ct_default", None),
           "lung [-1000, -400]": (work / "exercise_ct_lung", (-1000, -400))}
for name, (out, window) in outputs.items():
    preprocess(raw, out, size=s.size, modality="ct", window=window, progress=False)

# %%
from hagan.data import PreparedDataset

prepared = {name: PreparedDataset(out, size=s.size)[0] for name, (out, _) in outputs.items()}
for name, v in prepared.items():
    print(f"{name:<20} voxels at +1: {float((v >= 0.999).float().mean()):7.2%}")
fig = viz.plot_volumes(list(prepared.values()), list(prepared), title="two windows, prepared")
teaching.show(fig, figures / "sol01_windows.png")

# %% [markdown]
# ## Exercise 2: bad inputs
#
# An empty file cannot be read and a 2D image is not a volume: both are listed in `report.csv`
# with a one-line reason and skipped, the good file is prepared, and the input folder is not
# modified (same hash before and after).

# %%
import hashlib
import shutil

import nibabel as nib
import numpy as np


def folder_hash(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(p.name.encode() + (p.read_bytes() if p.is_file() else b""))
    return h.hexdigest()[:16]


messy = work / "exercise_ct_messy"
shutil.rmtree(messy, ignore_errors=True)
shutil.copytree(raw, messy)
(messy / "broken.nii.gz").write_bytes(b"")
nib.save(nib.Nifti1Image(np.zeros((32, 32), np.float32), np.eye(4)), messy / "flat2d.nii.gz")

# %%
before = folder_hash(messy)
report = preprocess(messy, work / "exercise_ct_messy_out", size=s.size, modality="ct",
                    progress=False)
print(report.summary())
print((work / "exercise_ct_messy_out" / "report.csv").read_text())
print(f"input folder hash before {before}, after {folder_hash(messy)}")

# %% [markdown]
# ## Exercise 3: resolution
#
# After padding to a cube, the MNI152 head's cube edge in mm divided by 32 or 64 is the voxel
# size (printed below: halving the voxel count per side doubles the voxel's edge). At 32³ the
# cortex folds, the ventricles' thin horns and the cerebellum's
# leaves blur into a few voxels; at 64³ they start to appear.

# %%
from hagan.data import read_info
from hagan.demo import template_path

raw_mri = work / "raw_mri"
raw_mri.mkdir(exist_ok=True)
if not (raw_mri / "mni152_t1.nii.gz").is_file():  # notebook 01 normally copies it
    shutil.copy(template_path(), raw_mri / "mni152_t1.nii.gz")
volumes = {}
for size in (32, 64):
    out = work / f"prepared_mri{size}"
    preprocess(raw_mri, out, size=size, modality="mri", progress=False)
    volumes[size] = PreparedDataset(out, size=size)[0]
    print(f"{size}^3: voxel {read_info(out)['spacing_mm'][0]:.2f} mm")

# %%
fig = viz.plot_volumes(list(volumes.values()), [f"{k}^3" for k in volumes],
                       title="MNI152 prepared at 32^3 and 64^3")
teaching.show(fig, figures / "sol01_resolution.png")

# %% [markdown]
# ## Next
#
# Back to `02_the_hierarchical_idea`.
