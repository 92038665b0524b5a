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
# # 04 · Inference: sampling, conditioning, reconstruction, interpolation, NIfTI
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/hagan-kit/hagan-kit/blob/main/notebooks/04_inference.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/hagan-kit/hagan-kit/HEAD?labpath=notebooks%2F04_inference.ipynb)
#
# Training never built a full-resolution volume; inference does, in one pass:
# $\hat x = G^H(G^A(z))$, because without a backward pass the memory is affordable.
#
# **You will learn**
# * to sample full-resolution volumes from a trained model, and to condition them on a class;
# * to reconstruct a real volume through the encoders, $x \mapsto \hat z = E^G(E^H(x)) \mapsto G(\hat z)$;
# * to walk through latent space (spherical interpolation);
# * to export NIfTI files with a correct affine and look at them in a 3D viewer.

# %% tags=["parameters"]
work_dir = ""  # shared work dir; empty means $HAGAN_WORK_DIR, else ~/hagan-work
smoke = False  # True: tiny settings that run in seconds on a CPU (CI)
scale = "auto"  # auto (gpu with CUDA, else cpu), smoke, cpu or gpu: the sizes used below
preset = ""  # model preset; empty means the scale's (small64 GPU, demo32 CPU, tiny32 smoke)
n_subjects = 0  # demo cohort size, if this notebook has to make it; 0 means the scale's
iterations = 0  # training iterations if notebook 03's model is missing; 0 means the scale's
cond_iterations = 0  # iterations of the conditional model; 0 means the scale's (1500 GPU, 1000 CPU, 10 smoke)
n_samples = 0  # volumes to sample; 0 means the scale's
device = "auto"  # auto, cpu or cuda
seed = 0
interactive = True  # 3D viewer; False draws static figures (papermill, make demo)

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
# ## 1. The model
#
# The run of notebook `03` (trained now, briefly, if it is missing). `load_models` rebuilds all
# four networks from the checkpoint alone, in eval mode. Given the run folder, it takes the
# checkpoint the run kept by validation (`checkpoints/best.pt`, notebook `03` section 7) when
# there is one, else the newest; the line below names it.

# %%
from hagan.checkpoint import load_models

data = teaching.ensure_demo(work, s)
run = teaching.ensure_run(work, s, data)
cfg, nets = load_models(run, device=s.device)
G, E, SubE = nets["G"], nets["E"], nets["SubE"]

# %% [markdown]
# ## 2. Sampling
#
# $z \sim \mathcal N(0, I)$, then `G.generate(z)` → (B, 1, S, S, S) in [-1, 1]. The seed makes
# the draw reproducible; `batch_size` trades memory for speed (a 256³ volume needs about 2 GB
# in fp32 on the GPU). If notebook `03` found **mode collapse** (its section 6 verdict; `tiny32`
# collapses on the demo cohort; `demo32`'s kept checkpoint met both targets at 5 of 6 seeds
# measured, `make demo`'s among them), the samples below look alike whatever z is: that is the
# collapse, not a bug in sampling, and the interpolations and reconstructions below inherit it.

# %%
import torch

from hagan.generate import sample

volumes = sample(G, s.n_samples, batch_size=2, seed=seed, device=s.device)
print(f"{tuple(volumes.shape)}, values in [{volumes.min():.2f}, {volumes.max():.2f}]")
fig = viz.plot_volumes(list(volumes[:3]), [f"sample {i}" for i in range(3)],
                       title=f"{cfg.preset}: three samples (seed {seed})")
teaching.show(fig, figures / "04_samples.png")

# %% [markdown]
# ## 3. Conditional sampling
#
# With `num_classes = K > 0` a one-hot label $y$ is joined to $z$, and both D^H and D^L get an
# auxiliary classification head (AC-GAN): D learns the class of real volumes (weight 1.0), G is
# rewarded when its volumes are classified as the label it was given (weight 0.1). We train a
# small conditional model on a demo cohort in which half the subjects carry a synthetic
# white-matter lesion (label 1) — briefly, so expect a hint of the lesion at best.

# %%
lesion_data = teaching.ensure_demo(work, s, lesion_fraction=0.5, made_by=None)
cond_run = teaching.ensure_run(work, s, lesion_data, conditional=True, made_by=None)
_, cond_nets = load_models(cond_run, device=s.device)
z = torch.randn(2, cfg.latent_dim, generator=torch.Generator().manual_seed(seed))
healthy = sample(cond_nets["G"], 2, labels=0, z=z)
lesion = sample(cond_nets["G"], 2, labels=1, z=z)  # the same z, the other label

# %%
fig = viz.plot_volumes([healthy[0], lesion[0], healthy[1], lesion[1]],
                       ["z1, label 0 (healthy)", "z1, label 1 (lesion)", "z2, label 0 (healthy)",
                        "z2, label 1 (lesion)"], title="conditional samples: same z, two labels")
teaching.show(fig, figures / "04_conditional.png")

# %% [markdown]
# ## 4. Reconstruction through the encoders
#
# The encoders learned to invert the generator (notebook `03`): E^H maps an image to trunk
# features, E^G maps features to a latent vector. Regenerating from that vector reconstructs
# the input; the L1 error says how much of a real volume the model can express.

# %%
from hagan.data import PreparedDataset
from hagan.generate import reconstruct

dataset = PreparedDataset(data, size=cfg.size)
real = torch.stack([dataset[i] for i in range(2)])  # (2, 1, S, S, S)
rebuilt = reconstruct(G, E, SubE, real)
print("L1 error per volume:", [f"{e:.3f}" for e in (rebuilt - real).abs().mean((1, 2, 3, 4))])
fig = viz.plot_volumes([real[0], rebuilt[0], real[1], rebuilt[1]],
                       ["real 0", "reconstruction 0", "real 1", "reconstruction 1"],
                       title="real volumes and their reconstructions G(E^G(E^H(x)))")
teaching.show(fig, figures / "04_reconstruction.png")

# %% [markdown]
# ## 5. Latent interpolation
#
# For Gaussian $z$ in many dimensions almost all the mass lies near the sphere of radius
# $\sqrt{d}$; a straight line between two draws passes closer to the origin, where the generator
# has rarely been. Spherical interpolation (slerp) stays on the shell:
# $z_t = \frac{\sin((1-t)\Omega)}{\sin\Omega} z_0 + \frac{\sin(t\Omega)}{\sin\Omega} z_1$,
# $\cos\Omega = \hat z_0 \cdot \hat z_1$.

# %%
from hagan.generate import interpolate

z0, z1 = torch.randn(2, cfg.latent_dim, generator=torch.Generator().manual_seed(seed + 1))
path = interpolate(G, z0, z1, steps=4)  # (4, 1, S, S, S)
fig = viz.plot_volumes(list(path), [f"t = {t:.2f}" for t in torch.linspace(0, 1, 4)],
                       title="spherical interpolation from z0 (t = 0) to z1 (t = 1)")
teaching.show(fig, figures / "04_interpolation.png")

# %% [markdown]
# ## 6. NIfTI export
#
# `save_nifti` writes a volume with an RAS+ affine (as both qform and sform) and the voxel size
# of the training data, so that any viewer (3D Slicer, ITK-SNAP, FSLeyes, nilearn) shows it the
# right way up and at the right physical size. `nifti_settings` reads both from the dataset's
# `dataset.json`; for CT it also returns the HU window, and the samples are written in Hounsfield
# units (the preprocessing window inverted). MRI has no physical unit: its samples keep the
# model's values in [-1, 1].

# %%
import nibabel as nib

from hagan.data import load_nifti, nifti_settings, read_info, save_nifti

settings = nifti_settings(read_info(data))  # {"spacing": (z, y, x) mm, "hu_window": CT or None}
paths = [save_nifti(v, work / "samples" / f"sample_{i:04d}.nii.gz", **settings)
         for i, v in enumerate(volumes)]
img = nib.load(paths[0])
print(f"{len(paths)} files in {paths[0].parent}; {img.shape}, voxel {img.header.get_zooms()} mm, "
      f"orientation {''.join(nib.aff2axcodes(img.affine))}")
back = load_nifti(paths[0], settings["hu_window"])  # HU -> [-1, 1] again for CT
print("round trip max error:", float(abs(back - volumes[0, 0].numpy()).max()))

# %% [markdown]
# In a live notebook, nilearn's `view_img` gives a 3D viewer (click to move the cross-hair);
# without a browser (papermill, `make demo`) we draw the orthogonal slices instead.

# %%
if interactive:
    from nilearn.plotting import view_img

    view = view_img(str(paths[0]), bg_img=False, cmap="gray", symmetric_cmap=False,
                    vmin=-1, vmax=1, threshold=None, black_bg=True, title="sample_0000.nii.gz")
else:
    view = viz.plot_orthogonal(back, "sample_0000.nii.gz, read back")
teaching.show(view, figures / "04_nifti.png")

# %% [markdown]
# ## Exercises
#
# 1. **Linear or spherical?** Compute $\lVert z_t \rVert$ along the linear and the spherical path
#    between two draws ($d$ = `cfg.latent_dim`). How far below $\sqrt d$ does the linear path dip
#    at $t = 0.5$? Predict first.
# 2. **Can the encoders invert the generator?** Generate volumes from known $z$, encode them
#    with `hagan.generate.encode` and compare $\hat z$ with $z$ (cosine similarity), and the
#    re-generated volumes with the originals (L1).
# 3. **Where does the label act?** With the conditional model, average $G(z, 1) - G(z, 0)$ over
#    several $z$ and show the mean difference volume. Where is it largest?
#
# Solutions: `solutions/04_inference_solutions.ipynb`.

# %% [markdown]
# ## Next
#
# `05_evaluation` measures how close the samples are to real data: FID, MMD, MS-SSIM
# diversity and a memorisation check, each next to its real-vs-real baseline.
