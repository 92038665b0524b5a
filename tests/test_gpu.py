"""CUDA tests: training in every precision, generation, checkpoints moving between GPU and CPU.

Skipped when no CUDA GPU is present (CI has none); run them with ``pytest -m gpu`` on a GPU
machine. They import only torch and the kit's core modules, so they also run where the data
libraries (torchio, nilearn) are not installed.
"""

from __future__ import annotations

import math

import pytest
import torch

from hagan import checkpoint as ckpt
from hagan.bench import RandomVolumes
from hagan.config import PRECISIONS, preset
from hagan.models import Generator
from hagan.train import Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _trainer(tmp_path, precision="fp32", **overrides) -> Trainer:
    cfg = preset("tiny32", device="cuda", precision=precision, tensorboard=False,
                 progress=False, batch_size=2, **overrides)
    return Trainer(cfg, tmp_path / precision, dataset=RandomVolumes(32, n=2), resume=False)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_training_step_on_cuda_updates_every_network(tmp_path, precision):
    tr = _trainer(tmp_path, precision)
    before = {k: [p.detach().clone() for p in n.parameters()] for k, n in tr.nets.items()}
    x = RandomVolumes(32, n=2).data.cuda()
    for _ in range(3):
        losses = tr.step(x)
    assert all(math.isfinite(v.item()) for v in losses.values()), losses
    for name, net in tr.nets.items():
        assert next(net.parameters()).is_cuda
        pairs = zip(before[name], net.parameters(), strict=True)
        changed = any(not torch.equal(a, p) for a, p in pairs)
        assert changed, f"{name} was not updated in {precision}"
    if precision == "fp16":
        assert tr.scaler.is_enabled() and tr.scaler.get_scale() > 0


def test_channels_last_step_matches_default_layout(tmp_path):
    x = RandomVolumes(32, n=2).data.cuda()
    torch.backends.cudnn.allow_tf32 = False  # TF32 rounding differs between the two layouts
    try:
        a = _trainer(tmp_path / "a").step(x)
        b = _trainer(tmp_path / "b", channels_last=True).step(
            x.contiguous(memory_format=torch.channels_last_3d))
    finally:
        torch.backends.cudnn.allow_tf32 = True
    for k in a:
        assert abs(a[k].item() - b[k].item()) < 1e-3, (k, a[k].item(), b[k].item())


def test_cuda_checkpoint_loads_on_cpu_and_generates_the_same_volume(tmp_path):
    tr = _trainer(tmp_path)
    tr.step(RandomVolumes(32, n=2).data.cuda())
    path = tr.save()
    cfg, nets = ckpt.load_models(path, device="cpu")
    z = torch.randn(2, cfg.latent_dim)
    on_cpu = nets["G"].generate(z)
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            on_gpu = tr.G.eval().generate(z.cuda()).cpu()
    finally:
        torch.backends.cudnn.allow_tf32 = True
    assert on_cpu.shape == (2, 1, 32, 32, 32)
    assert (on_cpu - on_gpu).abs().max().item() < 1e-3


@pytest.mark.parametrize("name", ["small64", "paper128"])
def test_chunked_generation_equals_one_pass_on_cuda(name):
    torch.manual_seed(0)
    G = Generator(preset(name)).cuda().eval()
    z = torch.randn(1, preset(name).latent_dim, device="cuda")
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.inference_mode():
            one = G.generate(z)
            chunked = G.generate(z, chunk=4)
    finally:
        torch.backends.cudnn.allow_tf32 = True
    assert chunked.shape == one.shape == (1, 1, *([preset(name).size] * 3))
    assert (one - chunked).abs().max().item() < 1e-4


def test_bf16_generation_is_close_to_fp32():
    torch.manual_seed(0)
    G = Generator(preset("small64")).cuda().eval()
    z = torch.randn(2, preset("small64").latent_dim, device="cuda")
    with torch.inference_mode():
        ref = G.generate(z)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = G.generate(z, chunk=4).float()
    assert torch.isfinite(low).all()
    assert (ref - low).abs().mean().item() < 0.05
