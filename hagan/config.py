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
import difflib
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, explain

# --- shared type aliases and named constants --------------------------------------------------
PathLike = str | os.PathLike
Shape3D = tuple[int, int, int]

MIN_SIZE = 32  # smallest cube: the trunk needs at least one upsampling from 4^3 to S/4
MAX_SIZE = 256  # largest cube the published layer plan covers (trunk has four upsampling slots)
ALLOWED_SIZES = tuple(2**k for k in range(5, 9))  # 32, 64, 128, 256
TRUNK_START = 4  # the trunk's fc layer reshapes z into a 4^3 grid (official code, fc1)
FEATURE_STRIDE = 4  # trunk features live at 1/4 of the image resolution
SLAB_FRACTION = 8  # a training slab is 1/8 of the volume depth
# Tolerances of the validation score (Config.keep_best_from, hagan.metrics.Validation): how far
# generated volumes may be from real ones and still count as "as varied" and "close".
DIVERSITY_TOLERANCE = 0.10  # |MS-SSIM of generated pairs - MS-SSIM of real pairs|
FID_RATIO_TOLERANCE = 5.0  # FID(generated, held-out) / FID(train, held-out)
PRECISIONS = ("fp32", "bf16", "fp16")  # the one list: Config, runtime and every --precision
DEVICES = ("auto", "cpu", "cuda")  # plus "cuda:N" for the N-th GPU
_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


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
        g_iter: Generator updates per iteration, each with a fresh z and the same slab start
            (published ``--g-iter``, default 1).
        batched_d_step: Send real and fake through D in one forward pass in the D step. A
            deviation, off by default: D is spectrally normalised and each training-mode forward
            runs one power iteration, so the published step (two passes, real then fake) updates
            sigma twice and uses a different sigma for each; batched, both share one. Measured
            about 2 % faster per paper128 CPU iteration (benchmarks/RESULTS.md, "Fidelity"), and
            losses 0.1 away from the published step after one iteration.
        low_res_critic: Judge the low-resolution whole image with D^L (the paper). False is the
            ablation of notebook 03's exercise: D = D^H / 2 judges slabs only, G^L gets no
            gradient from D and nothing ties the slabs of a volume together.
        data: Folder of a prepared dataset (``volumes/*.npy``, ``manifest.csv``, ``dataset.json``).
        holdout_fraction: Fraction of the prepared dataset's volumes kept out of training and
            recorded in the run folder (``split.json``), so that ``hagan evaluate`` compares with
            volumes the model never saw. 0.2 as published (fold 0 of a seeded 5-fold split):
            ceil(0.2 N) volumes, at least one training volume kept. The default follows the
            published code, so that its numbers and the kit's rest on the same protocol, at the
            price of a fifth of the training data; 0 trains on every volume (evaluation then
            needs a separate ``--heldout`` dataset, or reports a labelled train subset).
        augment: On-the-fly TorchIO augmentation for small datasets (flip, small affine, intensity).
            Real volumes only: D learns the augmented distribution, and so does G.
        d_augment: Differentiable augmentation of every input D sees, real and generated, in the
            D and the G step (:mod:`hagan.augment`, DiffAugment). Against the collapse of a GAN
            trained on few volumes. Not in the paper: off by default.
        d_minibatch_std: Give D^H and D^L one more input channel before their last convolution:
            the standard deviation of their features across the batch
            (:func:`hagan.models.minibatch_std`; Karras et al., ICLR 2018). D then sees whether a
            batch is as varied as real data, which counters mode collapse on small cohorts. Not
            in the paper: off by default; an architecture key (a checkpoint is built with it or
            without it).
        r1_gamma: Weight of the R1 penalty in the D step, (gamma / 2) E ||grad_x D(x)||^2 over
            real inputs (both views: slab and low-res image; Mescheder et al., "Which training
            methods for GANs do actually converge?", ICML 2018). It keeps D flat around the
            real data, which damps the oscillation of a small GAN. Costs a second backward
            through D. Not in the paper: 0 by default. One process only (not with torchrun).
            The logged ``loss_d`` leaves the penalty out.
        workers: DataLoader worker processes.
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast (fp16 uses a GradScaler).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N`` (the N-th GPU).
        channels_last: Use the channels-last 3D memory format (helps on GPU).
        compile: Wrap the networks in ``torch.compile``.
        seed: Seed of weights, latent draws, slab positions and data order.
        log_every: Iterations between JSON-lines/TensorBoard scalar logs.
        image_every: Iterations between orthogonal-slice previews in TensorBoard (0 = never).
        diversity_every: Iterations between diversity checks (0 = never): MS-SSIM among 8
            volumes generated from fixed latents (``ms_ssim_fake`` in ``metrics.jsonl`` and
            TensorBoard ``diversity/``), plus their grid image in TensorBoard. Close to 1 means
            the samples are all alike: mode collapse.
        checkpoint_every: Iterations between checkpoints (a final one is always written).
        keep_best_from: From this iteration on, score every checkpoint's generator on the run's
            held-out volumes (:class:`hagan.metrics.Validation`: diversity and FID against
            volumes never trained on, with seeds other than ``hagan evaluate``'s) and keep the
            best-scoring one as ``checkpoints/best.pt``, which then stands for the run folder
            (``hagan generate RUN``, ``load_models(RUN)``); ``val_*`` in ``metrics.jsonl``.
            0 = off: the run's model is its newest checkpoint. Model selection on a validation
            set; not in the paper (which trains 80 000 iterations and keeps the last).
            Needs at least 2 held-out and 2 training volumes (``holdout_fraction > 0``). Fixed
            once a run has started, like ``seed`` (a new value needs ``--fresh``).
        keep_checkpoints: How many of the newest checkpoints to keep.
        tensorboard: Write TensorBoard event files.
        progress: Show a tqdm progress bar.
        preset: Name of the preset this config was built from (``custom`` otherwise).
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
    g_iter: int = 1
    batched_d_step: bool = False
    low_res_critic: bool = True
    # data
    data: str = ""
    holdout_fraction: float = 0.2
    augment: bool = False
    d_augment: bool = False
    d_minibatch_std: bool = False
    r1_gamma: float = 0.0
    workers: int = 0
    # runtime
    precision: str = "fp32"
    device: str = "auto"
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    log_every: int = 20
    image_every: int = 200
    diversity_every: int = 0
    checkpoint_every: int = 500
    keep_best_from: int = 0
    keep_checkpoints: int = 3
    tensorboard: bool = True
    progress: bool = True
    preset: str = field(default="custom")

    def __post_init__(self) -> None:
        _normalise_types(self)
        if self.size not in ALLOWED_SIZES:
            raise ConfigError(explain(
                "size", f"one of {', '.join(map(str, ALLOWED_SIZES))} (a power of two from "
                f"{MIN_SIZE} to {MAX_SIZE})", str(self.size),
                "Resize your data with `hagan preprocess --size S` to one of these sizes."))
        _check_positive("width", self.width)
        for name in ("latent_dim", "iterations", "batch_size", "g_iter", "log_every",
                     "checkpoint_every", "keep_checkpoints"):
            _check_positive(name, getattr(self, name))
        for name in ("lr_g", "lr_d", "lr_e"):
            _check_positive(name, getattr(self, name))
        if not self.r1_gamma >= 0:
            raise ConfigError(explain("r1_gamma", "a value >= 0", str(self.r1_gamma),
                                      _fix("r1_gamma")))
        if self.r1_gamma and self.batched_d_step:
            raise ConfigError(explain("r1_gamma", "the published D step (real volumes in their "
                                      "own D pass)", "batched_d_step=True",
                                      "Drop batched_d_step, or set r1_gamma=0."))
        for name in ("num_classes", "workers", "image_every", "diversity_every", "seed",
                     "keep_best_from"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(explain(name, "a value >= 0", str(getattr(self, name)),
                                          _fix(name)))
        if self.keep_best_from and not self.holdout_fraction:
            raise ConfigError(explain("keep_best_from", "held-out volumes to score checkpoints "
                                      "on (holdout_fraction > 0)", "holdout_fraction=0",
                                      "Set holdout_fraction=0.2, or keep_best_from=0."))
        if self.num_classes == 1:
            raise ConfigError(explain("num_classes", "0 (unconditional) or at least 2", "1",
                                      "A conditional model needs two or more classes."))
        for name in ("beta1", "beta2", "holdout_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(explain(name, "a value in [0, 1)", str(value), _fix(name)))
        check_precision(self.precision)
        check_device(self.device)

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


def _normalise_types(cfg: Config) -> None:
    """Make every field a plain Python value of its declared type, or refuse it: a NumPy scalar
    becomes its Python number, a path its string, an integral float an int (e.g. ``1e4``
    iterations), an int a float. A checkpoint stores the config and is loaded with
    ``weights_only=True``, which refuses anything but plain values.

    Raises:
        ConfigError: a value that is not of the field's type (e.g. a list, None, a bool for a
            number, 2.5 for an integer field).
    """
    import numbers

    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if hasattr(value, "item") and getattr(value, "shape", None) == ():  # NumPy, 0-d tensor
            value = value.item()
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        ok = True
        if kind == "str":
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
            ok = isinstance(value, str)
        elif kind == "bool":
            ok = isinstance(value, bool)
        elif kind == "int":
            if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
                ok = math.isfinite(value) and float(value).is_integer()
                # typeshed's numbers.Real lacks __int__; float, Fraction and NumPy floats have it
                value = int(value) if ok else value  # type: ignore[call-overload]
            ok = ok and isinstance(value, numbers.Integral) and not isinstance(value, bool)
            value = int(value) if ok else value
        elif kind == "float":
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
            value = float(value) if ok else value
        if not ok:
            raise ConfigError(explain(f.name, f"a plain {kind} value",
                                      f"{value!r} (of type {type(value).__name__})",
                                      f"Pass {f.name} as a Python {kind}."))
        object.__setattr__(cfg, f.name, value)


def _fix(name: str) -> str:
    """The fix part of a config error: the field's default as an example value."""
    default = next(f.default for f in dataclasses.fields(Config) if f.name == name)
    return f"Use e.g. --set {name}={default} (the default)."


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(explain(name, "a value > 0", str(value), _fix(name)))


def check_precision(precision: str) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`, else raise ConfigError."""
    if precision not in PRECISIONS:
        raise ConfigError(explain("precision", f"one of {', '.join(PRECISIONS)}",
                                  repr(precision), "fp32 is the default; fp16 needs CUDA."))
    return precision


def check_device(device: str) -> str:
    """Return ``device`` if it names a device the kit can use (``auto``, ``cpu``, ``cuda``,
    ``cuda:N``), else raise ConfigError. Whether the GPU exists is checked when it is used
    (:func:`hagan.runtime.resolve_device`)."""
    if not isinstance(device, str) or not _DEVICE_PATTERN.fullmatch(device):
        raise ConfigError(explain("device", "auto, cpu, cuda or cuda:N", repr(device),
                                  "Use auto to take the GPU when there is one."))
    return device


def field_help() -> dict[str, str]:
    """Help text of every Config field, from the ``Args:`` section of :class:`Config`'s
    docstring (one source for the docs and ``hagan train --help``).

    Returns:
        field name -> one-line help, for every field (fields documented together, such as
        ``lr_g, lr_d, lr_e``, share one text).
    """
    doc = (Config.__doc__ or "").split("Args:", 1)[-1]
    entries: dict[str, str] = {}
    names: list[str] = []
    for line in doc.splitlines():
        match = re.match(r"\s{8}(\w+(?:, \w+)*): (.*)", line)
        if match:
            names = match.group(1).split(", ")
            for name in names:
                entries[name] = match.group(2).strip()
        elif line.strip() and names:
            for name in names:
                entries[name] += " " + line.strip()
    return {f.name: entries.get(f.name, "") for f in dataclasses.fields(Config)}


def describe_fields(width: int = 100) -> str:
    """Every Config field as ``name (type, default D): help`` lines, for ``--help`` texts."""
    import textwrap

    helps = field_help()
    lines = []
    for f in dataclasses.fields(Config):
        default = f.default if f.default is not dataclasses.MISSING else None
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        text = f"{f.name} ({kind}, default {default!r}): {helps[f.name]}"
        lines.append(textwrap.fill(text, width=width, initial_indent="  ",
                                   subsequent_indent="      "))
    return "\n".join(lines)


PRESETS: dict[str, dict[str, Any]] = {
    # The published 256^3 network (Model_HA_GAN_256): G 52.52 M, D 7.40 M parameters.
    "paper256": dict(size=256, width=1.0, latent_dim=1024, batch_size=4),
    # The published 128^3 network (Model_HA_GAN_128): G 52.52 M, D 7.24 M parameters.
    "paper128": dict(size=128, width=1.0, latent_dim=1024, batch_size=4),
    # A CPU-friendly 64^3 model: about 20x fewer FLOPs than paper128.
    "small64": dict(size=64, width=0.25, latent_dim=256, batch_size=4, iterations=2000,
                    log_every=10, image_every=100, checkpoint_every=200),
    # For CI and debugging: a full iteration in well under a second on 2 CPU cores. It learns
    # little: on the demo cohort its samples collapse to one blob (docs/teaching.md).
    "tiny32": dict(size=32, width=0.125, latent_dim=64, batch_size=4, iterations=300,
                   lr_g=4e-4, log_every=10, image_every=50, checkpoint_every=100),
    # The CPU demo recipe for the 64-volume demo cohort (make demo, the notebooks' cpu
    # scale; issue 17): twice tiny32's width, the minibatch standard deviation in D, an R1
    # penalty of 1.0, G and D both at 2e-4, 2500 iterations, and the checkpoint kept by
    # validation on the held-out volumes among those every 250 iterations from 1000 on
    # (measured at 6 seeds: docs/teaching.md, "The demo recipe").
    "demo32": dict(size=32, width=0.25, latent_dim=64, batch_size=4, iterations=2500,
                   lr_g=2e-4, lr_d=2e-4, d_minibatch_std=True, r1_gamma=1.0, log_every=50,
                   image_every=250, diversity_every=250, checkpoint_every=250,
                   keep_best_from=1000),
}


def preset(name: str, **overrides: Any) -> Config:
    """Build the named preset, with ``overrides`` applied.

    Example:
        >>> cfg = preset("tiny32", iterations=10)
        >>> cfg.size, cfg.slab_depth, cfg.feature_size
        (32, 4, 8)
    """
    if name not in PRESETS:
        raise ConfigError(explain("preset", f"one of {', '.join(PRESETS)}", repr(name),
                                  _did_you_mean(name, PRESETS)))
    return from_dict({**PRESETS[name], "preset": name, **overrides})


def from_dict(values: dict[str, Any]) -> Config:
    """Build a Config from a dict, rejecting unknown keys with the list of valid ones."""
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise _unknown_key(unknown[0], known)
    return Config(**values)


def _did_you_mean(name: str, valid: Any) -> str:
    """The closest valid name: the longest shared start (4+ characters, "iters" ->
    "iterations"), else difflib's closest match; "" when nothing is close."""
    shared = {v: len(os.path.commonprefix([name, v])) for v in valid}
    best = max(shared, key=shared.__getitem__, default="")
    close = [best] if best and shared[best] >= 4 else difflib.get_close_matches(name, valid, n=1)
    return f"Did you mean {close[0]!r}?" if close else ""


def _unknown_key(key: str, known: Any) -> ConfigError:
    return ConfigError(explain(
        "config key", "a Config field (see `hagan train --help`)", repr(key),
        f"{_did_you_mean(key, known)} Valid keys: {', '.join(sorted(known))}.".lstrip()))


def parse_overrides(pairs: list[str], base: Config) -> Config:
    """Apply ``key=value`` strings (CLI ``--set``) to ``base``.

    Values are parsed as Python literals when possible (``1e-4``, ``True``, ``3``) and must have
    the type of the default (ints are accepted for floats).
    """
    defaults = base.to_dict()
    changes: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(explain("--set", "key=value", repr(pair),
                                      "Write e.g. --set iterations=500."))
        key, raw = pair.split("=", 1)
        key = key.strip()
        if key not in defaults:
            raise _unknown_key(key, defaults)
        if key == "preset":  # a label of the model built from the preset, not a setting
            raise ConfigError(explain("--set preset", "a config field other than preset",
                                      repr(pair), "Choose the preset with --preset NAME."))
        changes[key] = coerce(key, raw, defaults[key])
    return base.replace(**changes)


def coerce(key: str, raw: Any, default: Any) -> Any:
    """Convert ``raw`` (a string or a value) to the type of ``default``, or raise ConfigError."""
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
            raise ConfigError(explain(key, "true or false", repr(raw)))
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, str):
        return str(value)
    if type(value) is not type(default):
        raise ConfigError(explain(key, f"a value of type {type(default).__name__}", repr(raw),
                                  f"Use e.g. {key}={default!r}."))
    return value


def save_json(cfg: Config, path: PathLike) -> None:
    """Write ``cfg`` as indented UTF-8 JSON, atomically (:func:`hagan.fileio.write_json`)."""
    from .fileio import write_json

    write_json(path, cfg.to_dict())
