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
# # Solutions · 00 Setup and a tour of the demo data
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/hagan-kit/hagan-kit/blob/main/notebooks/solutions/00_setup_and_data_tour_solutions.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/hagan-kit/hagan-kit/HEAD?labpath=notebooks%2Fsolutions%2F00_setup_and_data_tour_solutions.ipynb)
#
# Worked answers to the exercises of notebook `00`. Try them yourself first.
#
# **You will learn** how the voxel size follows from the cube size, how much the demo subjects
# vary, and where the synthetic lesion of the conditional cohort sits.

# %% tags=["parameters"]
work_dir = ""  # shared work dir; empty means $HAGAN_WORK_DIR, else ~/hagan-work
smoke = False  # True: tiny settings that run in seconds on a CPU (CI)
scale = "auto"  # auto (gpu with CUDA, else cpu), smoke, cpu or gpu: the sizes used below
preset = ""  # model preset (fixes the cube size); empty: small64 on GPU, demo32 on CPU, tiny32 smoke
n_subjects = 0  # volumes in the demo cohort; 0 means the scale default
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
s = teaching.settings(smoke, scale, device, seed, preset=preset, n_subjects=n_subjects)

# %% [markdown]
# ## Exercise 1: voxel size
#
# Every cohort is cut from the same cube of anatomy (the brain plus a margin), so the field of
# view in millimetres is fixed: spacing × size is constant. Doubling the size halves the spacing.
# We build 2 subjects at the other size (64³ next to a 32³ cohort, 32³ otherwise) and check.

# %%
from hagan.data import read_info
from hagan.demo import make_demo_dataset

data = teaching.ensure_demo(work, s)
other = 64 if s.size == 32 else 32
extra = make_demo_dataset(work / f"exercise_demo{other}", n=2, size=other, seed=seed,
                          progress=False, workers=1)
for root in (data, extra):
    info = read_info(root)
    print(f"{info['size']:>3}^3: {info['spacing_mm'][0]:.3f} mm per voxel, field of view "
          f"{info['size'] * info['spacing_mm'][0]:.1f} mm")

# %% [markdown]
# ## Exercise 2: how much is brain?
#
# The fraction of voxels above -0.95 varies by several percent between subjects: the random
# affine transform scales each axis by up to ±6 % (so the volume by up to about ±18 %), and the
# elastic deformation adds local changes.

# %%
import numpy as np

from hagan.data import PreparedDataset

dataset = PreparedDataset(data, size=s.size)
fractions = np.array([float((dataset[i] > -0.95).float().mean()) for i in range(len(dataset))])
print("brain fraction per subject:", np.round(fractions, 3))
print(f"mean {fractions.mean():.3f}, std {fractions.std():.3f}, "
      f"range {fractions.min():.3f} .. {fractions.max():.3f}")

# %% [markdown]
# ## Exercise 3: a lesion class
#
# The lesion is a smooth ellipsoid as bright as the brightest tissue of the template, placed at
# one of a few white-matter sites of the template. Where is it in this subject? The brightest
# voxel is no answer (bright tissue and noise compete). The demo cohort can render the *same*
# subject without its lesion (the lesion draws from its own random stream), so the difference
# of the two is the lesion alone; we cut through its centre, and show a healthy subject there.

# %%
from hagan.data import read_info
from hagan.demo import demo_volume, template_cube

lesion_data = teaching.ensure_demo(work, s, lesion_fraction=0.5, made_by="notebook 04")
cohort = PreparedDataset(lesion_data, size=s.size, num_classes=2)
labels = [cohort[i][1] for i in range(len(cohort))]
index = labels.index(1)
sick, healthy = cohort[index][0], cohort[labels.index(0)][0]
twin = demo_volume(template_cube(s.size), s.size, read_info(lesion_data)["seed"], index,
                   lesion=False)  # subject `index` rendered without its lesion
lesion = sick[0].numpy() - twin.astype(np.float32)  # (S, S, S): zero outside the lesion
centre = tuple(int(i) for i in np.unravel_index(np.argmax(lesion), lesion.shape))
print(f"labels: {labels}; subject {index}: lesion centre at (z, y, x) {centre}, "
      f"{int((lesion > 0.05).sum())} voxels brighter by > 0.05")

# %%
fig = viz.plot_volumes([sick, healthy], [f"label 1 (subject {labels.index(1)})",
                                         f"label 0 (subject {labels.index(0)})"],
                       index=centre, title="a lesion subject and a healthy one, through the lesion")
teaching.show(fig, figures / "sol00_lesion.png")

# %% [markdown]
# ## Next
#
# Back to `01_preprocessing_with_torchio`.
