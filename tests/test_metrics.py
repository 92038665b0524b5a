"""Tests of hagan.metrics and hagan.analysis: Fréchet distance, FID, MMD, 3D MS-SSIM,
memorisation, feature extractors (MedicalNet layout, random, encoder), the feature cache, the
embeddings, and `hagan evaluate` end to end on a tiny32 model. All offline and synthetic."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from helpers import make_random_dataset

from hagan import analysis, metrics
from hagan.checkpoint import CheckpointError, save_models
from hagan.config import preset
from hagan.errors import ConfigError, RunError
from hagan.features import MedicalNetResNet, RandomFeatureNet, build_extractor
from hagan.fileio import sha256_file
from hagan.models import build_models


def _spd(rng: np.random.Generator, f: int) -> np.ndarray:
    a = rng.normal(size=(f, f))
    return a @ a.T / f + 0.1 * np.eye(f)


# --- Fréchet distance and FID -----------------------------------------------------------------
def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    var1, var2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    got = metrics.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_sqrtm_route_agrees_with_eigenvalue_route():
    rng = np.random.default_rng(1)
    s1, s2 = _spd(rng, 10), _spd(rng, 10)
    trace, route = metrics.trace_sqrt_product(s1, s2)
    assert route == "sqrtm"
    assert trace == pytest.approx(metrics._trace_sqrt_product_eigh(s1, s2), rel=1e-8)


def test_fid_is_zero_on_itself_and_grows_with_mean_shift():
    x = np.random.default_rng(2).normal(size=(300, 8))
    assert metrics.fid(x, x) == pytest.approx(0.0, abs=1e-8)
    shifts = [0.25, 0.5, 1.0, 2.0]
    values = [metrics.fid(x, x + s) for s in shifts]
    assert values == sorted(values)
    # equal covariances: FID = ||shift||^2 exactly
    assert values == pytest.approx([8 * s**2 for s in shifts], rel=1e-6)


def test_fid_with_fewer_samples_than_features_is_finite():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(5, 20)), rng.normal(size=(5, 20))  # singular covariances
    assert metrics.fid(x, x) == pytest.approx(0.0, abs=1e-5)
    value = metrics.fid(x, y)
    mu1, s1 = metrics.feature_stats(x)
    mu2, s2 = metrics.feature_stats(y)
    exact = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
             - 2 * metrics._trace_sqrt_product_eigh(s1, s2))
    assert np.isfinite(value) and value == pytest.approx(exact, rel=1e-5)


@pytest.mark.parametrize("failure", ["nan", "complex"])
def test_frechet_falls_back_when_sqrtm_is_not_finite_or_complex(monkeypatch, failure):
    rng = np.random.default_rng(4)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    var1, var2 = rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    real_sqrtm = scipy.linalg.sqrtm
    broken = {"nan": lambda a: np.full_like(a, np.nan),
              "complex": lambda a: real_sqrtm(a) + 5j}[failure]  # large imaginary part
    monkeypatch.setattr(scipy.linalg, "sqrtm", broken)
    assert metrics.trace_sqrt_product(np.diag(var1), np.diag(var2))[1] == "eigh"
    got = metrics.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_retries_with_eps_before_the_eigenvalue_route(monkeypatch):
    real_sqrtm, calls = scipy.linalg.sqrtm, []

    def first_call_fails(a):
        calls.append(a)
        return np.full_like(a, np.inf) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(scipy.linalg, "sqrtm", first_call_fails)
    s = np.diag([1.0, 2.0, 3.0])
    trace, route = metrics.trace_sqrt_product(s, s)
    assert route == "sqrtm+eps" and trace == pytest.approx(6.0, abs=1e-4)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="covariances"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.feature_stats(np.zeros((1, 3)))


# --- MMD ------------------------------------------------------------------------------------------
def test_mmd_equal_vs_shifted_samples_and_permutation_p_values():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(60, 5)), rng.normal(size=(60, 5))
    same, p_same = metrics.mmd(x, y, permutations=200)
    shifted, p_shift = metrics.mmd(x, y + 1.0, permutations=200)
    assert abs(same) < 0.02 and shifted > 10 * max(abs(same), 1e-3)
    assert p_shift < 0.01 and p_same > 0.1
    assert metrics.mmd(x, y)[1] is None


def _published_mmd2(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Independent reference of the published MMD (torch-two-sample MMDStatistic with
    alphas='median', as called by HA-GAN's evaluation/fid_score.py): the median of the whole
    pooled distance matrix by torch.median (lower middle value), kernel exp(-d^2/m^2), unbiased
    estimator written as explicit sums over pairs. Returns (mmd2, m)."""
    z = np.concatenate([x, y])
    n, m = len(x), len(y)
    d = np.sqrt(((z[:, None, :] - z[None, :, :]) ** 2).sum(-1))  # (N, N), diagonal 0
    scale = float(torch.median(torch.from_numpy(d).flatten()))
    k = np.exp(-(d**2) / scale**2)
    within_x = sum(k[i, j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    within_y = sum(k[n + i, n + j] for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    across = sum(k[i, n + j] for i in range(n) for j in range(m)) / (n * m)
    return within_x + within_y - 2 * across, scale


@pytest.mark.parametrize("sizes", [(7, 5), (6, 6), (3, 9)])
def test_mmd_is_the_published_statistic(sizes):
    """Kernel exp(-d²/m²) with m the median of the pooled distances (diagonal included, lower
    middle value) and the unbiased estimator, as published; evaluate() uses the same function."""
    rng = np.random.default_rng(sum(sizes))
    x = rng.normal(size=(sizes[0], 4))
    y = rng.normal(size=(sizes[1], 4)) * 1.5 + 0.3
    expected, scale = _published_mmd2(x, y)
    assert metrics.median_bandwidth(np.concatenate([x, y])) == pytest.approx(scale, rel=1e-12)
    assert metrics.mmd(x, y)[0] == pytest.approx(expected, rel=1e-10)
    assert metrics.mmd(y, x)[0] == pytest.approx(expected, rel=1e-10)  # symmetric
    assert metrics.mmd(x, y, bandwidth=scale)[0] == pytest.approx(expected, rel=1e-10)


def test_mmd_kernel_scale_of_identical_features_is_refused():
    from hagan.errors import DataError

    with pytest.raises(DataError, match="median pairwise distance is 0"):
        metrics.median_bandwidth(np.zeros((5, 3)))


def test_mmd_rejects_bad_input():
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="bandwidth"):
        metrics.mmd(x, x + 1, bandwidth=0.0)
    with pytest.raises(ValueError, match="N, M >= 2"):
        metrics.mmd(x, np.zeros((4, 3)))


# --- MS-SSIM and diversity ------------------------------------------------------------------------
def test_ms_ssim_identical_is_one_and_independent_noise_is_low():
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.rand(2, 1, 32, 32, 32, generator=gen) * 2 - 1 for _ in range(2))
    assert metrics.ms_ssim_3d(a, a) == pytest.approx([1.0, 1.0], abs=1e-5)
    assert np.all(metrics.ms_ssim_3d(a, b) < 0.1)
    smooth = torch.nn.functional.avg_pool3d(a, 3, stride=1, padding=1)
    assert np.all(metrics.ms_ssim_3d(a, smooth) > metrics.ms_ssim_3d(a, b))


def test_single_scale_ssim_matches_an_independent_scipy_computation():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(9)
    a = np.clip(gaussian_filter(rng.normal(size=(24, 24, 24)), 2) * 3, -1, 1)
    b = np.clip(a + 0.3 * rng.normal(size=a.shape), -1, 1)

    def blur(x: np.ndarray) -> np.ndarray:  # 11^3 Gaussian (radius 3.5 sigma), 'valid' part
        return gaussian_filter(x, 1.5, truncate=3.5)[5:-5, 5:-5, 5:-5]

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)
            / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))).mean()
    assert metrics.ms_ssim_3d(a, b, scales=1)[0] == pytest.approx(ssim, abs=1e-4)


@pytest.mark.parametrize("size, scales", [(256, 5), (128, 4), (64, 3), (32, 2), (16, 1)])
def test_ms_ssim_uses_fewer_scales_for_small_volumes(size, scales):
    assert metrics.ms_ssim_scales(size) == scales


def test_ms_ssim_rejects_tiny_or_mismatched_volumes():
    with pytest.raises(ValueError, match="at least 11"):
        metrics.ms_ssim_3d(torch.zeros(8, 8, 8), torch.zeros(8, 8, 8))
    with pytest.raises(ValueError, match="one shape"):
        metrics.ms_ssim_3d(torch.zeros(16, 16, 16), torch.zeros(32, 32, 32))


def test_diversity_of_copies_is_one_and_of_noise_is_low():
    noise = torch.rand(6, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    copies = noise[:1].expand(6, -1, -1, -1, -1)
    assert metrics.diversity(copies, n_pairs=10) == pytest.approx(1.0, abs=1e-5)
    assert metrics.diversity(noise, n_pairs=10) < 0.2
    assert len(metrics.random_pairs(6, 100)) == 15  # all pairs when fewer than asked for


# --- memorisation ---------------------------------------------------------------------------------
def test_memorisation_flags_copies_of_training_volumes():
    rng = np.random.default_rng(6)
    train, held = rng.normal(size=(40, 6)), rng.normal(size=(40, 6))
    copies = train[:20] + 1e-3 * rng.normal(size=(20, 6))
    fresh = rng.normal(size=(40, 6))
    copied = metrics.memorisation(copies, train, held)
    assert copied["ratio"] < 0.05 and copied["fraction_closer_than_any_heldout"] == 1.0
    assert list(copied["nearest_train_index"]) == list(range(20))
    assert 0.5 < metrics.memorisation(fresh, train, held)["ratio"] < 2.0


# --- feature extractors ---------------------------------------------------------------------------
def _save_medicalnet_layout(net: torch.nn.Module, path: Path, wrapper: bool = True,
                            prefix: str = "module.") -> Path:
    state = {prefix + k: v for k, v in net.state_dict().items()}
    state[prefix + "conv_seg.0.weight"] = torch.zeros(2048, 32, 2, 2, 2)  # the seg head: ignored
    state[prefix + "conv_seg.1.running_mean"] = torch.zeros(32)
    torch.save({"state_dict": state} if wrapper else state, path)
    return path


@pytest.fixture(scope="module")
def resnet10(tmp_path_factory):
    """A random ResNet-10 (the smallest MedicalNet, 14 M parameters) with non-trivial BN stats."""
    torch.manual_seed(0)
    net = MedicalNetResNet(10).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    path = _save_medicalnet_layout(net, tmp_path_factory.mktemp("medicalnet") / "resnet_10.pth")
    return net, path


def test_medicalnet_loads_the_published_layout(resnet10, caplog):
    net, path = resnet10  # {'state_dict': {'module.conv1.weight': ..., 'module.conv_seg...'}}
    with caplog.at_level(logging.INFO, logger="hagan.features"):
        ext = build_extractor("medicalnet10", weights=path, device="cpu", progress=False)
    assert sha256_file(path) == ext.weights_hash and ext.weights_hash in caplog.text
    assert ext.name == "medicalnet10" and ext.net.shortcut == "B"
    volumes = torch.rand(3, 1, 24, 24, 24) * 2 - 1
    with torch.no_grad():
        expected = net(volumes).double().numpy()
    got = ext(volumes)
    assert got.shape == (3, 512) and np.allclose(got, expected, atol=1e-5)


def test_medicalnet_loads_a_bare_state_dict_with_shortcut_a(resnet10, tmp_path):
    net_b, _ = resnet10
    state = {k: v for k, v in net_b.state_dict().items()
             if ".downsample." not in k and not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "bare.pth")  # no wrapper, no prefix, no BN counters
    ext = build_extractor("medicalnet10", weights=tmp_path / "bare.pth", device="cpu",
                          progress=False)
    assert ext.net.shortcut == "A"  # detected from the missing downsample weights
    net_a = MedicalNetResNet(10, shortcut="A").eval()
    net_a.load_state_dict(state, strict=False)
    volumes = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        assert np.allclose(ext(volumes), net_a(volumes).double().numpy(), atol=1e-5)


def test_medicalnet50_has_the_published_key_names_and_2048_features():
    with torch.device("meta"):  # shapes only: no memory, no init work
        net = MedicalNetResNet(50)
    keys = set(net.state_dict())
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.conv3.weight",
                "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_mean",
                "layer4.2.bn3.weight"):
        assert key in keys
    assert net.out_features == 2048
    assert net.layer3[0].conv2.dilation == (2, 2, 2) and net.layer4[0].conv2.dilation == (4,) * 3
    assert net.eval()(torch.zeros(1, 1, 16, 16, 16, device="meta")).shape == (1, 2048)
    with torch.device("meta"):
        assert MedicalNetResNet(18).shortcut == "A"  # as MedicalNet's published resnet_18.pth


def test_medicalnet_refuses_mismatched_or_foreign_weights(resnet10, tmp_path):
    net, r10 = resnet10
    with pytest.raises(CheckpointError, match="ResNet-10 weights, not ResNet-50.*medicalnet10"):
        build_extractor("medicalnet50", weights=r10, device="cpu")
    state = dict(net.state_dict())
    state["conv1.weight"] = torch.zeros(64, 2, 7, 7, 7)  # two input channels
    torch.save(state, tmp_path / "bad_shape.pth")
    with pytest.raises(CheckpointError, match="do not fit.*conv1.weight"):
        build_extractor("medicalnet10", weights=tmp_path / "bad_shape.pth", device="cpu")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="does not hold MedicalNet"):
        build_extractor("medicalnet10", weights=tmp_path / "other.pth", device="cpu")
    torch.save({"state_dict": {"x": torch.zeros(1)}, "opt": object()}, tmp_path / "unsafe.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        build_extractor("medicalnet10", weights=tmp_path / "unsafe.pth", device="cpu")
    with pytest.raises(ConfigError, match="--weights: expected a weights FILE for medicalnet"):
        build_extractor("medicalnet10", device="cpu")


def test_random_extractor_is_seeded_labelled_and_takes_any_size():
    a = build_extractor("random", seed=3, device="cpu", progress=False)
    b = build_extractor("random", seed=3, device="cpu", progress=False)
    c = build_extractor("random", seed=4, device="cpu", progress=False)
    assert a.name == "random (seed 3)" and a.weights_hash == b.weights_hash != c.weights_hash
    for size in (16, 40):
        v = torch.rand(3, 1, size, size, size)
        assert a(v).shape == (3, RandomFeatureNet().out_features)
        assert np.array_equal(a(v), b(v))
    with pytest.raises(ValueError, match=r"\(N, 1, D, H, W\)"):
        a(torch.zeros(2, 16, 16, 16))


# --- cache ----------------------------------------------------------------------------------------
def test_cache_key_changes_with_weights_size_and_manifest(tmp_path):
    (tmp_path / "manifest.csv").write_text("file,label\na.npy,\n")
    data_hash = metrics.data_fingerprint(tmp_path)
    base = metrics.cache_key("medicalnet50", "abc", 128, data_hash)
    assert base == metrics.cache_key("medicalnet50", "abc", 128, data_hash)
    assert base != metrics.cache_key("medicalnet50", "abd", 128, data_hash)
    assert base != metrics.cache_key("medicalnet50", "abc", 256, data_hash)
    assert base != metrics.cache_key("random (seed 0)", "abc", 128, data_hash)
    (tmp_path / "manifest.csv").write_text("file,label\na.npy,\nb.npy,\n")
    assert metrics.data_fingerprint(tmp_path) != data_hash


def test_cached_values_are_reused_and_stale_keys_recomputed(tmp_path):
    path, calls = tmp_path / "c.npz", []

    def compute():
        calls.append(1)
        return np.arange(3.0)

    for key in ("k1", "k1", "k2"):
        assert np.array_equal(metrics.cached(path, key, compute), np.arange(3.0))
    assert len(calls) == 2


def test_default_cache_lives_in_the_output_folder_only(tmp_path):
    # house rule: evaluate writes nothing outside its output folder (not into DATA/)
    out = tmp_path / "reports" / "r.json"
    assert metrics.default_cache_dir(out, None) == tmp_path / "reports" / metrics.CACHE_DIRNAME
    assert metrics.default_cache_dir(None, None) is None  # no --out: no cache at all
    assert metrics.default_cache_dir(out, tmp_path / "c") == tmp_path / "c"


# --- analysis: embeddings and traversals ----------------------------------------------------------
@pytest.mark.parametrize("method", ["pca", "mds"])
def test_plot_embedding_has_title_labels_legend_and_ellipses(method):
    rng = np.random.default_rng(7)
    fig = analysis.plot_embedding({"real": rng.normal(size=(15, 6)),
                                   "generated": rng.normal(2, 1, size=(15, 6))}, method=method)
    ax = fig.axes[0]
    assert "real vs generated" in ax.get_title()
    assert ax.get_xlabel().startswith(("PC 1", "MDS 1")) and ax.get_ylabel()
    assert len(ax.patches) == 2 and ax.get_legend() is not None
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_two_sigma_ellipse_of_a_known_covariance():
    rng = np.random.default_rng(8)
    pts = rng.normal(size=(20000, 2)) * [3.0, 1.0]
    center, width, height, angle = analysis.ellipse(pts)
    assert np.allclose(center, 0, atol=0.1)
    assert width == pytest.approx(12.0, rel=0.05) and height == pytest.approx(4.0, rel=0.05)
    assert min(abs(angle), abs(abs(angle) - 180)) < 3


def test_latent_traversal_walks_one_direction(tiny_run):
    from hagan.checkpoint import load_models

    _, ckpt, _ = tiny_run
    _, nets = load_models(ckpt)
    z = torch.randn(nets["G"].latent_dim, generator=torch.Generator().manual_seed(0))
    volumes = analysis.latent_traversal(nets["G"], direction=2, steps=3, span=1.0, z=z)
    assert volumes.shape == (3, 1, 32, 32, 32) and volumes.abs().max() <= 1
    centre = nets["G"].generate(z[None]).float()
    assert torch.allclose(volumes[1:2], centre, atol=1e-5)
    directions = analysis.principal_directions(torch.randn(10, nets["G"].latent_dim), k=2)
    assert directions.shape == (2, nets["G"].latent_dim)
    with pytest.raises(ValueError, match="direction index"):
        analysis.latent_traversal(nets["G"], direction=10_000)


# --- hagan evaluate end to end --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    cfg = preset("tiny32")
    torch.manual_seed(0)
    ckpt = save_models(root / "tiny32.pt", cfg, build_models(cfg))
    # hagan.demo's cohort costs about a minute of CPU (TorchIO, nilearn): random blobs suffice
    data = make_random_dataset(root / "data", n=8, size=cfg.size)
    return root, ckpt, data


@pytest.mark.parametrize("extractor", ["random", "encoder"])
def test_evaluate_end_to_end_on_tiny32(tiny_run, extractor):
    root, ckpt, data = tiny_run
    out = root / f"report_{extractor}.json"
    report = metrics.evaluate(ckpt, data, extractor=extractor, n=6, out=out, seed=0,
                              device="cpu", progress=False, permutations=20, n_pairs=6)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["resolution"] == 32 and report["n_generated"] == 6
    assert report["n_real_train"] + report["n_real_heldout"] == 8
    assert report["extractor"] == ("random (seed 0)" if extractor == "random"
                                   else "encoder E^G(E^H(x))")
    assert len(report["weights_sha256"]) == 64
    m = report["metrics"]
    numbers = [m["fid"]["generated_vs_heldout"], m["fid"]["train_vs_heldout"],
               m["mmd2"]["generated_vs_heldout"], m["mmd2"]["train_vs_heldout"],
               m["mmd2"]["generated_p_value"], m["memorisation"]["ratio"],
               m["ms_ssim"]["generated"], m["ms_ssim"]["real"]]
    assert all(np.isfinite(numbers))
    assert m["ms_ssim"]["scales"] == 2 and len(m["memorisation"]["closest"]) == 3
    # the cache lives next to the report; the dataset folder is never written to
    assert not (data / metrics.CACHE_DIRNAME).exists()
    cache_files = sorted((root / metrics.CACHE_DIRNAME).glob("features_*.npz"))
    assert cache_files  # a second run reads the same real features back
    again = metrics.evaluate(ckpt, data, extractor=extractor, n=6, seed=0, device="cpu",
                             progress=False, permutations=20, n_pairs=6,
                             cache_dir=root / metrics.CACHE_DIRNAME)
    assert again["metrics"]["fid"] == m["fid"]
    assert sorted((root / metrics.CACHE_DIRNAME).glob("features_*.npz")) == cache_files
    with pytest.raises(RunError, match="--force"):
        metrics.evaluate(ckpt, data, extractor=extractor, n=6, out=out)


def test_hagan_evaluate_cli_prints_a_table_naming_everything(tiny_run, capsys):
    from hagan.cli import main

    root, ckpt, data = tiny_run
    out = root / "cli_report.json"
    argv = ["evaluate", str(ckpt), "--data", str(data), "--n", "4", "--out", str(out),
            "--permutations", "0", "--pairs", "4", "--device", "cpu"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    fid_rows = [line for line in table.splitlines() if line.startswith("FID")]
    assert len(fid_rows) == 2
    for line in fid_rows:
        assert "random (seed 0)" in line and report["weights_sha256"][:12] in line
        assert "32^3" in line and " vs " in line
    assert main(argv) == 2  # the report exists: refused without --force
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--force", "--extractor", "medicalnet50"]) == 2
    assert "--weights FILE" in capsys.readouterr().err


# --- the held-out split and the reference evaluate uses -------------------------------------------
def test_holdout_split_is_fold_0_of_the_published_kfold():
    """At 0.2 (the default) the held-out files are fold 0 of the published split,
    KFold(n_splits=5, shuffle=True, random_state=0), over the sorted file names."""
    from sklearn.model_selection import KFold

    from hagan.data import holdout_count, split_files

    for n in (5, 6, 13, 16, 64):
        names = [f"v{i:03d}.npy" for i in range(n)]
        train, held = split_files(names[::-1], 0.2)
        _, fold0 = next(KFold(n_splits=5, shuffle=True, random_state=0).split(names))
        assert held == sorted(names[i] for i in fold0)
        assert sorted(train + held) == names and not set(train) & set(held)
    assert split_files(["a", "b", "c"], 0.0) == (["a", "b", "c"], [])
    assert [holdout_count(n, 0.2) for n in (1, 2, 4, 5, 15)] == [0, 1, 1, 1, 3]
    assert holdout_count(3, 0.9) == 2  # a run keeps one training volume


@pytest.fixture(scope="module")
def split_run(tmp_path_factory):
    """A tiny32 run trained 2 iterations on 10 volumes: 2 held out (split.json)."""
    from hagan.train import train

    root = tmp_path_factory.mktemp("split_run")
    data = make_random_dataset(root / "data", n=10, size=32, seed=3)
    cfg = preset("tiny32", iterations=2, data=str(data), progress=False, tensorboard=False,
                 device="cpu")
    train(cfg, root / "run")
    return root, data, cfg


def test_training_uses_the_train_split_and_records_it(split_run):
    from hagan.checkpoint import read_split
    from hagan.train import Trainer

    root, data, cfg = split_run
    split = read_split(root / "run")
    assert split is not None and split.data == str(data.resolve())
    assert len(split.heldout) == 2 and len(split.train) == 8
    resumed = Trainer(cfg.replace(iterations=3), root / "run")  # resumes: the recorded split
    assert [r.file for r in resumed.dataset.records] == list(split.train)
    assert resumed.split == split


def test_evaluate_compares_with_the_runs_heldout_volumes(split_run):
    """No --data, no --heldout: the run's recorded held-out volumes; the report says so; the
    MMD printed by hand with metrics.mmd on the same sets is the one evaluate reports."""
    from hagan.checkpoint import load_models, read_split
    from hagan.data import PreparedDataset
    from hagan.generate import sample

    root, data, _ = split_run
    split = read_split(root / "run")
    report = metrics.evaluate(root / "run", extractor="random", n=4, seed=0, device="cpu",
                              progress=False, permutations=0, n_pairs=2, use_cache=False)
    ref = report["reference"]
    assert ref["kind"] == metrics.REF_RUN_HELDOUT and ref["is_heldout"]
    assert (report["n_real_train"], report["n_real_heldout"]) == (8, 2)
    assert "held-out split" in report["heldout"]
    assert {c["train_file"] for c in report["metrics"]["memorisation"]["closest"]} <= set(
        split.train)
    assert "Reference: held-out: the run's held-out split" in metrics.format_table(report)

    _, nets = load_models(root / "run")
    ext = build_extractor("random", size=32, device="cpu", batch_size=2, progress=False)
    full = PreparedDataset(data, size=32)
    train_f = ext(full.select(list(split.train)))
    held_f = ext(full.select(list(split.heldout)))
    fake_f = ext(sample(nets["G"], 4, batch_size=2, seed=0, device="cpu"))
    mm = report["metrics"]["mmd2"]
    # the published roles: the held-out volumes are the reference
    assert metrics.mmd(fake_f, held_f)[0] == pytest.approx(mm["generated_vs_heldout"], rel=1e-6)
    assert metrics.mmd(train_f, held_f)[0] == pytest.approx(mm["train_vs_heldout"], rel=1e-6)
    assert metrics.fid(fake_f, held_f) == pytest.approx(
        report["metrics"]["fid"]["generated_vs_heldout"], rel=1e-6)


def test_evaluate_refuses_training_volumes_as_heldout(split_run, tmp_path):
    from hagan.checkpoint import read_split
    from hagan.data import Record, write_info, write_manifest
    from hagan.errors import DataError

    root, data, _ = split_run
    kw = dict(extractor="random", n=2, device="cpu", progress=False, permutations=0, n_pairs=2,
              use_cache=False)
    with pytest.raises(DataError, match="training volumes"):  # the training folder itself
        metrics.evaluate(root / "run", heldout=data, **kw)
    # another folder holding a copy of one training volume (found by content) is refused too
    other = make_random_dataset(tmp_path / "other", n=3, size=32, seed=11)
    train_file = read_split(root / "run").train[0]
    (other / "volumes" / "copy.npy").write_bytes((data / "volumes" / train_file).read_bytes())
    write_manifest(other, [Record(f"vol_{i:03d}.npy") for i in range(3)] + [Record("copy.npy")])
    write_info(other, {"size": 32, "modality": "synthetic", "spacing_mm": [1.0] * 3})
    with pytest.raises(DataError, match=r"1 of its 4 volumes are training volumes.*copy.npy"):
        metrics.evaluate(root / "run", heldout=other, **kw)
    (other / "volumes" / "copy.npy").unlink()
    write_manifest(other, [Record(f"vol_{i:03d}.npy") for i in range(3)])
    report = metrics.evaluate(root / "run", heldout=other, **kw)
    assert report["reference"]["kind"] == metrics.REF_HELDOUT_FOLDER
    assert report["n_real_heldout"] == 3 and report["n_real_train"] == 8


def test_evaluate_without_a_heldout_set_says_train_subset(tiny_run):
    """A checkpoint that records no split (here a bare file) has no held-out volumes: the
    baseline is labelled a train subset, never held-out, and memorisation is not claimed."""
    root, ckpt, data = tiny_run
    report = metrics.evaluate(ckpt, data, extractor="random", n=4, device="cpu", progress=False,
                              permutations=0, n_pairs=2, use_cache=False)
    assert report["reference"]["kind"] == metrics.REF_TRAIN_SUBSET
    assert not report["reference"]["is_heldout"]
    assert report["metrics"]["memorisation"]["valid"] is False
    table = metrics.format_table(report)
    assert "NOT held-out" in table and "real-heldout" not in table
    assert "memorisation: not measured" in table
