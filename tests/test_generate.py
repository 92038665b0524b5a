"""Generation: sampling, conditional sampling, reconstruction, interpolation, NIfTI export."""

import nibabel as nib
import numpy as np
import pytest
import torch

from hagan.config import preset
from hagan.generate import (
    interpolate,
    load_nifti,
    reconstruct,
    sample,
    save_nifti,
    slerp,
    volume_affine,
)
from hagan.models import Generator, build_models


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return build_models(preset("tiny32"))


def test_sample_shapes_range_and_seed(nets):
    a = sample(nets["G"], 3, batch_size=2, seed=1)
    b = sample(nets["G"], 3, batch_size=3, seed=1)
    assert a.shape == (3, 1, 32, 32, 32) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1
    assert torch.allclose(a, b, atol=1e-4)  # batching changes only float rounding
    assert not torch.equal(a, sample(nets["G"], 3, seed=2))


def test_generate_is_the_high_res_head_on_all_features(nets):
    """Inference runs G^H once on the whole feature volume (no stitching), as in the paper."""
    G = nets["G"].eval()
    z = torch.randn(1, 64)
    with torch.no_grad():
        vol = G.generate(z)
        feats = G.features(z)
        assert torch.equal(vol, G.decode_slab(feats))
        slab, low = G(z, crop=8)
    assert slab.shape == (1, 1, 4, 32, 32) and low.shape == (1, 1, 8, 8, 8)


def test_conditional_sampling_needs_labels():
    cfg = preset("tiny32", num_classes=2)
    G = build_models(cfg)["G"]
    assert sample(G, 2, labels=1).shape == (2, 1, 32, 32, 32)
    with pytest.raises(ValueError, match="conditional model with 2 classes"):
        sample(G, 2)
    with pytest.raises(ValueError, match=r"class indices in \[0, 1\]"):
        sample(G, 2, labels=5)


def test_reconstruction_and_interpolation(nets):
    x = torch.rand(2, 1, 32, 32, 32) * 2 - 1
    rec = reconstruct(nets["G"], nets["E"], nets["SubE"], x)
    assert rec.shape == x.shape
    z0, z1 = torch.randn(64), torch.randn(64)
    path = interpolate(nets["G"], z0, z1, steps=4)
    assert path.shape == (4, 1, 32, 32, 32)
    assert torch.allclose(slerp(z0, z1, 0.0), z0, atol=1e-5)
    assert torch.allclose(slerp(z0, z1, 1.0), z1, atol=1e-5)


def test_nifti_round_trip_affine_and_orientation(tmp_path):
    vol = np.zeros((32, 32, 32), np.float32)
    vol[30, 5, 2] = 1.0  # superior, posterior, left corner
    path = save_nifti(vol, tmp_path / "v.nii.gz", spacing=(2.0, 1.5, 1.0))
    img = nib.load(str(path))
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert np.allclose(img.header.get_zooms(), (1.0, 1.5, 2.0))
    assert np.allclose(img.affine, volume_affine(32, (2.0, 1.5, 1.0)))
    # voxel (x=2, y=5, z=30) lies left (x<0), posterior (y<0) and superior (z>0) of the centre
    world = img.affine @ np.array([2, 5, 30, 1])
    assert world[0] < 0 and world[1] < 0 and world[2] > 0
    assert np.array_equal(load_nifti(path), vol)


@pytest.mark.parametrize("c_out", [7, 11])
def test_subpixel_upsample_conv_equals_upsample_then_conv(c_out):
    """Both forms used by G (sub-pixel below MIN_TRANSPOSED_CHANNELS output channels, transposed
    from there on), forward and gradients, are the paper's upsample + conv."""
    import torch.nn.functional as F

    from hagan.models import MIN_TRANSPOSED_CHANNELS, upsample_conv3d

    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 4, 6, requires_grad=True)
    w = torch.randn(c_out, 5, 3, 3, 3, requires_grad=True)
    b = torch.randn(c_out, requires_grad=True)
    assert (c_out >= MIN_TRANSPOSED_CHANNELS) == (c_out == 11)
    ref = F.conv3d(F.interpolate(x, scale_factor=2, mode="nearest"), w, b, padding=1)
    out = upsample_conv3d(x, w, b)
    assert out.shape == ref.shape == (2, c_out, 6, 8, 12)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-5)
    g = torch.randn_like(ref)
    for a, c in zip(torch.autograd.grad((ref * g).sum(), [x, w, b]),
                    torch.autograd.grad((out * g).sum(), [x, w, b])):
        torch.testing.assert_close(c, a, atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_chunked_generation_equals_one_pass(chunk):
    cfg = preset("tiny32", num_classes=2)
    torch.manual_seed(1)
    G = Generator(cfg).eval()
    z, y = torch.randn(2, cfg.latent_dim), torch.tensor([0, 1])
    with torch.no_grad():
        whole = G.generate(z, y)
        parts = G.generate(z, y, chunk=chunk)
    assert (whole - parts).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="chunk must be a positive"):
        G.generate(z, y, chunk=0)
