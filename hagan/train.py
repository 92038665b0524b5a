"""Hierarchical training of HA-GAN: one iteration = D, G, E^H and E^G updates.

Read :meth:`Trainer.step` top to bottom: it is the paper's Algorithm 1 (Sun et al., JBHI 2022,
Sec. III) with the published code's losses and hyper-parameters:

* D step:  L_D = BCE(D(x_slab, x_low, c), 1) + BCE(D(G(z, c)), 0)   [+ 1.0 * CE(class_real, y)]
* G step:  L_G = BCE(D(G(z', c)), 1)                               [+ 0.1 * CE(class_fake, y)]
* E step:  L_E = |G^H(E^H(x_slab)) - x_slab|_1                     (G frozen)
* Sub-E:   L_SubE = 1/2 (|x^_slab - x_slab|_1 + |x^_low - x_low|_1), x^ = G(E^G(E^H(x)), c)

where x_low is x at 1/4 resolution (nearest), c ~ U{0, ..., 7S/8} is the slab start and x_slab the
S/8-deep axial slab at c. Adam with betas (0, 0.999); lr G 1e-4, D 4e-4, E and Sub-E 1e-4.

Everything else here is plumbing a long run needs: mixed precision, DDP via torchrun, tqdm,
TensorBoard, a JSON-lines log, atomic checkpoints with exact resume, SIGINT/SIGTERM handling and
a NaN guard.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .errors import RunError
from . import checkpoint as ckpt
from .config import Config, PathLike, from_dict, parse_overrides, preset, save_json
from .data import InfiniteSampler, PreparedDataset
from .models import build_models
from .runtime import autocast_context, init_distributed, resolve_device, shutdown_distributed

logger = logging.getLogger(__name__)

# Config keys that define the networks: a resumed run must keep them.
ARCHITECTURE_KEYS = ("size", "width", "latent_dim", "num_classes")
LOSS_KEYS = ("loss_d", "loss_d_real", "loss_d_fake", "loss_g", "loss_e", "loss_sube")


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was written before stopping."""

    def __init__(self, signum: int, step: int, path: Path) -> None:
        self.signum, self.step, self.path = signum, step, path
        super().__init__(f"stopped by {signal.Signals(signum).name} at iteration {step}; "
                         f"checkpoint saved to {path}")


class NonFiniteLossError(RunError):
    """A loss became NaN or infinite; training stopped without saving the broken state."""


def set_requires_grad(net: nn.Module, flag: bool) -> None:
    for p in net.parameters():
        p.requires_grad_(flag)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Path | None
    losses: dict[str, float]


class Trainer:
    """Builds the four networks, their optimisers and the data stream, and runs iterations.

    Args:
        cfg: The run's configuration.
        run_dir: Folder for checkpoints, ``metrics.jsonl``, ``config.json`` and TensorBoard logs.
        dataset: Volumes to train on; default ``PreparedDataset(cfg.data)``. Items are (1, S, S, S)
            tensors, or ``(volume, label)`` for a conditional model.
        resume: Continue from the newest good checkpoint in ``run_dir`` when there is one.
    """

    def __init__(self, cfg: Config, run_dir: PathLike, dataset: Dataset | None = None,
                 resume: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.device = resolve_device(cfg.device)
        self.rank, self.world = init_distributed(self.device)
        self.is_main = self.rank == 0
        if self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device() if self.world == 1
                                       else self.rank % torch.cuda.device_count())
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest conv

        autocast_context(self.device.type, cfg.precision)  # fail early on e.g. fp16 on CPU
        found = ckpt.latest_checkpoint(self.run_dir) if resume else None
        state = found[1] if found else None
        if state is not None:
            cfg = _merge_resumed_config(from_dict(state["config"]), cfg)
        self.cfg = cfg
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        nets = build_models(cfg)
        memory_format = torch.channels_last_3d if cfg.channels_last else torch.preserve_format
        for net in nets.values():
            net.to(self.device, memory_format=memory_format)
        self.G, self.D, self.E, self.SubE = nets["G"], nets["D"], nets["E"], nets["SubE"]
        # G's weights change only in its optimizer step (and when a checkpoint loads), so the
        # four G passes of an iteration can share their transformed upsampling kernels (see
        # hagan.models.upsample_conv3d); a hook on G's optimizer clears them (below).
        self.G.cache_upsample_kernels()

        # Fused Adam: one pass over each tensor instead of one per arithmetic op, the same update
        # to rounding (paper128 on 2 CPU cores: G's step 142 -> 30 ms). Kernels: CUDA and CPU.
        self._fused_adam = self.device.type in ("cuda", "cpu")
        adam = {"betas": (cfg.beta1, cfg.beta2), "fused": self._fused_adam}
        self.opt = {
            "G": torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, **adam),
            "D": torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, **adam),
            "E": torch.optim.Adam(self.E.parameters(), lr=cfg.lr_e, **adam),
            "SubE": torch.optim.Adam(self.SubE.parameters(), lr=cfg.lr_e, **adam),
        }
        # fused Adam does not bump the weights' version counters: drop G's cached kernels here
        self.opt["G"].register_step_post_hook(self._drop_cached_kernels)
        # GradScaler only for fp16; a no-op otherwise (nanoGPT's pattern).
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        # Latent draws and slab positions come from this generator, seeded per rank.
        self.rng = torch.Generator().manual_seed(cfg.seed + 1000 * self.rank)
        self.step_num = 0
        if state is not None:
            self._load_state(state)
            if self.is_main:
                logger.info("resuming from %s (iteration %d)", found[0], self.step_num)

        # Networks called by the update that trains them go through DDP; the frozen ones are
        # called directly (``self.nets``), so each DDP wrapper sees one forward per backward.
        self.nets = {"G": self.G, "D": self.D, "E": self.E, "SubE": self.SubE}
        self.train_nets = dict(self.nets)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_nets = {k: DDP(v, device_ids=ids) for k, v in self.nets.items()}
        if cfg.compile:
            self.train_nets = {k: torch.compile(v) for k, v in self.train_nets.items()}

        self.dataset = dataset if dataset is not None else PreparedDataset(
            cfg.data, size=cfg.size, num_classes=cfg.num_classes, augment=cfg.augment)
        self._stop_signal: int | None = None

    # --- the algorithm --------------------------------------------------------------------------
    def draw_slab_start(self) -> int:
        """c ~ U{0, ..., 7S/8}; multiples of 4 only when ``align_slabs`` (see Config)."""
        if self.cfg.align_slabs:
            return 4 * int(torch.randint(0, self.cfg.max_slab_start // 4 + 1, (1,),
                                         generator=self.rng))
        return int(torch.randint(0, self.cfg.max_slab_start + 1, (1,), generator=self.rng))

    def draw_z(self, batch: int) -> torch.Tensor:
        return torch.randn(batch, self.cfg.latent_dim, generator=self.rng).to(self.device)

    def step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One HA-GAN iteration on real volumes ``x`` (B, 1, S, S, S); returns detached losses."""
        cfg, nets, train = self.cfg, self.nets, self.train_nets
        B = x.shape[0]
        ctx = autocast_context(self.device.type, cfg.precision)
        x_low = x[:, :, ::4, ::4, ::4]  # (B, 1, S/4, S/4, S/4): = F.interpolate(x, 0.25), nearest
        c = self.draw_slab_start()
        x_slab = x[:, :, c:c + cfg.slab_depth]  # (B, 1, S/8, S, S)
        ones, zeros = x.new_ones(B, 1), x.new_zeros(B, 1)
        c_d = torch.tensor(float(c), device=self.device)  # a tensor: torch.compile won't specialise

        # 1. D step: real and fake go through D in one batch (D has no batch statistics).
        set_requires_grad(self.D, True)
        set_requires_grad(self.G, False)
        z = self.draw_z(B)
        with ctx:
            with torch.no_grad():
                fake_slab, fake_low = nets["G"](z, c, y)  # (B, 1, S/8, S, S), (B, 1, S/4, ...)
            logits, cls = train["D"](torch.cat([x_slab, fake_slab]), torch.cat([x_low, fake_low]),
                                     c_d)  # (2B, 1), (2B, nc) or None
        loss_d_real = F.binary_cross_entropy_with_logits(logits[:B].float(), ones)
        loss_d_fake = F.binary_cross_entropy_with_logits(logits[B:].float(), zeros)
        loss_d = loss_d_real + loss_d_fake
        if cls is not None:  # AC-GAN term on real volumes only, weight 1
            loss_d = loss_d + F.cross_entropy(cls[:B].float(), y)
        self._update("D", loss_d)

        # 2. G step: fresh z, same slab position c.
        set_requires_grad(self.D, False)
        set_requires_grad(self.G, True)
        z = self.draw_z(B)
        with ctx:
            fake_slab, fake_low = train["G"](z, c, y)
            logit, cls = nets["D"](fake_slab, fake_low, c_d)
        loss_g = F.binary_cross_entropy_with_logits(logit.float(), ones)
        if cls is not None:
            loss_g = loss_g + cfg.lambda_class * F.cross_entropy(cls.float(), y)
        self._update("G", loss_g)

        # 3. E^H step: reconstruct the real slab through the frozen high-res head G^H.
        set_requires_grad(self.G, False)
        set_requires_grad(self.E, True)
        with ctx:
            rec = nets["G"].decode_slab(train["E"](x_slab))  # (B, 1, S/8, S, S)
        loss_e = F.l1_loss(rec.float(), x_slab)
        self._update("E", loss_e)

        # 4. E^G step: encode all 8 slabs in one batched call, then decode through frozen G.
        set_requires_grad(self.E, False)
        set_requires_grad(self.SubE, True)
        with ctx:
            with torch.no_grad():
                feats = self.encode_slabs(x)  # (B, 64, S/4, S/4, S/4)
            z_hat = train["SubE"](feats)  # (B, latent_dim)
            rec_slab, rec_low = nets["G"](z_hat, c, y)
        loss_sube = 0.5 * (F.l1_loss(rec_slab.float(), x_slab) + F.l1_loss(rec_low.float(), x_low))
        self._update("SubE", loss_sube)
        set_requires_grad(self.SubE, False)

        return {"loss_d": loss_d.detach(), "loss_d_real": loss_d_real.detach(),
                "loss_d_fake": loss_d_fake.detach(), "loss_g": loss_g.detach(),
                "loss_e": loss_e.detach(), "loss_sube": loss_sube.detach()}

    def encode_slabs(self, x: torch.Tensor) -> torch.Tensor:
        """E^H on the 8 axial slabs of x (B, 1, S, S, S), each on its own like the paper, joined
        along depth -> (B, 64, S/4, S/4, S/4). On CUDA all 8B slabs go in one batched call; on
        CPU one slab position at a time, written straight into its depth range of the result,
        which keeps E's half-resolution activations 8x smaller and never holds two copies of
        the features (paper256 batch 1: about 0.8 GiB less peak memory)."""
        B, S, d = x.shape[0], self.cfg.size, self.cfg.slab_depth
        E = self.nets["E"]
        if self.device.type != "cuda":
            feats = None
            for i in range(8):
                part = E(x[:, :, i * d:(i + 1) * d])  # (B, 64, S/32, S/4, S/4)
                if feats is None:
                    feats = part.new_empty(B, part.shape[1], S // 4, S // 4, S // 4)
                feats[:, :, i * part.shape[2]:(i + 1) * part.shape[2]] = part
            return feats
        slabs = x.reshape(B, 1, 8, d, S, S).transpose(1, 2).reshape(B * 8, 1, d, S, S)
        feats = E(slabs)  # (8B, 64, S/32, S/4, S/4)
        feats = feats.view(B, 8, *feats.shape[1:]).transpose(1, 2)  # (B, 64, 8, S/32, S/4, S/4)
        return feats.reshape(B, feats.shape[1], S // 4, S // 4, S // 4)

    def _drop_cached_kernels(self, *_) -> None:
        """Optimizer step hook of G: its weights changed, so its cached kernels are stale."""
        if self.G.kernel_cache is not None:
            self.G.kernel_cache.clear()

    def _update(self, name: str, loss: torch.Tensor) -> None:
        opt = self.opt[name]
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)
        self.scaler.update()
        opt.zero_grad(set_to_none=True)  # free the gradients now: the next phases need the memory

    # --- the loop -------------------------------------------------------------------------------
    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Endless batches, starting where the (resumed) run left off."""
        cfg = self.cfg
        sampler = InfiniteSampler(len(self.dataset), seed=cfg.seed,
                                  start=self.step_num * cfg.batch_size, rank=self.rank,
                                  world_size=self.world)
        loader = DataLoader(self.dataset, batch_size=cfg.batch_size, sampler=sampler,
                            num_workers=cfg.workers, pin_memory=self.device.type == "cuda",
                            persistent_workers=cfg.workers > 0, drop_last=True,
                            generator=torch.Generator().manual_seed(cfg.seed + self.step_num))
        memory_format = torch.channels_last_3d if cfg.channels_last else torch.preserve_format
        for batch in loader:
            x, y = (batch if isinstance(batch, (list, tuple)) else (batch, None))
            x = x.to(self.device, non_blocking=True).float().contiguous(
                memory_format=memory_format)
            if y is not None:
                y = torch.as_tensor(y).long().to(self.device)
            yield x, y

    def train(self) -> TrainResult:
        """Run until ``cfg.iterations``; checkpoints, logs and previews along the way."""
        cfg = self.cfg
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_json(cfg, self.run_dir / "config.json")
            _truncate_log(self.run_dir / "metrics.jsonl", self.step_num)
            ckpt.remove_stale_temp_files(self.run_dir)
        writer = self._tensorboard()
        previous = self._install_signal_handlers()
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.iterations, initial=self.step_num, desc="train", unit="it",
                   disable=not (cfg.progress and self.is_main), dynamic_ncols=True)
        window: dict[str, list[float]] = {k: [] for k in LOSS_KEYS}
        last_ckpt: Path | None = None
        last_losses: dict[str, float] = {}
        t_window = time.perf_counter()
        try:
            batches = self.batches()
            while self.step_num < cfg.iterations:
                x, y = next(batches)
                losses = self.step(x, y)
                values = torch.stack(list(losses.values())).float().cpu()
                if not torch.isfinite(values).all():
                    self._non_finite(losses, last_ckpt)
                self.step_num += 1
                last_losses = dict(zip(losses, values.tolist()))
                for k, v in last_losses.items():
                    window[k].append(v)
                bar.update(1)
                if self.step_num % cfg.log_every == 0 or self.step_num == cfg.iterations:
                    ms = 1000 * (time.perf_counter() - t_window) / len(window["loss_d"])
                    self._log(window, ms, writer, bar)
                    window = {k: [] for k in LOSS_KEYS}
                    t_window = time.perf_counter()
                if writer is not None and cfg.image_every and self.step_num % cfg.image_every == 0:
                    self._preview(writer, x, y)
                if self.step_num % cfg.checkpoint_every == 0:
                    last_ckpt = self.save()
                if self._should_stop():
                    path = self.save()
                    raise TrainingInterrupted(self._stop_signal or signal.SIGTERM, self.step_num,
                                              path)
            if last_ckpt is None or last_ckpt != ckpt.checkpoint_path(self.run_dir, self.step_num):
                last_ckpt = self.save()
            if self.world > 1:
                shutdown_distributed()
        finally:
            bar.close()
            if writer is not None:
                writer.close()
            self._restore_signal_handlers(previous)
        return TrainResult(self.run_dir, self.step_num, last_ckpt, last_losses)

    # --- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        return {
            "config": self.cfg.to_dict(),
            "step": self.step_num,
            "models": {k: ckpt.unwrap(v).state_dict() for k, v in self.nets.items()},
            "optimizers": {k: v.state_dict() for k, v in self.opt.items()},
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": {
                "trainer": self.rng.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                          int(np_state[2]), int(np_state[3]), float(np_state[4])],
                "python": _python_state_to_list(random.getstate()),
            },
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        for k, net in (("G", self.G), ("D", self.D), ("E", self.E), ("SubE", self.SubE)):
            net.load_state_dict(state["models"][k])
        for k, opt in self.opt.items():
            opt.load_state_dict(state["optimizers"][k])
            for group in opt.param_groups:  # saved on another device? use this device's kernels
                group.update(fused=self._fused_adam, foreach=None)
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        self.rng.set_state(rng["trainer"])
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        n = rng["numpy"]
        np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
        random.setstate(_python_state_from_list(rng["python"]))
        self.step_num = int(state["step"])

    def save(self) -> Path:
        """Write a checkpoint for the current iteration (main process only) and prune old ones."""
        path = ckpt.checkpoint_path(self.run_dir, self.step_num)
        if self.is_main:
            ckpt.save_checkpoint(path, self.state_dict())
            ckpt.prune_checkpoints(self.run_dir, self.cfg.keep_checkpoints)
        if self.world > 1:
            torch.distributed.barrier()
        return path

    # --- helpers --------------------------------------------------------------------------------
    def _non_finite(self, losses: dict[str, torch.Tensor], last_ckpt: Path | None) -> None:
        bad = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items()
                        if not math.isfinite(v.item()))
        good = ckpt.latest_checkpoint(self.run_dir) if self.is_main else None
        where = f"the last good checkpoint is {good[0]}" if good else "no checkpoint was saved yet"
        raise NonFiniteLossError(
            f"non-finite loss at iteration {self.step_num + 1} ({bad}); training stopped and "
            f"nothing was saved from this iteration; {where}. Try a lower learning rate or "
            "precision=fp32, and check the data for NaN values."
        )

    def _log(self, window: dict[str, list[float]], ms: float, writer, bar) -> None:
        means = {k: float(np.mean(v)) for k, v in window.items()}
        if self.is_main:
            record = {"step": self.step_num, **{k: round(v, 6) for k, v in means.items()},
                      "ms_per_step": round(ms, 2), "time": round(time.time(), 3)}
            with open(self.run_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            if writer is not None:
                for k, v in means.items():
                    writer.add_scalar(f"loss/{k}", v, self.step_num)
                writer.add_scalar("perf/ms_per_step", ms, self.step_num)
            bar.set_postfix(D=f"{means['loss_d']:.3f}", G=f"{means['loss_g']:.3f}",
                            E=f"{means['loss_e']:.3f}", SubE=f"{means['loss_sube']:.3f}")
            logger.debug("step %d: loss_d %.4f, loss_g %.4f, loss_e %.4f, loss_sube %.4f, "
                         "%.1f ms/step", self.step_num, means["loss_d"], means["loss_g"],
                         means["loss_e"], means["loss_sube"], ms)

    def _tensorboard(self):
        if not (self.cfg.tensorboard and self.is_main):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # pragma: no cover - tensorboard is a dependency
            logger.warning("tensorboard is not installed; pip install tensorboard")
            return None
        return SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step_num + 1)

    @torch.no_grad()
    def _preview(self, writer, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Orthogonal slices of a real slab, its Sub-E reconstruction... kept cheap: the real
        low-res image and a generated low-res image plus slab (no full-resolution volume)."""
        from . import viz

        G = self.G
        was_training = G.training
        G.eval()
        z = torch.randn(1, self.cfg.latent_dim, generator=torch.Generator().manual_seed(0))
        yy = y[:1] if y is not None else None
        slab, low = G(z.to(self.device), self.cfg.max_slab_start // 2, yy)
        G.train(was_training)
        fig = viz.plot_volumes(
            [x[0, 0, ::4, ::4, ::4].float().cpu(), low[0, 0].float().cpu()],
            ["real (1/4 res)", "generated G^L (1/4 res)"],
            title=f"iteration {self.step_num}")
        writer.add_figure("preview/low_res", fig, self.step_num)

    def _install_signal_handlers(self):
        import threading

        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):  # noqa: ARG001
            self._stop_signal = signum

        return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def _restore_signal_handlers(self, previous) -> None:
        for s, h in (previous or {}).items():
            signal.signal(s, h)

    def _should_stop(self) -> bool:
        flag = self._stop_signal is not None
        if self.world > 1:  # every rank stops at the same iteration
            t = torch.tensor([int(flag)], device=self.device if self.device.type == "cuda"
                             else "cpu")
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            flag = bool(t.item())
            if flag and self._stop_signal is None:
                self._stop_signal = signal.SIGTERM
        return flag


def _python_state_to_list(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_list(values: list) -> tuple:
    version, internal, gauss = values
    return (version, tuple(internal), gauss)


def _merge_resumed_config(saved: Config, requested: Config) -> Config:
    """Keep the saved architecture; take the requested run settings (iterations, logging...)."""
    clash = [k for k in ARCHITECTURE_KEYS if getattr(saved, k) != getattr(requested, k)]
    if clash and requested.preset != "custom":
        details = ", ".join(f"{k}: checkpoint {getattr(saved, k)} vs requested "
                            f"{getattr(requested, k)}" for k in clash)
        raise ValueError(f"the run folder holds a different model ({details}); use a new --out "
                         "folder or the same preset")
    keep = {k: getattr(saved, k) for k in ARCHITECTURE_KEYS + ("seed",)}
    return requested.replace(**keep)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (left by a run that died after its last checkpoint)."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines()
             if ln.strip() and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in lines))


def train(cfg: Config, run_dir: PathLike, dataset: Dataset | None = None,
          resume: bool = True) -> TrainResult:
    """Train (or resume) a run; see :class:`Trainer`.

    Example:
        >>> from hagan import preset
        >>> from hagan.train import train
        >>> cfg = preset("tiny32", iterations=20, data="work/demo")
        >>> result = train(cfg, "work/run")  # doctest: +SKIP
    """
    return Trainer(cfg, run_dir, dataset=dataset, resume=resume).train()


def read_metrics(run_dir: PathLike) -> list[dict[str, float]]:
    """The JSON-lines training log of a run as a list of dicts."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


# --- CLI: hagan train --preset P --data DIR --out RUN [--set key=value ...] --------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny32",
                   help="paper256, paper128, small64 or tiny32 (default tiny32)")
    p.add_argument("--data", help="prepared dataset folder (hagan demo-data / hagan preprocess)")
    p.add_argument("--out", required=True, help="run folder; resumes when it holds a checkpoint")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set iterations=500 --set precision=bf16")
    p.add_argument("--fresh", action="store_true",
                   help="ignore checkpoints in --out (refused when it already holds some)")


def main(args: argparse.Namespace) -> int:
    cfg = preset(args.preset)
    if args.data:
        cfg = cfg.replace(data=str(args.data))
    cfg = parse_overrides(args.overrides, cfg)
    has_ckpt = bool(ckpt.list_checkpoints(args.out))
    if args.fresh and has_ckpt:
        raise FileExistsError(f"{args.out} already holds checkpoints; --fresh would mix two runs. "
                              "Choose a new --out folder.")
    if not cfg.data and not has_ckpt:
        raise ValueError("--data is required: a prepared dataset folder (make one with "
                         "`hagan demo-data DIR`)")
    try:
        result = train(cfg, args.out, resume=not args.fresh)
    except TrainingInterrupted as exc:
        print(f"hagan train: {exc}")
        return 128 + int(exc.signum)
    except NonFiniteLossError as exc:
        print(f"hagan train: error: {exc}", file=sys.stderr)
        return 3
    print(f"trained to iteration {result.step}; checkpoint: {result.checkpoint}")
    print("losses: " + ", ".join(f"{k} {v:.4f}" for k, v in result.losses.items()))
    return 0
