"""One configuration dataclass for everything: model, data, optimisation and runtime.

The same :class:`Config` flows from ``hagan train --set key=value``, from a notebook's
papermill parameters and from Python code into the trainer. Named presets give the published
networks (``paper256``, ``paper128``) and small CPU models (``small64``, ``tiny32``).

Defaults follow the HA-GAN paper (Sun et al., IEEE JBHI 2022) and its published code; every
departure is an option, never a silent change.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --- shared type aliases and named constants (see STYLE.md, "TorchIO" section) ----------------
PathLike = str | os.PathLike
Shape3D = tuple[int, int, int]

MIN_SIZE = 32  # smallest cube: the trunk needs at least one upsampling from 4^3 to S/4
MAX_SIZE = 256  # largest cube the published layer plan covers (trunk has four upsampling slots)
ALLOWED_SIZES = tuple(2**k for k in range(5, 9))  # 32, 64, 128, 256
TRUNK_START = 4  # the trunk's fc layer reshapes z into a 4^3 grid (official code, fc1)
FEATURE_STRIDE = 4  # trunk features live at 1/4 of the image resolution
SLAB_FRACTION = 8  # a training slab is 1/8 of the volume depth
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class Config:
    """Every knob of hagan-kit, with the paper's defaults.

    Args:
        size: Edge length ``S`` of the cubic volumes (32, 64, 128 or 256).
        width: Channel multiplier; 1.0 gives the published networks. Channel counts are rounded to
            multiples of 8 because every normalisation layer uses 8 groups.
        latent_dim: Length of the latent vector ``z`` (paper: 1024).
        num_classes: Number of classes for the conditional model; 0 means unconditional.
        iterations: Number of training iterations (paper: 80 000).
        batch_size: Volumes per iteration per process (paper: 4 over two GPUs).
        lr_g, lr_d, lr_e: Adam learning rates of G, D and both encoders (paper: 1e-4, 4e-4, 1e-4).
        beta1, beta2: Adam betas (paper: 0.0, 0.999).
        lambda_class: Weight of the auxiliary class loss in the G step (paper: 0.1; D uses 1.0).
        align_slabs: Draw slab starts that are multiples of 4 so that the real slab and the
            generated slab cover the same voxels. The published code does not (it crops the real
            volume at ``c`` but the features at ``c // 4``, up to 3 voxels apart): False keeps that.
        data: Folder of a prepared dataset (``volumes/*.npy``, ``manifest.csv``, ``dataset.json``).
        augment: On-the-fly TorchIO augmentation for small datasets (flip, small affine, intensity).
        workers: DataLoader worker processes.
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast (fp16 uses a GradScaler).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        channels_last: Use the channels-last 3D memory format (helps on GPU).
        compile: Wrap the networks in ``torch.compile``.
        seed: Seed of weights, latent draws, slab positions and data order.
        log_every: Iterations between JSON-lines/TensorBoard scalar logs.
        image_every: Iterations between orthogonal-slice previews in TensorBoard (0 = never).
        checkpoint_every: Iterations between checkpoints (a final one is always written).
        keep_checkpoints: How many of the newest checkpoints to keep.
        tensorboard: Write TensorBoard event files.
        progress: Show a tqdm progress bar.
    """

    # model
    size: int = 256
    width: float = 1.0
    latent_dim: int = 1024
    num_classes: int = 0
    # optimisation
    iterations: int = 80_000
    batch_size: int = 4
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    lr_e: float = 1e-4
    beta1: float = 0.0
    beta2: float = 0.999
    lambda_class: float = 0.1
    align_slabs: bool = False
    # data
    data: str = ""
    augment: bool = False
    workers: int = 0
    # runtime
    precision: str = "fp32"
    device: str = "auto"
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    log_every: int = 20
    image_every: int = 200
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    tensorboard: bool = True
    progress: bool = True
    preset: str = field(default="custom")

    def __post_init__(self) -> None:
        if self.size not in ALLOWED_SIZES:
            raise ValueError(
                f"size must be one of {', '.join(map(str, ALLOWED_SIZES))} (a power of two from "
                f"{MIN_SIZE} to {MAX_SIZE}), not {self.size}. Resize your data with "
                "`hagan preprocess --size S` to one of these sizes."
            )
        _check_positive("width", self.width)
        for name in ("latent_dim", "iterations", "batch_size", "log_every", "checkpoint_every",
                     "keep_checkpoints"):
            _check_positive(name, getattr(self, name))
        for name in ("lr_g", "lr_d", "lr_e"):
            _check_positive(name, getattr(self, name))
        for name in ("num_classes", "workers", "image_every", "seed"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)}")
        if self.num_classes == 1:
            raise ValueError("num_classes must be 0 (unconditional) or at least 2, not 1")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), not {value}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, not {self.device!r}")

    # --- derived sizes: the one rule that gives every network of the family ---------------------
    @property
    def feature_size(self) -> int:
        """Edge of the trunk's feature volume, S/4."""
        return self.size // FEATURE_STRIDE

    @property
    def slab_depth(self) -> int:
        """Depth of a training slab in image voxels, S/8."""
        return self.size // SLAB_FRACTION

    @property
    def feature_slab_depth(self) -> int:
        """Depth of a training slab in feature voxels, S/32."""
        return self.slab_depth // FEATURE_STRIDE

    @property
    def max_slab_start(self) -> int:
        """Largest slab start ``c``: 7S/8, so ``c`` is drawn from [0, 7S/8]."""
        return self.size - self.slab_depth

    @property
    def num_upsamplings(self) -> int:
        """Upsamplings in the trunk from 4^3 to (S/4)^3: log2(S/16)."""
        return int(math.log2(self.feature_size // TRUNK_START))

    def channels(self, c: int) -> int:
        """Scale a published channel count by ``width``, keeping a multiple of 8 (at least 8)."""
        return max(8, int(round(c * self.width / 8)) * 8)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (validated; unknown keys raise)."""
        return from_dict({**self.to_dict(), **changes})


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, not {value}")


PRESETS: dict[str, dict[str, Any]] = {
    # The published 256^3 network (Model_HA_GAN_256): G 52.52 M, D 7.40 M parameters.
    "paper256": dict(size=256, width=1.0, latent_dim=1024, batch_size=4),
    # The published 128^3 network (Model_HA_GAN_128): G 52.52 M, D 7.24 M parameters.
    "paper128": dict(size=128, width=1.0, latent_dim=1024, batch_size=4),
    # A CPU-friendly 64^3 model: about 20x fewer FLOPs than paper128.
    "small64": dict(size=64, width=0.25, latent_dim=256, batch_size=4, iterations=2000,
                    log_every=10, image_every=100, checkpoint_every=200),
    # For CI, Binder and debugging: a full iteration in well under a second on 2 CPU cores.
    # G learns at D's rate here: measured on the demo cohort, 600 iterations give head-shaped
    # volumes with lr_g = 4e-4 and a dark box with the paper's 1e-4 (too slow for so few steps).
    "tiny32": dict(size=32, width=0.125, latent_dim=64, batch_size=4, iterations=300,
                   lr_g=4e-4, log_every=10, image_every=50, checkpoint_every=100),
}


def preset(name: str, **overrides: Any) -> Config:
    """Build the named preset, with ``overrides`` applied.

    Example:
        >>> cfg = preset("tiny32", iterations=10)
        >>> cfg.size, cfg.slab_depth, cfg.feature_size
        (32, 4, 8)
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return from_dict({**PRESETS[name], "preset": name, **overrides})


def from_dict(values: dict[str, Any]) -> Config:
    """Build a Config from a dict, rejecting unknown keys with the list of valid ones."""
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"unknown config key(s): {', '.join(unknown)}. Valid keys: {', '.join(sorted(known))}"
        )
    return Config(**values)


def parse_overrides(pairs: list[str], base: Config) -> Config:
    """Apply ``key=value`` strings (CLI ``--set``) to ``base``.

    Values are parsed as Python literals when possible (``1e-4``, ``True``, ``3``) and must have
    the type of the default (ints are accepted for floats).
    """
    defaults = base.to_dict()
    changes: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if key not in defaults:
            raise ValueError(
                f"unknown config key {key!r}. Valid keys: {', '.join(sorted(defaults))}"
            )
        changes[key] = coerce(key, raw, defaults[key])
    return base.replace(**changes)


def coerce(key: str, raw: Any, default: Any) -> Any:
    """Convert ``raw`` (a string or a value) to the type of ``default``, or raise ValueError."""
    value = raw
    if isinstance(raw, str) and not isinstance(default, str):
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            value = value.lower() in ("true", "yes", "1")
        if not isinstance(value, bool):
            raise ValueError(f"{key} expects true or false, got {raw!r}")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, str):
        return str(value)
    if type(value) is not type(default):
        raise ValueError(
            f"{key} expects a value of type {type(default).__name__}, got {raw!r}"
        )
    return value


def save_json(cfg: Config, path: PathLike) -> None:
    import json

    Path(path).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
