"""Generation: sampling, conditional sampling, reconstruction, interpolation, NIfTI export."""

import nibabel as nib
import numpy as np
import pytest
import torch

from hagan.config import preset
from hagan.data import load_nifti, save_nifti, volume_affine
from hagan.generate import interpolate, reconstruct, sample, slerp
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

    from hagan.upsample import MIN_TRANSPOSED_CHANNELS, upsample_conv3d

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


# --- NIfTI outputs that viewers read correctly ----------------------------------------------------
def test_nifti_sets_qform_and_sform_with_the_same_affine(tmp_path):
    """Viewers read either the qform (ITK, Slicer) or the sform (FSL): both carry the affine."""
    vol = np.random.default_rng(0).uniform(-1, 1, (16, 16, 16)).astype(np.float32)
    img = nib.load(save_nifti(vol, tmp_path / "v.nii.gz", spacing=(3.0, 2.0, 1.0)))
    expected = np.array([[1.0, 0, 0, -7.5], [0, 2.0, 0, -15.0], [0, 0, 3.0, -22.5], [0, 0, 0, 1]])
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    assert np.allclose(img.get_qform(), expected) and np.allclose(img.get_sform(), expected)
    assert img.get_data_dtype() == np.float32
    assert b"no physical unit" in img.header["descrip"].tobytes()
    assert np.array_equal(load_nifti(img.get_filename()), vol)


def test_ct_samples_are_written_in_hounsfield_units(tmp_path):
    """The dataset's window [-1024, 600] HU is inverted; int16 HU round-trips within one
    quantisation step (1 HU; 2/1624 in the kit's [-1, 1])."""
    low, high = -1024.0, 600.0
    vol = np.random.default_rng(1).uniform(-1, 1, (16, 16, 16)).astype(np.float32)
    vol[0, 0, :2] = (-1.0, 1.0)
    img = nib.load(save_nifti(vol, tmp_path / "ct.nii.gz", spacing=(1, 1, 1),
                              hu_window=(low, high)))
    assert img.get_data_dtype() == np.int16
    assert (float(img.header["cal_min"]), float(img.header["cal_max"])) == (low, high)
    hu_expected = low + (vol + 1.0) / 2.0 * (high - low)  # written independently of hagan.data
    hu_read = load_nifti(img.get_filename())
    assert np.abs(hu_read - hu_expected).max() <= 0.5 + 1e-3
    assert hu_read.min() == low and hu_read.max() == high
    back = load_nifti(img.get_filename(), hu_window=(low, high))
    assert np.abs(back - vol).max() <= 2.0 / (high - low)


def test_nifti_settings_come_from_dataset_json_and_never_default_to_1mm():
    from hagan.data import nifti_settings
    from hagan.errors import DataError

    ct = nifti_settings({"modality": "ct", "window": [-1024, 600], "spacing_mm": [2, 2, 2]})
    assert ct == {"spacing": (2.0, 2.0, 2.0), "hu_window": (-1024.0, 600.0)}
    mri = nifti_settings({"modality": "mri", "window": None, "spacing_mm": [1.5] * 3})
    assert mri == {"spacing": (1.5, 1.5, 1.5), "hu_window": None}
    with pytest.raises(DataError, match="spacing_mm.*--spacing"):
        nifti_settings({"modality": "mri"})
    with pytest.raises(DataError, match="CT window"):
        nifti_settings({"modality": "ct", "spacing_mm": [1, 1, 1]})


def test_hagan_generate_writes_the_runs_voxel_size_and_hu(tmp_path, capsys):
    """``hagan generate RUN`` takes voxel size and HU window from the dataset the run recorded;
    a weights file with no dataset fails closed with one line unless --spacing is given."""
    from helpers import make_random_dataset

    from hagan import checkpoint as ckpt
    from hagan.cli import main
    from hagan.data import DataSplit, write_info

    data = make_random_dataset(tmp_path / "data", n=2, size=32)
    write_info(data, {"size": 32, "modality": "ct", "window": [-1000.0, 400.0],
                      "spacing_mm": [2.5, 2.5, 2.5]})
    cfg = preset("tiny32")
    run = tmp_path / "run"
    ckpt.save_models(ckpt.checkpoint_path(run, 1), cfg, build_models(cfg), step=1)
    ckpt.write_split(run, DataSplit(str(data.resolve()), 0.0, 0, ("vol_000.npy",), ()))
    assert main(["generate", str(run), "--n", "1", "--device", "cpu",
                 "--out", str(tmp_path / "s")]) == 0
    img = nib.load(str(tmp_path / "s" / "sample_0000.nii.gz"))
    assert np.allclose(img.header.get_zooms(), (2.5, 2.5, 2.5))
    assert img.get_data_dtype() == np.int16 and int(img.header["qform_code"]) == 1
    hu = np.asarray(img.dataobj)
    assert hu.min() >= -1000 and hu.max() <= 400

    bare = ckpt.save_models(tmp_path / "bare.pt", cfg, build_models(cfg))  # cfg.data is ""
    capsys.readouterr()
    assert main(["generate", str(bare), "--n", "1", "--device", "cpu",
                 "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--spacing" in err
    assert not (tmp_path / "t" / "sample_0000.nii.gz").exists()
    assert main(["generate", str(bare), "--n", "1", "--device", "cpu", "--spacing", "1", "1",
                 "2", "--out", str(tmp_path / "t")]) == 0
    img = nib.load(str(tmp_path / "t" / "sample_0000.nii.gz"))
    assert np.allclose(img.header.get_zooms(), (2.0, 1.0, 1.0))  # (x, y, z) of (z, y, x)
