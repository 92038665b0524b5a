"""Hierarchical training of HA-GAN: one iteration = D, G, E^H and E^G updates.

Read :meth:`Trainer.step` top to bottom: it is the paper's Algorithm 1 (Sun et al., JBHI 2022,
Sec. III) with the published code's losses and hyper-parameters:

* D step:  L_D = BCE(D(x_slab, x_low, c), 1) + BCE(D(G(z, c)), 0)   [+ 1.0 * CE(class_real, y)]
* G step:  L_G = BCE(D(G(z', c)), 1)                               [+ 0.1 * CE(class_fake, y)]
* E step:  L_E = |G^H(E^H(x_slab)) - x_slab|_1                     (G frozen)
* Sub-E:   L_SubE = 1/2 (|x^_slab - x_slab|_1 + |x^_low - x_low|_1), x^ = G(E^G(E^H(x)), c)

where x_low is x at 1/4 resolution (nearest), c ~ U{0, ..., 7S/8} is the slab start and x_slab the
S/8-deep axial slab at c (all from :mod:`hagan.slab`). Adam with betas (0, 0.999); lr G 1e-4,
D 4e-4, E and Sub-E 1e-4. As published, the D step sends the real and the fake pair through D in
two passes (two spectral-norm power iterations), and the G step repeats ``g_iter`` times.
``Trainer.step(x, y, z=..., c=...)`` takes the latent draws and the slab start from outside, so a
harness can replay another loop's randomness (benchmarks/fidelity_compare.py).

Everything else here is plumbing a long run needs: mixed precision, DDP via torchrun, tqdm,
TensorBoard, a JSON-lines log, atomic checkpoints with exact resume, SIGINT/SIGTERM handling and
a NaN guard.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import signal
import sys
import time
from collections.abc import Collection, Iterator, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import checkpoint as ckpt
from . import slab
from .checkpoint import LOSS_KEYS, read_metrics  # noqa: F401 (read_metrics: re-exported)
from .config import SLAB_FRACTION, Config, PathLike, from_dict, parse_overrides, preset
from .data import DataSplit, InfiniteSampler, PreparedDataset
from .errors import CheckpointError, ConfigError, DataError, RunError, explain
from .fileio import check_output_outside_dataset, lock_folder, write_json
from .models import Networks, build_models
from .runtime import autocast_context, init_distributed, resolve_device, shutdown_distributed

logger = logging.getLogger(__name__)

# Config keys that define the networks: a resumed run must keep them.
ARCHITECTURE_KEYS = ("size", "width", "latent_dim", "num_classes", "low_res_critic",
                     "d_minibatch_std")
# what a resumed run keeps from its checkpoint, whatever is requested
RESUME_FIXED_KEYS = ARCHITECTURE_KEYS + ("seed", "keep_best_from")
DIVERSITY_SAMPLES = 8  # volumes generated from fixed latents for the collapse watch


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was written before stopping."""

    def __init__(self, signum: int, step: int, path: Path) -> None:
        self.signum, self.step, self.path = signum, step, path
        super().__init__(f"stopped by {signal.Signals(signum).name} at iteration {step}; "
                         f"checkpoint saved to {path}")


class NonFiniteLossError(RunError):
    """A loss became NaN or infinite; training stopped without saving the broken state."""


def r1_penalty(real_logit: torch.Tensor, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """R1 (Mescheder et al., ICML 2018, eq. 9): E_x ||grad_x D(x)||^2 over real volumes, the
    squared gradient norms of every input view (slab and low-res image) summed per volume, then
    averaged over the batch; a scalar, differentiable in D's weights.

    Args:
        real_logit: D's logits (B, 1) for the real inputs.
        inputs: The real inputs D saw, created with ``requires_grad=True``. An input D did
            not use (the low-res image when ``low_res_critic=False``) adds nothing.
    """
    grads = torch.autograd.grad(real_logit.float().sum(), list(inputs), create_graph=True,
                                allow_unused=True)  # low-res unused without D^L (ablation)
    per_volume = torch.stack([g.float().pow(2).flatten(1).sum(1) for g in grads
                              if g is not None]).sum(0)  # (B,)
    return per_volume.mean()


def set_requires_grad(net: nn.Module, flag: bool) -> None:
    for p in net.parameters():
        p.requires_grad_(flag)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Path | None
    losses: dict[str, float]
    best: Path | None = None  # checkpoints/best.pt when cfg.keep_best_from chose one
    best_scores: dict[str, float] | None = None  # its iteration ("step") and val_* scores


class Trainer:
    """Builds the four networks, their optimisers and the data stream, and runs iterations.

    Args:
        cfg: The run's configuration.
        run_dir: Folder for checkpoints, ``metrics.jsonl``, ``config.json`` and TensorBoard logs.
        dataset: Volumes to train on, used whole; default: the train split of
            ``PreparedDataset(cfg.data)`` (``cfg.holdout_fraction`` held out, the split recorded
            in ``run_dir/split.json``). Items are (1, S, S, S)
            tensors, or ``(volume, label)`` for a conditional model.
        resume: Continue from the newest good checkpoint in ``run_dir`` when there is one.
            When the folder holds checkpoints and none can resume training, the trainer
            refuses (:class:`RunError` naming them) rather than start over.
        fresh: Start a new run even when ``run_dir`` holds one (``resume=False`` means the
            same): when training starts, the earlier run's files are moved into
            ``run_dir/previous-<date>-<time>/``, never deleted or overwritten. Without it a
            non-empty folder that is not a kit run folder is refused
            (:func:`hagan.checkpoint.check_run_folder`).
        explicit: Config keys the user set explicitly (``--set``): on resume, one of
            :data:`RESUME_FIXED_KEYS` that differs from the run's is refused, not ignored.

    The run folder is locked while :meth:`train` runs (a second process is refused), and a
    prepared dataset, or a folder inside one, is refused as a run folder.
    """

    def __init__(self, cfg: Config, run_dir: PathLike, dataset: Dataset | None = None,
                 resume: bool = True, fresh: bool = False,
                 explicit: Collection[str] = ()) -> None:
        self.run_dir = Path(run_dir)
        self.fresh = fresh or not resume
        if ckpt.is_dataset_folder(self.run_dir):
            raise RunError(explain("run folder", "a folder for checkpoints and logs",
                                   f"{self.run_dir}, which holds a prepared dataset "
                                   "(manifest.csv, dataset.json or volumes/)",
                                   "Choose another --out folder; a run never writes into a "
                                   "dataset."))
        check_output_outside_dataset(self.run_dir, "hagan train --out")  # e.g. DATA/volumes
        if not self.fresh:
            ckpt.check_run_folder(self.run_dir)  # a folder of the user's own files: refused
        self.device = resolve_device(cfg.device)
        self.rank, self.world = init_distributed(self.device)
        if self.world > 1 and cfg.r1_gamma:  # a double backward through DDP: never tested here
            raise ConfigError(explain("r1_gamma", "0 in distributed (torchrun) training",
                                      str(cfg.r1_gamma), "Train on one process, or set "
                                      "r1_gamma=0."))
        self.is_main = self.rank == 0
        if self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device() if self.world == 1
                                       else self.rank % torch.cuda.device_count())
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest conv

        autocast_context(self.device.type, cfg.precision)  # fail early on e.g. fp16 on CPU
        scan = ckpt.RunScan() if self.fresh else ckpt.scan_run(self.run_dir)
        if scan.newest is None and scan.damaged:
            ckpt.refuse_unloadable_run(self.run_dir, scan.damaged)
        found = scan.newest
        state = found[1] if found else None
        # what train() checks it still finds, and what it sets aside / counts when pruning
        self._seen = [p.name for p in ckpt.list_checkpoints(self.run_dir)]
        self._damaged = scan.damaged
        self._verified: set[Path] = set(scan.good)
        self._resumed_from = found[0] if found else None
        if state is not None:
            assert found is not None  # state is found[1]: for the type checker
            cfg = _merge_resumed_config(_saved_config(state, found[0]), cfg, explicit)
            ckpt.check_training_state(state, found[0])  # names a missing part, e.g. optimizers
        if dataset is None:
            cfg = _absolute_data(cfg, state)
        self.cfg = cfg
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        nets = build_models(cfg)
        memory_format = torch.channels_last_3d if cfg.channels_last else torch.preserve_format
        for net in nets.values():
            # Module.to(memory_format=) exists at run time; torch's overload stubs omit it
            net.to(self.device, memory_format=memory_format)  # type: ignore[call-overload]
        self.G, self.D, self.E, self.SubE = nets["G"], nets["D"], nets["E"], nets["SubE"]
        # The four G passes of an iteration see the same weights, so they can share their
        # transformed upsampling kernels (hagan.upsample.UpsampleConv3d notices weight changes).
        # CPU only: there the transform of a 512x512 kernel costs tens of ms; on CUDA it is a few
        # small kernels, and the cache's exact change check (torch.equal) would synchronise the
        # GPU on every upsampling layer. Exact either way: the numbers do not depend on it.
        if self.device.type == "cpu":
            self.G.cache_upsample_kernels()

        # Fused Adam: one pass over each tensor instead of one per arithmetic op, the same update
        # to rounding, and much faster (benchmarks/RESULTS.md). Kernels: CUDA and CPU.
        self._fused_adam = self.device.type in ("cuda", "cpu")
        adam: dict[str, Any] = {"betas": (cfg.beta1, cfg.beta2), "fused": self._fused_adam}
        self.opt = {
            "G": torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, **adam),
            "D": torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, **adam),
            "E": torch.optim.Adam(self.E.parameters(), lr=cfg.lr_e, **adam),
            "SubE": torch.optim.Adam(self.SubE.parameters(), lr=cfg.lr_e, **adam),
        }
        # GradScaler only for fp16; a no-op otherwise (nanoGPT's pattern).
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        # Latent draws and slab positions come from this generator, seeded per rank.
        self.rng = torch.Generator().manual_seed(cfg.seed + 1000 * self.rank)
        self.step_num = 0
        if state is not None:
            assert found is not None  # state is found[1]: for the type checker
            self._load_state(state, found[0])
            if self.is_main:
                logger.info("resuming from %s (iteration %d)", found[0], self.step_num)
        del state, scan

        # Networks called by the update that trains them go through DDP; the frozen ones are
        # called directly (``self.nets``), so each DDP wrapper sees one forward per backward.
        self.nets = Networks({"G": self.G, "D": self.D, "E": self.E, "SubE": self.SubE})
        self.train_nets: dict[str, nn.Module] = dict(self.nets)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_nets = {k: DDP(v, device_ids=ids) for k, v in self.nets.items()}
        if cfg.compile:
            # torch.compile of a Module returns an OptimizedModule (a Module); its stub: Callable
            self.train_nets = {k: cast(nn.Module, torch.compile(v))
                               for k, v in self.train_nets.items()}

        # Training on cfg.data: the train split only; the held-out volumes are recorded in the
        # run folder (split.json) for `hagan evaluate`. A given dataset is used whole.
        self.split: DataSplit | None = None
        # what the checkpoints record about the data: absolute path, spacing, modality, window
        root = cfg.data if dataset is None else getattr(dataset, "root", None)
        self.data_info: dict[str, Any] | None = ckpt.data_record(root) if root else None
        if dataset is None:
            full = PreparedDataset(cfg.data, size=cfg.size, num_classes=cfg.num_classes,
                                   augment=cfg.augment)
            self.split = ckpt.training_split(self.run_dir, full, cfg.holdout_fraction,
                                             resumed=self._resumed_from is not None)
            dataset = full.select(self.split.train)
        names = (self.data_info or {}).get("label_names") or []
        if self.is_main and names:
            if not cfg.num_classes:
                logger.info("the dataset has %d labels (%s) but this model is unconditional; "
                            "--set num_classes=%d trains a class-conditional one (new run)",
                            len(names), ", ".join(names), len(names))
            else:
                logger.info("%s", ckpt.label_map_text(names))
        self.dataset = dataset
        self._stop_signal: int | None = None
        # Set keep_images to have step() keep the first volume's real, generated and
        # reconstructed slabs in last_images (the training loop does, for the previews).
        self.keep_images = False
        self.last_images: dict[str, torch.Tensor] = {}
        # The latest diversity check (cfg.diversity_every) and validation (cfg.keep_best_from),
        # added to the next metrics record.
        self.diversity_log: dict[str, float] = {}
        self._real_diversity: float | None = None
        self._validation: Any = None  # hagan.metrics.Validation, built at the first check
        self._best: dict[str, float] | None = None  # scores of checkpoints/best.pt
        if 0 < cfg.keep_best_from <= cfg.iterations:  # this training will score checkpoints
            if self.split is None:
                raise ConfigError(explain("keep_best_from", "training on cfg.data with its "
                                          "held-out split (the volumes the checkpoints are "
                                          "scored on)", "a dataset passed to the trainer",
                                          "Pass no dataset, or set keep_best_from=0."))
            sizes = len(self.split.train), len(self.split.heldout)
            if min(sizes) < 2:  # an FID needs two feature vectors per set, MS-SSIM a pair
                fix = ("This run's split (split.json) is fixed: pass --fresh to split again"
                       if self._resumed_from is not None else "Use more volumes or another "
                       "holdout_fraction")
                raise DataError(explain("keep_best_from", "at least 2 training and 2 held-out "
                                        "volumes to score checkpoints on",
                                        f"{sizes[0]} and {sizes[1]}", f"{fix}, or set "
                                        "keep_best_from=0."))

    # --- the algorithm --------------------------------------------------------------------------
    def draw_slab_start(self) -> int:
        """c ~ U{0, ..., 7S/8} from the trainer's generator; multiples of 4 only when
        ``align_slabs`` (see :func:`hagan.slab.draw_slab_start`)."""
        return slab.draw_slab_start(self.cfg.size, self.rng, self.cfg.align_slabs)

    def draw_z(self, batch: int) -> torch.Tensor:
        """One latent draw z ~ N(0, I), (batch, latent_dim), from the trainer's generator."""
        return torch.randn(batch, self.cfg.latent_dim, generator=self.rng).to(self.device)

    def step(self, x: torch.Tensor, y: torch.Tensor | None = None,
             z: Sequence[torch.Tensor] | torch.Tensor | None = None,
             c: int | None = None) -> dict[str, torch.Tensor]:
        """One HA-GAN iteration on real volumes ``x`` (B, 1, S, S, S); returns detached losses.

        Args:
            x: Real volumes (B, 1, S, S, S) on the trainer's device, in [-1, 1].
            y: Class labels (B,) for a conditional model, else None.
            z: This iteration's latent draws, given from outside to replay another loop's
                randomness (benchmarks/fidelity_compare.py): ``g_iter + 1`` tensors
                (B, latent_dim), as a list or one (g_iter + 1, B, latent_dim) tensor; ``z[0]``
                makes the D step's fake, ``z[1 + k]`` G update ``k``. None: drawn with
                :meth:`draw_z`.
            c: Slab start in [0, 7S/8] (image voxels). None: drawn with :meth:`draw_slab_start`.

        What is not given is drawn from ``self.rng`` in this order: c, z[0], z[1], ...
        With ``g_iter > 1``, ``loss_g`` is the last G update's loss (as the published log).
        """
        cfg, nets, train = self.cfg, self.nets, self.train_nets
        B = x.shape[0]
        if z is not None and len(z) != cfg.g_iter + 1:
            raise ValueError(f"z must hold g_iter + 1 = {cfg.g_iter + 1} latent draws "
                             f"(one for the D step, one per G update), got {len(z)}")
        if c is None:
            c = self.draw_slab_start()
        elif not 0 <= c <= cfg.max_slab_start:
            raise ValueError(f"slab start c must be in [0, {cfg.max_slab_start}], got {c}")
        ctx = autocast_context(self.device.type, cfg.precision)
        x_low = slab.low_res(x)  # (B, 1, S/4, S/4, S/4): = F.interpolate(x, 0.25), nearest
        x_slab = slab.crop_slab(x, c)  # (B, 1, S/8, S, S)
        ones, zeros = x.new_ones(B, 1), x.new_zeros(B, 1)
        c_d = torch.tensor(float(c), device=self.device)  # a tensor: torch.compile won't specialise

        def latent(k: int) -> torch.Tensor:
            return self.draw_z(B) if z is None else z[k].to(self.device)

        # 1. D step, as published: real, then fake, each in its own D pass. D is spectrally
        #    normalised and each training-mode pass runs one power iteration, so the two passes
        #    see different sigmas; ``batched_d_step`` (a deviation, off by default) fuses them.
        set_requires_grad(self.D, True)
        set_requires_grad(self.G, False)
        z_d = latent(0)
        with ctx:
            with torch.no_grad():
                fake_slab, fake_low = nets["G"](z_d, c, y)  # (B, 1, S/8, S, S), (B, 1, S/4, ...)
            if cfg.batched_d_step:
                logits, cls = train["D"](*self.d_view(torch.cat([x_slab, fake_slab]),
                                                      torch.cat([x_low, fake_low]), 0),
                                         c_d)  # (2B, 1), (2B, nc)
                real_logit, fake_logit = logits[:B], logits[B:]
                real_cls = cls[:B] if cls is not None else None
            else:
                real_in = self.d_view(x_slab, x_low, 0)
                if cfg.r1_gamma:  # the penalty needs the gradient with respect to the input
                    real_in = (real_in[0].detach().requires_grad_(True),
                               real_in[1].detach().requires_grad_(True))
                real_logit, real_cls = train["D"](*real_in, c_d)  # (B, 1), (B, nc) or None
                fake_logit, _ = train["D"](*self.d_view(fake_slab, fake_low, 1), c_d)
        loss_d_real = F.binary_cross_entropy_with_logits(real_logit.float(), ones)
        loss_d_fake = F.binary_cross_entropy_with_logits(fake_logit.float(), zeros)
        loss_d = loss_d_real + loss_d_fake
        if real_cls is not None:  # AC-GAN term on real volumes only, weight 1
            assert y is not None, "a conditional model is trained with labels y"
            loss_d = loss_d + F.cross_entropy(real_cls.float(), y)
        if cfg.r1_gamma:  # R1 (refused with batched_d_step); the logged loss_d is without it
            self._update("D", loss_d + 0.5 * cfg.r1_gamma * r1_penalty(real_logit, real_in))
        else:
            self._update("D", loss_d)

        # 2. G step(s): a fresh z per update, same slab position c.
        set_requires_grad(self.D, False)
        set_requires_grad(self.G, True)
        for k in range(cfg.g_iter):
            with ctx:
                fake_slab, fake_low = train["G"](latent(1 + k), c, y)
                logit, cls = nets["D"](*self.d_view(fake_slab, fake_low, 2 + k), c_d)
            loss_g = F.binary_cross_entropy_with_logits(logit.float(), ones)
            if cls is not None:
                assert y is not None, "a conditional model is trained with labels y"
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

        if self.keep_images:  # for the TensorBoard preview, as published: first volume only
            self.last_images = {"real_slab": x_slab[0, 0].detach().float().cpu(),
                                "fake_slab": fake_slab[0, 0].detach().float().cpu(),
                                "rec_slab": rec_slab[0, 0].detach().float().cpu(),
                                "c": torch.tensor(c)}
        return {"loss_d": loss_d.detach(), "loss_d_real": loss_d_real.detach(),
                "loss_d_fake": loss_d_fake.detach(), "loss_g": loss_g.detach(),
                "loss_e": loss_e.detach(), "loss_sube": loss_sube.detach()}

    def d_view(self, x_slab: torch.Tensor, x_low: torch.Tensor,
               k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """What D sees of (slab, low-res): the tensors themselves, or with ``cfg.d_augment`` a
        random differentiable transform of them (:func:`hagan.augment.diff_augment`). The draws
        come from a generator seeded by (seed, rank, iteration, call ``k``), so the trainer's own
        random stream is unchanged and a resumed run draws the same transforms."""
        if not self.cfg.d_augment:
            return x_slab, x_low
        from .augment import diff_augment

        key = ((self.cfg.seed * 1_000_003 + self.rank) * 1_000_003 + self.step_num) * 64 + k
        return diff_augment(x_slab, x_low, torch.Generator().manual_seed(key % 2**63))

    def encode_slabs(self, x: torch.Tensor) -> torch.Tensor:
        """E^H on the 8 axial slabs of x (B, 1, S, S, S), each on its own like the paper, joined
        along depth -> (B, 64, S/4, S/4, S/4). On CUDA all 8B slabs go in one batched call; on
        CPU one slab position at a time, written straight into its depth range of the result,
        which keeps E's half-resolution activations 8x smaller and never holds two copies of
        the features (a lower peak memory; benchmarks/RESULTS.md)."""
        B, S, d = x.shape[0], self.cfg.size, self.cfg.slab_depth
        n, f = SLAB_FRACTION, self.cfg.feature_size  # 8 slabs; features (S/4)^3
        E = self.nets["E"]
        if self.device.type != "cuda":
            feats = None
            for i, a in enumerate(slab.slab_starts(S)):
                part = E(x[:, :, a:a + d])  # (B, 64, S/32, S/4, S/4)
                if feats is None:
                    feats = part.new_empty(B, part.shape[1], f, f, f)
                feats[:, :, i * part.shape[2]:(i + 1) * part.shape[2]] = part
            assert feats is not None  # set by the first of the 8 slabs
            return feats
        slabs = x.reshape(B, 1, n, d, S, S).transpose(1, 2).reshape(B * n, 1, d, S, S)
        feats = E(slabs)  # (8B, 64, S/32, S/4, S/4)
        feats = feats.view(B, n, *feats.shape[1:]).transpose(1, 2)  # (B, 64, 8, S/32, S/4, S/4)
        return feats.reshape(B, feats.shape[1], f, f, f)

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
        # a map-style dataset has __len__; torch's Dataset type does not declare it
        sampler = InfiniteSampler(len(cast(Sized, self.dataset)), seed=cfg.seed,
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
        """Run until ``cfg.iterations``; checkpoints, logs and previews along the way.

        Raises:
            RunError: another process holds the run folder's lock, or changed its checkpoints
                since this trainer was created.
        """
        lock = lock_folder(self.run_dir, "hagan train") if self.is_main else None
        try:
            if self.is_main:
                self._prepare_run_folder()
            return self._train_loop()
        finally:
            if lock is not None:
                # a later train() call on this trainer continues this run
                self._seen = [p.name for p in ckpt.list_checkpoints(self.run_dir)]
                found = ckpt.checkpoint_path(self.run_dir, self.step_num)
                if found.name in self._seen:
                    self._resumed_from = found
                lock.release()

    def _prepare_run_folder(self) -> None:
        """Under the run folder's lock, before anything is written: check that no other process
        changed the checkpoints since this trainer looked; set damaged checkpoints aside; on a
        fresh start move the earlier run's files aside; keep the log up to the resumed step."""
        if [p.name for p in ckpt.list_checkpoints(self.run_dir)] != self._seen:
            raise RunError(explain(str(self.run_dir), "the checkpoints this trainer found when "
                                   "it was created", "other checkpoints now (another process "
                                   "trained in this folder meanwhile)",
                                   "Create the trainer again to resume from the newest one."))
        if self._resumed_from is None:
            ckpt.move_previous_run(self.run_dir)  # a new run: nothing earlier is overwritten
            self._seen, self._verified = [], set()
        else:
            ckpt.set_aside_damaged(self._damaged)
            ckpt.truncate_metrics_log(self.run_dir / ckpt.METRICS_FILE, self.step_num)
            if self.cfg.keep_best_from:
                self._best = ckpt.read_best(self.run_dir, self.step_num)
                if self._best is None:
                    self._best = self._restore_best()
        self._damaged = []
        write_json(self.run_dir / "config.json", self.cfg.to_dict())
        if self.split is not None:
            ckpt.write_split(self.run_dir, self.split)
        ckpt.remove_stale_temp_files(self.run_dir)

    def _train_loop(self) -> TrainResult:
        cfg = self.cfg
        writer = self._tensorboard()
        previous = self._install_signal_handlers()
        from tqdm import tqdm  # the text bar: a notebook widget bar is saved at 0 % by papermill

        bar = tqdm(total=cfg.iterations, initial=self.step_num, desc="train", unit="it",
                   disable=not (cfg.progress and self.is_main), dynamic_ncols=True)
        window: dict[str, list[float]] = {k: [] for k in LOSS_KEYS}
        last_ckpt: Path | None = self._resumed_from  # already saved: not written again
        last_losses: dict[str, float] = {}
        t_window = time.perf_counter()
        try:
            batches = self.batches()
            while self.step_num < cfg.iterations:
                x, y = next(batches)
                self.keep_images = bool(writer is not None and cfg.image_every
                                        and (self.step_num + 1) % cfg.image_every == 0)
                losses = self.step(x, y)
                values = torch.stack(list(losses.values())).float().cpu()
                if not torch.isfinite(values).all():
                    self._non_finite(losses, last_ckpt)
                self.step_num += 1
                last_losses = dict(zip(losses, values.tolist()))
                for k, v in last_losses.items():
                    window[k].append(v)
                bar.update(1)
                if cfg.diversity_every and self.step_num % cfg.diversity_every == 0:
                    t_div = time.perf_counter()
                    self._diversity(writer)  # goes into the next metrics.jsonl record
                    t_window += time.perf_counter() - t_div  # not counted in ms_per_step
                validate = bool(cfg.keep_best_from and self.step_num >= cfg.keep_best_from
                                and (self.step_num % cfg.checkpoint_every == 0
                                     or self.step_num == cfg.iterations))
                if validate:
                    t_val = time.perf_counter()
                    self._validate(writer, bar)  # in this iteration's metrics record
                    t_window += time.perf_counter() - t_val
                if (self.step_num % cfg.log_every == 0 or self.step_num == cfg.iterations
                        or validate):
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
        best = ckpt.best_path(self.run_dir) if self._best is not None else None
        return TrainResult(self.run_dir, self.step_num, last_ckpt, last_losses, best,
                           None if self._best is None else dict(self._best))

    # --- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # the global MT19937's legacy state: (name, keys, pos, has_gauss, cached_gaussian)
        np_state = cast(tuple[Any, ...], np.random.get_state())
        return {
            "config": self.cfg.to_dict(),
            "step": self.step_num,
            "data": self.data_info,
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

    def _load_state(self, state: dict[str, Any], path: PathLike = "checkpoint") -> None:
        for k, net in (("G", self.G), ("D", self.D), ("E", self.E), ("SubE", self.SubE)):
            ckpt.load_weights(net, state["models"][k], k, path, self.cfg)
        for k, opt in self.opt.items():
            try:
                opt.load_state_dict(state["optimizers"][k])
            except (ValueError, KeyError, TypeError, RuntimeError) as exc:
                raise CheckpointError(f"checkpoint {path}: the {k} optimiser state does not fit "
                                      f"its model ({str(exc).splitlines()[0]})") from None
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
            ckpt.save_checkpoint(path, self.state_dict())  # verified to load before it counts
            self._verified.add(path)
            ckpt.prune_checkpoints(self.run_dir, self.cfg.keep_checkpoints, self._verified)
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
                      "ms_per_step": round(ms, 2), "time": round(time.time(), 3),
                      **self.diversity_log}
            self.diversity_log = {}
            ckpt.append_metrics(self.run_dir / ckpt.METRICS_FILE, record)
            if writer is not None:
                for k, v in means.items():
                    writer.add_scalar(f"loss/{k}", v, self.step_num)
                writer.add_scalar("perf/ms_per_step", ms, self.step_num)
            bar.set_postfix(D=f"{means['loss_d']:.3f}", G=f"{means['loss_g']:.3f}",
                            E=f"{means['loss_e']:.3f}", SubE=f"{means['loss_sube']:.3f}")
            logger.debug("step %d: loss_d %.4f, loss_g %.4f, loss_e %.4f, loss_sube %.4f, "
                         "%.1f ms/step", self.step_num, means["loss_d"], means["loss_g"],
                         means["loss_e"], means["loss_sube"], ms)

    @torch.no_grad()
    def _diversity(self, writer) -> None:
        """Watch for mode collapse (``cfg.diversity_every``): the mean MS-SSIM over all 28 pairs
        of 8 full volumes generated from fixed latents (``ms_ssim_fake``), next to the same for
        the first 8 training volumes (``ms_ssim_real``, computed once). Both go into the next
        ``metrics.jsonl`` record and TensorBoard (``diversity/``), with the samples' slices
        (``diversity/samples``). ``ms_ssim_fake`` far above ``ms_ssim_real`` (towards 1) means
        the generator makes one volume whatever z is."""
        if not self.is_main:
            return
        from . import viz
        from .generate import sample
        from .metrics import diversity

        cfg, n = self.cfg, DIVERSITY_SAMPLES
        all_pairs = n * (n - 1) // 2
        if self._real_diversity is None:
            items = [self.dataset[i] for i in range(min(n, len(cast(Sized, self.dataset))))]
            real = torch.stack([v[0] if isinstance(v, (list, tuple)) else v for v in items])
            self._real_diversity = diversity(real.float(), n_pairs=all_pairs)
        labels = [i % cfg.num_classes for i in range(n)] if cfg.num_classes else None
        was_training = self.G.training
        fake = sample(self.G, n, batch_size=2, labels=labels, seed=cfg.seed, device=self.device)
        self.G.train(was_training)
        value = diversity(fake, n_pairs=all_pairs)
        self.diversity_log = {"ms_ssim_fake": round(value, 4),
                              "ms_ssim_real": round(self._real_diversity, 4)}
        if writer is not None:
            writer.add_scalar("diversity/ms_ssim_fake", value, self.step_num)
            writer.add_scalar("diversity/ms_ssim_real", self._real_diversity, self.step_num)
            fig = viz.plot_volumes(list(fake[:4, 0]), [f"z{i}" for i in range(4)],
                                   title=f"iteration {self.step_num}: samples of fixed z "
                                         f"(MS-SSIM among 8: {value:.2f})")
            writer.add_figure("diversity/samples", fig, self.step_num)

    def _restore_best(self) -> dict[str, float] | None:
        """On resume without a ``best.pt`` (set aside as superseded, or removed by hand) while
        the log, kept up to the resumed step, holds validations: write ``best.pt`` again from
        the best-scoring one's checkpoint when it is still on disk, else say that it is lost
        and that the choice starts again. Returns the scores kept, or None."""
        scored = [r for r in ckpt.read_metrics(self.run_dir) if "val_score" in r]
        if not scored:
            return None
        best = min(scored, key=lambda r: r["val_score"])
        step = int(best["step"])
        scores = {k: float(v) for k, v in best.items()
                  if k.startswith("val_") and k != "val_best"}
        source = ckpt.checkpoint_path(self.run_dir, step)
        try:
            state = ckpt.load_checkpoint(source)
        except CheckpointError:
            logger.warning("the best validation so far (iteration %d, score %.2f) has no "
                           "checkpoint left and no best.pt: best.pt is chosen again among the "
                           "checkpoints from here on", step, best["val_score"])
            return None
        ckpt.save_checkpoint(ckpt.best_path(self.run_dir),
                             {k: state[k] for k in ("config", "step", "models", "data")
                              if k in state} | {"validation": scores})
        logger.warning("best.pt rewritten from %s, the best validation so far (score %.2f)",
                       source.name, best["val_score"])
        return {"step": step, **scores}

    @torch.no_grad()
    def _validate(self, writer, bar) -> None:
        """Model selection (``cfg.keep_best_from``): score G on the held-out volumes
        (:class:`hagan.metrics.Validation`) and, when it beats every earlier score of this run,
        save the networks as ``checkpoints/best.pt`` with the scores. The scores go into this
        iteration's ``metrics.jsonl`` record (``val_*``, ``val_best`` 1 when kept) and
        TensorBoard (``validation/``). Training is not changed: the global RNG is restored."""
        if not self.is_main:
            return
        from .metrics import Validation

        if self._validation is None:
            assert self.split is not None  # checked in __init__
            full = PreparedDataset(self.cfg.data, size=self.cfg.size,
                                   num_classes=self.cfg.num_classes)  # not augmented
            train = full.select(self.split.train)
            self._validation = Validation(train, full.select(self.split.heldout), self.cfg.size,
                                          self.device, labels=train.labels or None)
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            scores = self._validation(self.G)
        better = self._best is None or scores["val_score"] < self._best["val_score"]
        if better:
            ckpt.save_models(ckpt.best_path(self.run_dir), self.cfg, dict(self.nets),
                             self.step_num, data=self.data_info, validation=scores)
            self._best = {"step": self.step_num, **scores}
        self.diversity_log.update(scores, val_best=int(better))
        assert self._best is not None
        bar.write(f"validation at iteration {self.step_num}: score {scores['val_score']:.2f} "
                  f"(MS-SSIM {scores['val_ms_ssim']:.2f} vs held-out "
                  f"{scores['val_ms_ssim_real']:.2f}, FID ratio {scores['val_fid_ratio']:.2f})"
                  + ("; best so far, saved as best.pt" if better else
                     f"; best.pt stays iteration {self._best['step']} "
                     f"({self._best['val_score']:.2f})"))
        if writer is not None:
            for k, v in scores.items():
                writer.add_scalar(f"validation/{k[4:]}", v, self.step_num)

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
        """Orthogonal slices in TensorBoard, as the published trainer's previews: the last
        iteration's real slab, generated slab (G step) and Sub-E reconstruction of the real slab
        (``preview/slabs``), beside the real low-res image and G^L's low-res image of a fixed z
        (``preview/low_res``). No full-resolution volume is generated."""
        from . import viz

        G = self.G
        was_training = G.training
        G.eval()
        z = torch.randn(1, self.cfg.latent_dim, generator=torch.Generator().manual_seed(0))
        yy = y[:1] if y is not None else None
        _, low = G(z.to(self.device), self.cfg.max_slab_start // 2, yy)
        G.train(was_training)
        fig = viz.plot_volumes(
            [slab.low_res(x)[0, 0].float().cpu(), low[0, 0].float().cpu()],
            ["real (1/4 res)", "generated G^L (1/4 res, fixed z)"],
            title=f"iteration {self.step_num}")
        writer.add_figure("preview/low_res", fig, self.step_num)
        if self.last_images:
            im = self.last_images
            fig = viz.plot_volumes(
                [im["real_slab"], im["fake_slab"], im["rec_slab"]],
                ["real slab", "generated slab (G^H)", "Sub-E reconstruction"],
                title=f"iteration {self.step_num}, slab start c = {int(im['c'])}")
            writer.add_figure("preview/slabs", fig, self.step_num)
            self.last_images = {}

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


def _merge_resumed_config(saved: Config, requested: Config,
                          explicit: Collection[str] = ()) -> Config:
    """Keep the saved architecture and seed; take the requested run settings (iterations,
    logging...). ``explicit``: the keys the user set (``--set``); changing one the run keeps
    (:data:`RESUME_FIXED_KEYS`) is refused rather than silently ignored.

    Raises:
        RunError: the requested preset or an explicit key asks for another model or seed.
    """
    fixed = ", ".join(RESUME_FIXED_KEYS)
    clash = [k for k in ARCHITECTURE_KEYS if getattr(saved, k) != getattr(requested, k)]
    if not (clash and requested.preset != "custom"):
        clash = [k for k in RESUME_FIXED_KEYS
                 if k in explicit and getattr(saved, k) != getattr(requested, k)]
    if clash:
        details = ", ".join(f"{k}: checkpoint {getattr(saved, k)} vs requested "
                            f"{getattr(requested, k)}" for k in clash)
        what = ("model" if set(clash) <= set(ARCHITECTURE_KEYS)
                else "seed" if clash == ["seed"] else "setting")
        raise RunError(explain("run folder", "the run's own model, seed and checkpoint "
                               f"selection when resuming ({fixed} cannot change)",
                               f"a different {what} ({details})",
                               "Drop those --set values to resume, pass --fresh to start a new "
                               "run in this folder (the old files are moved aside), or use a "
                               "new --out folder."))
    keep = {k: getattr(saved, k) for k in RESUME_FIXED_KEYS}
    return requested.replace(**keep)


def _saved_config(state: dict[str, Any], path: Path) -> Config:
    try:
        return from_dict(state["config"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} is damaged: its config is not valid "
                              f"({exc})") from None


def _absolute_data(cfg: Config, state: dict[str, Any] | None) -> Config:
    """``cfg`` with ``data`` as an absolute path: the run never depends on the current folder.
    Without ``data`` a resumed run uses the folder its checkpoint recorded (and says so).

    Raises:
        RunError: the recorded folder no longer exists (moved or deleted: pass --data), or an
            old checkpoint recorded it as a relative path.
    """
    if cfg.data:
        return cfg.replace(data=str(Path(cfg.data).resolve()))
    if state is None:
        return cfg
    stored = (state.get("data") or {}).get("path") or state["config"].get("data") or ""
    if not stored or not Path(stored).is_absolute():
        raise RunError(explain("--data", "the run's dataset folder", "none given, and the "
                               f"checkpoint records {stored or 'no folder'!r} (not an absolute "
                               "path)", "Pass --data DIR."))
    if not Path(stored).is_dir():
        raise RunError(explain("--data", "the run's dataset folder", f"none given, and the "
                               f"folder the run recorded, {stored}, does not exist (moved or "
                               "deleted?)", "Pass --data with its new location."))
    logger.info("using the run's dataset %s (recorded in its checkpoint; --data overrides it)",
                stored)
    return cfg.replace(data=stored)


def train(cfg: Config, run_dir: PathLike, dataset: Dataset | None = None,
          resume: bool = True, fresh: bool = False,
          explicit: Collection[str] = ()) -> TrainResult:
    """Train (or resume) a run; see :class:`Trainer`.

    ``explicit``: the config keys the caller chose on purpose; resuming a run whose value of one
    of them differs (e.g. ``seed``) is refused instead of keeping the run's value.

    Example:
        >>> from hagan import preset
        >>> from hagan.train import train
        >>> cfg = preset("tiny32", iterations=20, data="work/demo")
        >>> result = train(cfg, "work/run")  # doctest: +SKIP
    """
    return Trainer(cfg, run_dir, dataset=dataset, resume=resume, fresh=fresh,
                   explicit=explicit).train()


# --- CLI: hagan train --preset P --data DIR --out RUN [--set key=value ...] --------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    from .config import PRESETS, describe_fields

    p.epilog = ("config fields (--set KEY=VALUE; the preset sets some of them, see "
                "hagan.config.PRESETS):\n" + describe_fields())
    p.add_argument("--preset", default="tiny32",
                   help=f"one of {', '.join(PRESETS)} (default tiny32)")
    p.add_argument("--data", help="prepared dataset folder (hagan demo-data / hagan preprocess)")
    p.add_argument("--out", required=True, help="run folder; resumes when it holds a checkpoint")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                   metavar="KEY=VALUE",
                   help="override config fields, e.g. --set iterations=500 precision=bf16 "
                   "(several pairs per --set; --set may be repeated)")
    p.add_argument("--fresh", action="store_true",
                   help="start a new run even if --out holds one: its files are moved to "
                   "--out/previous-DATE-TIME/, never deleted")


def main(args: argparse.Namespace) -> int:
    cfg = preset(args.preset)
    if args.data:
        cfg = cfg.replace(data=str(args.data))
    cfg = parse_overrides(args.overrides, cfg)
    explicit = {pair.split("=", 1)[0].strip() for pair in args.overrides}
    if args.data and "data" in explicit and \
            Path(cfg.data).resolve() != Path(args.data).resolve():
        raise ConfigError(explain("--set data", f"the folder given with --data ({args.data})",
                                  f"data={cfg.data}", "Give the dataset once, with --data."))
    has_ckpt = bool(ckpt.list_checkpoints(args.out)) and not args.fresh
    if not cfg.data and not has_ckpt:
        raise ConfigError(explain("--data", "a prepared dataset folder", "none",
                                  "Make one with `hagan demo-data --out DIR` or "
                                  "`hagan preprocess`."))
    try:
        trainer = Trainer(cfg, args.out, fresh=args.fresh, explicit=explicit)
        start = trainer.step_num
        if start >= trainer.cfg.iterations:
            print(f"already at step {start} (iterations={trainer.cfg.iterations}), nothing to "
                  "do; raise it with --set iterations=N to train on")
            if trainer.world > 1:
                shutdown_distributed()
            return 0
        result = trainer.train()
    except TrainingInterrupted as exc:
        print(f"hagan train: {exc}")
        return 128 + int(exc.signum)
    except NonFiniteLossError as exc:
        print(f"hagan train: error: {exc}", file=sys.stderr)
        return 3
    print(f"trained to iteration {result.step}; checkpoint: {result.checkpoint}")
    if result.best is not None and result.best_scores is not None:  # keep_best_from
        kept = result.best_scores  # the run folder now means this file
        print(f"the run's model: {result.best} (iteration {int(kept['step'])}, validation "
              f"score {kept['val_score']:.2f}; `hagan generate {args.out}` and "
              "`hagan evaluate` use it)")
    print(f"losses at step {result.step} (that step alone; metrics.jsonl holds the means over "
          "each log window): " + ", ".join(f"{k} {v:.4f}" for k, v in result.losses.items()))
    return 0
