"""Teaching collapse: the trainer's diversity check (``diversity_every``), the discriminator
augmentation option (``d_augment``, :mod:`hagan.augment`) and the exact activation-memory count
of notebook 02 (:func:`hagan.bench.activation_memory`)."""

from __future__ import annotations

import pytest
import torch
from helpers import make_random_dataset

from hagan.augment import diff_augment
from hagan.bench import activation_memory
from hagan.config import preset
from hagan.train import Trainer, read_metrics, train


@pytest.fixture
def data(tmp_path):
    return make_random_dataset(tmp_path / "data", n=6, size=32)


@pytest.mark.slow  # over 10 s on 2 CPU cores
def test_diversity_checks_go_into_the_log(data, tmp_path):
    cfg = preset("tiny32", data=str(data), iterations=4, log_every=2, diversity_every=2,
                 holdout_fraction=0.0, tensorboard=False, progress=False)
    train(cfg, tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [2, 4]
    for r in records:
        assert 0.0 < r["ms_ssim_fake"] <= 1.0 and 0.0 < r["ms_ssim_real"] <= 1.0
    # the real baseline is computed once, from the same 8 (here 6) training volumes
    assert records[0]["ms_ssim_real"] == records[1]["ms_ssim_real"]


@pytest.mark.slow  # over 10 s on 2 CPU cores
def test_no_diversity_check_by_default(data, tmp_path):
    cfg = preset("tiny32", data=str(data), iterations=2, log_every=2, holdout_fraction=0.0,
                 tensorboard=False, progress=False)
    assert cfg.diversity_every == 0 and cfg.d_augment is False  # the paper's recipe
    train(cfg, tmp_path / "run")
    assert "ms_ssim_fake" not in read_metrics(tmp_path / "run")[0]


def test_diff_augment_keeps_shapes_views_and_gradients():
    g = torch.Generator().manual_seed(0)
    low = torch.rand(3, 1, 8, 8, 8, requires_grad=True)
    # a slab whose voxels repeat its low-res view 4x in-plane: the two views of one volume
    slab = low.detach()[:, :, :1].repeat_interleave(4, 3).repeat_interleave(4, 4)
    slab = slab.expand(3, 1, 4, 32, 32).clone().requires_grad_(True)
    out_slab, out_low = diff_augment(slab, low, g, policy=("translation", "cutout"))
    assert out_slab.shape == slab.shape and out_low.shape == low.shape
    # the same transform on both views: the slab still matches its low-res view in-plane
    assert torch.equal(out_slab[:, :, 0, ::4, ::4], out_low[:, :, 0])
    (out_slab.sum() + out_low.sum()).backward()
    assert slab.grad is not None and low.grad is not None and low.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown augmentation"):
        diff_augment(slab, low, g, policy=("rotate",))


def test_d_augment_changes_what_d_sees_and_is_reproducible(data, tmp_path):
    cfg = preset("tiny32", data=str(data), iterations=1, holdout_fraction=0.0,
                 tensorboard=False, progress=False, d_augment=True)
    trainer = Trainer(cfg, tmp_path / "run")
    slab, low = torch.rand(2, 1, 4, 32, 32), torch.rand(2, 1, 8, 8, 8)
    a, b = trainer.d_view(slab, low, 0), trainer.d_view(slab, low, 0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # seeded by (seed, step, call)
    assert not torch.equal(a[0], slab)
    plain = Trainer(cfg.replace(d_augment=False), tmp_path / "run2")
    assert plain.d_view(slab, low, 0)[0] is slab


def test_activation_memory_counts_from_shapes_alone():
    def setup(device):
        torch.manual_seed(0)
        with torch.device(device):
            net = torch.nn.Sequential(torch.nn.Linear(100, 200), torch.nn.ReLU(),
                                      torch.nn.Linear(200, 10))
            x = torch.randn(64, 100)
        return net, x

    counts = {}
    for device in ("cpu", "meta"):
        net, x = setup(device)
        counts[device] = activation_memory(lambda n=net, v=x: n(v).square().mean().backward(),
                                           list(net.parameters()))
    assert counts["cpu"] == pytest.approx(counts["meta"], abs=1e-3)
    # saved for backward, each storage once, parameters excluded: x (for W1's gradient),
    # ReLU's output (also layer 2's input: the same storage), layer 2's output (for square())
    assert counts["meta"]["saved_mib"] == pytest.approx((64 * 100 + 64 * 200 + 64 * 10) * 4
                                                        / 2**20)
    assert counts["meta"]["peak_mib"] >= counts["meta"]["saved_mib"]
