"""Fidelity: the kit's training step against the published training loop, from identical state.

    python benchmarks/fidelity_compare.py --official /path/to/HA-GAN             # paper128, b2
    python benchmarks/fidelity_compare.py --official /path/to/HA-GAN --iters 3 --batched-d-step

``--official`` is a clone of https://github.com/batmanlab/HA-GAN; only its ``models/`` folder is
imported, from that path (nothing of it is copied into the kit). Both sides start from the same
state and get the same inputs:

* weights: the kit's networks (seeded), converted to the published layout with
  :func:`hagan.official.to_official_state_dict` and loaded into the published classes, spectral
  norm vectors (``u0``) included;
* the same real volumes (uniform in [-1, 1], one batch per iteration), latent draws and slab
  starts, drawn here and given to both: to the kit through ``Trainer.step(x, z=..., c=...)``;
* Adam (0, 0.999), eps 1e-8 and the published learning rates on both sides, fp32, CPU by default.

The published side is this file's own transcription of the iteration in the published
``train.py`` (D step: real, then fake, through D; ``g_iter`` G updates; E^H; E^G over the 8 slabs),
calling the published modules. ``nn.DataParallel`` is left out (on one device it calls the module
directly); on CPU the published discriminator's ``.cuda()`` is redirected to the CPU, as in
``train_compare.py``. The kit side is ``hagan.train.Trainer.step`` unchanged (its fused Adam
rounds differently from the published Adam: that is part of what is measured).

Prints every loss of every iteration for both sides and their difference, then per network the
largest weight difference after the last iteration and the difference's norm relative to how far
the published weights moved. Exit status 0 when every loss of the first ``--check-iters``
iterations is within ``--tol`` (default 2e-3), 1 otherwise.

Why a tolerance and a noise floor: two fp32 implementations of the same network round
differently, and Adam with beta1 = 0 amplifies that. Its first update of a weight is
lr * g / (|g| + eps), about +-lr whatever the size of g, so a weight whose gradient is near zero
can step the opposite way on the other side, and the runs drift apart by a few lr per weight within
a few iterations. ``--noise-floor`` measures that drift for the published code itself: a second
published run that differs only in Adam's rounding (PyTorch's fused kernel, which the kit uses).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hagan.config import preset
from hagan.official import to_official_state_dict
from hagan.train import LOSS_KEYS, Trainer

KINDS = ("G", "D", "E", "SubE")


def import_published(official: str, size: int, device: torch.device):
    """The published ``models.Model_HA_GAN_<size>`` module, imported from the clone."""
    if device.type == "cpu":  # the published D calls .cuda() inside forward
        torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    sys.path.insert(0, str(Path(official).resolve()))
    return __import__(f"models.Model_HA_GAN_{size}", fromlist=["Generator"])


class PublishedLoop:
    """The published iteration, transcribed here, on the published networks."""

    def __init__(self, mod, trainer: Trainer, fused_adam: bool = False) -> None:
        cfg, dev = trainer.cfg, trainer.device
        self.size, self.g_iter = cfg.size, cfg.g_iter
        self.nets = {
            "G": mod.Generator(mode="train", latent_dim=cfg.latent_dim, num_class=0),
            "D": mod.Discriminator(num_class=0),
            "E": mod.Encoder(),
            "SubE": mod.Sub_Encoder(latent_dim=cfg.latent_dim),
        }
        kit = {"G": trainer.G, "D": trainer.D, "E": trainer.E, "SubE": trainer.SubE}
        for kind, net in self.nets.items():  # the kit's initial state, in the published layout
            net.load_state_dict(to_official_state_dict(kit[kind], kind, cfg.size), strict=True)
            net.to(dev).train()
        lrs = {"G": cfg.lr_g, "D": cfg.lr_d, "E": cfg.lr_e, "SubE": cfg.lr_e}
        self.opt = {k: torch.optim.Adam(n.parameters(), lr=lrs[k], betas=(cfg.beta1, cfg.beta2),
                                        eps=1e-8, fused=fused_adam or None)
                    for k, n in self.nets.items()}
        for net in self.nets.values():
            self._trainable(net, False)

    @staticmethod
    def _trainable(net: nn.Module, flag: bool) -> None:
        for p in net.parameters():
            p.requires_grad = flag

    def __call__(self, x: torch.Tensor, z: torch.Tensor, c: int) -> dict[str, float]:
        G, D, E, SubE = (self.nets[k] for k in KINDS)
        S, B = self.size, x.shape[0]
        real, fake = torch.ones(B, 1, device=x.device), torch.zeros(B, 1, device=x.device)
        bce, l1 = nn.BCEWithLogitsLoss(), nn.L1Loss()
        # D^H and D^L: the real pair, then a generated pair, each through D on its own
        self._trainable(D, True)
        self._trainable(SubE, False)
        D.zero_grad()
        x_small = F.interpolate(x, scale_factor=0.25)
        x_crop = x[:, :, c:c + S // 8]
        d_real = bce(D(x_crop, x_small, c), real)
        gen, gen_small = G(z[0], crop_idx=c, class_label=None)
        d_fake = bce(D(gen, gen_small, c), fake)
        d_loss = d_real + d_fake
        d_loss.backward()
        self.opt["D"].step()
        # G^A, G^H and G^L, g_iter times with a fresh z
        self._trainable(D, False)
        self._trainable(G, True)
        for k in range(self.g_iter):
            G.zero_grad()
            gen, gen_small = G(z[1 + k], crop_idx=c, class_label=None)
            g_loss = bce(D(gen, gen_small, c), real)
            g_loss.backward()
            self.opt["G"].step()
        # E^H through the frozen G^H
        self._trainable(E, True)
        self._trainable(G, False)
        E.zero_grad()
        e_loss = l1(G(E(x_crop), crop_idx=None), x_crop)
        e_loss.backward()
        self.opt["E"].step()
        # E^G on the 8 encoded slabs, through the frozen G
        self._trainable(SubE, True)
        self._trainable(E, False)
        SubE.zero_grad()
        with torch.no_grad():
            feats = torch.cat([E(x[:, :, a:a + S // 8]) for a in range(0, S, S // 8)], dim=2)
        rec, rec_small = G(SubE(feats), crop_idx=c)
        sub_loss = (l1(rec, x_crop) + l1(rec_small, x_small)) / 2.0
        sub_loss.backward()
        self.opt["SubE"].step()
        return {"loss_d": d_loss.item(), "loss_d_real": d_real.item(),
                "loss_d_fake": d_fake.item(), "loss_g": g_loss.item(), "loss_e": e_loss.item(),
                "loss_sube": sub_loss.item()}


def published_parameters(loop: PublishedLoop) -> dict[str, dict[str, torch.Tensor]]:
    """A copy of every published network's parameters (buffers excluded)."""
    return {kind: {k: p.detach().float().clone() for k, p in loop.nets[kind].named_parameters()}
            for kind in KINDS}


def kit_parameters(trainer: Trainer) -> dict[str, dict[str, torch.Tensor]]:
    """The kit's parameters under the published names."""
    kit = {"G": trainer.G, "D": trainer.D, "E": trainer.E, "SubE": trainer.SubE}
    return {kind: {k: v.float() for k, v in
                   to_official_state_dict(kit[kind], kind, trainer.cfg.size).items()}
            for kind in KINDS}


def weight_differences(other: dict[str, dict[str, torch.Tensor]],
                       published: dict[str, dict[str, torch.Tensor]],
                       start: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, float]]:
    """Per network: the largest |other - published| over its parameters (``max_abs``), and the
    size of that difference relative to how far the published weights moved from ``start``,
    ||w_other - w_pub|| / ||w_pub - w_start|| over all parameters (``rel_update``)."""
    def norm(ts: list[torch.Tensor]) -> float:
        return float(torch.sqrt(sum((t.double() ** 2).sum() for t in ts)))

    out = {}
    for kind in KINDS:
        theirs = published[kind]
        diff = [other[kind][k] - p for k, p in theirs.items()]
        moved = [p - start[kind][k] for k, p in theirs.items()]
        out[kind] = {"max_abs": max(float(d.abs().max()) for d in diff),
                     "rel_update": norm(diff) / max(norm(moved), 1e-30)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", required=True, help="path to a clone of batmanlab/HA-GAN")
    p.add_argument("--size", type=int, choices=(128, 256), default=128)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--iters", type=int, default=2, help="iterations to run (default 2)")
    p.add_argument("--check-iters", type=int, default=2,
                   help="iterations whose losses must be within --tol (default 2)")
    p.add_argument("--tol", type=float, default=2e-3, help="loss tolerance (default 2e-3)")
    p.add_argument("--g-iter", type=int, default=1, help="G updates per iteration (default 1)")
    p.add_argument("--batched-d-step", action="store_true",
                   help="run the kit with the batched D step (a deviation) to see its size")
    p.add_argument("--noise-floor", action="store_true",
                   help="also run the published loop a second time with PyTorch's fused Adam "
                        "(the same update to rounding): its distance from the first run is the "
                        "rounding noise that the kit's distance is to be compared with")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="also print one JSON line at the end")
    args = p.parse_args()

    device = torch.device(args.device)
    mod = import_published(args.official, args.size, device)
    cfg = preset(f"paper{args.size}", batch_size=args.batch_size, device=args.device,
                 precision="fp32", g_iter=args.g_iter, batched_d_step=args.batched_d_step,
                 seed=args.seed, tensorboard=False, progress=False)
    gen = torch.Generator().manual_seed(args.seed + 1)
    S, B = cfg.size, cfg.batch_size
    with tempfile.TemporaryDirectory() as tmp:  # the dataset is unused: step() gets x
        trainer = Trainer(cfg, tmp, dataset=[torch.zeros(1, S, S, S)], resume=False)
        loop = PublishedLoop(mod, trainer)
        start = published_parameters(loop)
        twin = PublishedLoop(mod, trainer, fused_adam=True) if args.noise_floor else None
        print(f"paper{S} batch {B}, {args.iters} iterations, g_iter {cfg.g_iter}, "
              f"{'batched' if cfg.batched_d_step else 'separate (published)'} D passes, "
              f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
        rows, worst = [], 0.0
        for it in range(args.iters):  # the same draws whatever --iters is
            x = (torch.rand(B, 1, S, S, S, generator=gen) * 2 - 1).to(device)
            z = torch.randn(cfg.g_iter + 1, B, cfg.latent_dim, generator=gen).to(device)
            c = int(torch.randint(0, cfg.max_slab_start + 1, (1,), generator=gen))
            t0 = time.perf_counter()
            kit = {k: float(v) for k, v in trainer.step(x, z=z, c=c).items()}
            t1 = time.perf_counter()
            ref = loop(x, z, c)
            t2 = time.perf_counter()
            noise = twin(x, z, c) if twin is not None else None
            print(f"iteration {it + 1} (c = {c}; kit {t1 - t0:.1f} s, published {t2 - t1:.1f} s)")
            print(f"  {'loss':<12}{'kit':>12}{'published':>12}{'|diff|':>11}"
                  + (f"{'noise floor':>13}" if noise else ""))
            for k in LOSS_KEYS:
                diff = abs(kit[k] - ref[k])
                if it < args.check_iters:
                    worst = max(worst, diff)
                print(f"  {k:<12}{kit[k]:>12.6f}{ref[k]:>12.6f}{diff:>11.2e}"
                      + (f"{abs(noise[k] - ref[k]):>13.2e}" if noise else ""))
            rows.append({"iteration": it + 1, "c": c, "kit": kit, "published": ref,
                         "published_fused_adam": noise})
        published = published_parameters(loop)
        weights = weight_differences(kit_parameters(trainer), published, start)
        floor = (weight_differences(published_parameters(twin), published, start)
                 if twin is not None else None)
    print(f"weights after {args.iters} iterations, against the published run: max |difference|,"
          " and ||difference|| / ||published - initial||")
    for kind, d in weights.items():
        print(f"  {kind:<5} kit {d['max_abs']:.2e}, {d['rel_update']:.2e}" + (
            f"   noise floor {floor[kind]['max_abs']:.2e}, {floor[kind]['rel_update']:.2e}"
            if floor else ""))
    ok = worst <= args.tol
    n = min(args.check_iters, args.iters)
    print(f"largest loss difference over the first {n} iterations: {worst:.2e} "
          f"(tolerance {args.tol:g}): {'PASS' if ok else 'FAIL'}")
    if args.json:
        print(json.dumps({"size": S, "batch": B, "g_iter": cfg.g_iter,
                          "batched_d_step": cfg.batched_d_step, "rows": rows,
                          "weights": weights, "weights_noise_floor": floor,
                          "worst_loss_diff": worst, "tol": args.tol, "pass": ok,
                          "torch": torch.__version__, "threads": torch.get_num_threads()}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
