"""The CPU demo recipe for the demo cohort (issue 17): the ``demo32`` preset and its two
options that are not in the paper, the minibatch standard deviation in D (``d_minibatch_std``)
and the R1 penalty (``r1_gamma``). Each is checked against a reference written
here, and the paper presets are checked to keep the paper's recipe."""

from __future__ import annotations

import pytest
import torch
from helpers import make_random_dataset

from hagan.config import PRESETS, preset
from hagan.errors import ConfigError
from hagan.models import Discriminator, build_models, count_parameters, minibatch_std
from hagan.train import Trainer, r1_penalty


@pytest.fixture
def data(tmp_path):
    return make_random_dataset(tmp_path / "data", n=6, size=32)


def test_minibatch_std_matches_a_reference():
    h = torch.randn(5, 3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    out = minibatch_std(h)
    assert out.shape == (5, 4, 2, 4, 4)
    assert torch.equal(out[:, :3], h)  # the features pass through unchanged
    # the reference: population std over the batch at each (c, d, y, x), averaged
    mean = h.sum(0) / 5
    std = (((h - mean) ** 2).sum(0) / 5 + 1e-8).sqrt().mean()
    assert torch.allclose(out[:, 3], std.expand(5, 2, 4, 4), atol=1e-6)
    # a batch of one carries no spread: the channel is ~0 (sqrt of the 1e-8 guard)
    assert minibatch_std(h[:1])[:, 3].abs().max() < 1e-3


def test_minibatch_std_makes_d_look_at_the_batch():
    """Off (the paper): a volume's logit does not depend on the rest of its batch. On: it does,
    which is what lets D tell a batch of identical volumes from a varied one."""
    g = torch.Generator().manual_seed(1)
    slab, low = torch.randn(4, 1, 4, 32, 32, generator=g), torch.randn(4, 1, 8, 8, 8, generator=g)
    same = slab[:1].expand(4, -1, -1, -1, -1), low[:1].expand(4, -1, -1, -1, -1)
    for flag in (False, True):
        torch.manual_seed(0)
        D = Discriminator(preset("demo32", d_minibatch_std=flag)).eval()
        with torch.no_grad():
            varied = D(slab, low, 0)[0][0]
            alike = D(*same, 0)[0][0]
        assert torch.equal(varied, alike) is (not flag)


def test_minibatch_std_adds_one_input_channel_to_the_last_convs():
    plain = build_models(preset("demo32", d_minibatch_std=False))["D"]
    with_std = build_models(preset("demo32"))["D"]
    # D^H's last conv (1 x 4 x 4 kernel, 32 outputs at width 1/4) and D^L's (4^3 kernel, 1 output)
    extra = 32 * 1 * 4 * 4 + 1 * 4 * 4 * 4
    assert count_parameters(with_std) - count_parameters(plain) == extra


def test_paper_presets_keep_the_paper_recipe():
    for name in ("paper128", "paper256"):
        cfg = preset(name)
        assert (cfg.d_minibatch_std, cfg.r1_gamma, cfg.d_augment) == (False, 0.0, False)
        assert (cfg.lr_g, cfg.lr_d, cfg.lr_e) == (1e-4, 4e-4, 1e-4)
    # demo32 states each departure as a preset value, nothing hidden in code
    assert {"d_minibatch_std", "r1_gamma", "lr_g", "lr_d", "width"} <= set(PRESETS["demo32"])


def test_r1_gamma_is_checked():
    with pytest.raises(ConfigError, match="r1_gamma"):
        preset("tiny32", r1_gamma=-0.1)
    with pytest.raises(ConfigError, match="batched_d_step"):
        preset("tiny32", r1_gamma=0.1, batched_d_step=True)


def test_r1_penalty_matches_a_linear_critic():
    """For D(slab, low) = <w_s, slab> + <w_l, low> the input gradient is (w_s, w_l) for every
    volume, so R1 = ||w_s||^2 + ||w_l||^2 exactly."""
    g = torch.Generator().manual_seed(2)
    w_s, w_l = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 2, 2, 2, generator=g)
    slab = torch.randn(3, 1, 4, 8, 8, generator=g, requires_grad=True)
    low = torch.randn(3, 1, 2, 2, 2, generator=g, requires_grad=True)
    logit = ((slab * w_s).flatten(1).sum(1) + (low * w_l).flatten(1).sum(1))[:, None]
    expected = w_s.pow(2).sum() + w_l.pow(2).sum()
    assert torch.allclose(r1_penalty(logit, (slab, low)), expected, rtol=1e-5)
    # a quadratic critic D(x) = sum x^2 / 2 has gradient x: R1 = mean over volumes of ||x||^2
    logit = (slab.pow(2).flatten(1).sum(1) / 2)[:, None]
    penalty = r1_penalty(logit, (slab,))
    assert torch.allclose(penalty, slab.detach().pow(2).flatten(1).sum(1).mean(), rtol=1e-5)
    assert penalty.requires_grad  # differentiable: it trains D


def test_r1_reaches_the_d_update(data, tmp_path):
    """Same seed, same volumes and slab: two plain steps give the same D weights, and one with
    r1_gamma gives other ones (the penalty reaches D's update)."""
    x = torch.rand(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1

    def one_step(gamma: float, name: str) -> Trainer:
        cfg = preset("tiny32", data=str(data), r1_gamma=gamma, holdout_fraction=0.0,
                     tensorboard=False, progress=False)
        t = Trainer(cfg, tmp_path / name)
        t.step(x, c=8)
        return t

    plain, again, penalised = one_step(0.0, "a"), one_step(0.0, "b"), one_step(10.0, "c")
    # without D^L (notebook 03's ablation) the low-res input is unused: R1 is the slab's alone
    cfg = preset("tiny32", data=str(data), r1_gamma=10.0, low_res_critic=False,
                 holdout_fraction=0.0, tensorboard=False, progress=False)
    assert torch.isfinite(Trainer(cfg, tmp_path / "d").step(x, c=8)["loss_d"])
    for p, q in zip(plain.D.parameters(), again.D.parameters()):
        assert torch.equal(p, q)
    assert not all(torch.equal(p, r) for p, r in zip(plain.D.parameters(),
                                                      penalised.D.parameters()))


@pytest.mark.slow  # starts two processes with torchrun: over 10 s on 2 CPU cores
def test_r1_is_refused_in_distributed_training(data, tmp_path):
    """R1's double backward through DDP is untested, so torchrun training with it stops with a
    line naming the option instead of running it."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "hagan", "train", "--preset", "tiny32", "--data", str(data), "--out",
           str(tmp_path / "run"), "--set", "iterations=1", "device=cpu", "r1_gamma=0.1"]
    proc = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace",
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    assert "r1_gamma: expected 0 in distributed (torchrun) training" in proc.stderr
    assert not list((tmp_path / "run").glob("checkpoints/*.pt"))


