"""Import the checkpoints published with the original HA-GAN code (batmanlab/HA-GAN).

The published ``train.py`` writes one file per network and iteration, ``G_iter<N>.pth``,
``D_iter<N>.pth``, ``E_iter<N>.pth`` and ``Sub_E_iter<N>.pth``. Each holds
``{"model": state_dict, "optimizer": state_dict}``, and because the networks were wrapped in
``nn.DataParallel`` every weight name starts with ``module.``. This module renames those weights
to the kit's layer names (the key map below is the only place where the published names appear),
checks that every name and shape matches the requested network, and returns kit models.

Only the published sizes exist: 128^3 and 256^3 at width 1. Files are read with
``torch.load(weights_only=True)`` and nothing else: a file that holds other Python objects is
refused, never unpickled, because unpickling can run arbitrary code.

Example (command line)::

    hagan import-official --size 256 --generator G_iter80000.pth --encoder E_iter80000.pth \\
        --sub-encoder Sub_E_iter80000.pth --out copd256.safetensors

The result is one safetensors file (weights + config, see :mod:`hagan.weights`) whose SHA-256
is printed, so that it can be shared and checked.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn

from .checkpoint import CheckpointError
from .config import Config, PathLike, preset
from .errors import ConfigError, RunError, explain
from .fileio import load_weights_only
from .models import Discriminator, Encoder, Generator, SubEncoder, count_parameters

logger = logging.getLogger(__name__)

OFFICIAL_SIZES = (128, 256)  # the published code has Model_HA_GAN_128.py and Model_HA_GAN_256.py
LARGEST_SIZE = 256  # its layers are numbered from 1 at 256^3; each halving of S drops the first
DATA_PARALLEL_PREFIX = "module."  # nn.DataParallel prefixes every key (published train.py)
KINDS = ("G", "D", "E", "SubE")  # the kit's names, as in hagan.models.build_models
KIND_NAMES = {"G": "generator", "D": "discriminator", "E": "encoder (E^H)",
              "SubE": "sub-encoder (E^G)"}
KIND_CLASSES: dict[str, Callable[[Config], nn.Module]] = {
    "G": Generator, "D": Discriminator, "E": Encoder, "SubE": SubEncoder}
STATE_KEYS = ("model", "state_dict")  # where a published file keeps the weights
MAX_LISTED = 3  # names listed in an error message before "and N more"

Shape = tuple[int, ...]


# ---------------------------------------------------------------------------------------------
# The key map: published module names <-> kit module names
# ---------------------------------------------------------------------------------------------
def _first_layer(size: int) -> int:
    """Number of the first stride-2 layer of D^H, D^L and Sub_E: 1 at 256^3, 2 at 128^3."""
    return 1 + int(math.log2(LARGEST_SIZE // size))


def _pairs(prefix_official: str, prefix_kit: str, numbers: range, norm: str | None = None,
           conv: str = "conv") -> list[tuple[str, str]]:
    """``conv{k}`` (and ``{norm}{k}``) -> ``{prefix_kit}{j}.conv``/``.norm``, j counting up."""
    pairs = []
    for j, k in enumerate(numbers):
        if norm is None:  # a plain list of layers, e.g. high_res.convs.j
            pairs.append((f"{prefix_official}{conv}{k}", f"{prefix_kit}{j}"))
        else:  # ConvBlock j holds .conv and .norm
            pairs.append((f"{prefix_official}{conv}{k}", f"{prefix_kit}{j}.conv"))
            pairs.append((f"{prefix_official}{norm}{k}", f"{prefix_kit}{j}.norm"))
    return pairs


def key_map(kind: str, size: int) -> list[tuple[str, str]]:
    """(published module name, kit module name) pairs of one network.

    Args:
        kind: ``"G"``, ``"D"``, ``"E"`` or ``"SubE"``.
        size: 128 or 256 (the published networks).

    Returns:
        Module-name pairs; a weight ``<official>.<leaf>`` becomes ``<kit>.<leaf>``, where the leaf
        is ``weight``, ``bias`` or a spectral-norm buffer (``u0``, ``sv0``).
    """
    _check_kind_size(kind, size)
    first = _first_layer(size)
    if kind == "G":  # G^A = fc1 + tp_conv1..5, G^H = tp_conv6..7, G^L = sub_G
        return ([("fc1", "trunk.fc")]
                + _pairs("", "trunk.blocks.", range(1, 6), norm="bn", conv="tp_conv")
                + [("tp_conv6", "high_res_head.block.conv"), ("bn6", "high_res_head.block.norm"),
                   ("tp_conv7", "high_res_head.out")]
                + _pairs("sub_G.", "low_res_head.blocks.", range(1, 3), norm="bn", conv="tp_conv")
                + [("sub_G.tp_conv3", "low_res_head.out")])
    if kind == "D":  # D^H = conv{first}..7 + fc1, fc2, fc2_class; D^L = sub_D.conv{first}..5
        return (_pairs("", "high_res.convs.", range(first, 8))
                + [("fc1", "high_res.fc1"), ("fc2", "high_res.fc2"),
                   ("fc2_class", "high_res.fc2_class")]
                + _pairs("sub_D.", "low_res.convs.", range(first, 6)))
    if kind == "E":
        return _pairs("", "blocks.", range(1, 4), norm="bn")
    return _pairs("", "blocks.", range(first, 5), norm="bn") + [("conv5", "out")]


def _rename(state: dict[str, torch.Tensor], names: dict[str, str]) -> dict[str, torch.Tensor]:
    """Rename ``module.leaf`` keys through ``names``; keys without a match raise KeyError."""
    out = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        out[f"{names[module]}.{leaf}"] = value
    return out


def to_official_state_dict(module: nn.Module, kind: str, size: int) -> dict[str, torch.Tensor]:
    """The weights of a kit network under the published names (the inverse of the import).

    Args:
        module: A kit ``Generator``, ``Discriminator``, ``Encoder`` or ``SubEncoder`` built with
            ``Config(size=size, width=1)``.
        kind: ``"G"``, ``"D"``, ``"E"`` or ``"SubE"``.
        size: 128 or 256.

    Returns:
        A state dict as the published ``Model_HA_GAN_<size>`` class would produce it (without the
        ``module.`` prefix of ``nn.DataParallel``).

    Raises:
        ConfigError: ``module`` has a layer the published ``size``^3 network does not have.

    Example:
        >>> from hagan.models import Encoder
        >>> sd = to_official_state_dict(Encoder(preset("paper128")), "E", 128)
        >>> tuple(sd["conv1.weight"].shape)
        (32, 1, 4, 4, 4)
    """
    names = {kit: official for official, kit in key_map(kind, size)}
    try:
        return _rename(module.state_dict(), names)
    except KeyError as exc:
        raise ConfigError(explain(
            f"the kit {KIND_NAMES[kind]}", f"the layers of the published {size}^3 network",
            f"layer {exc.args[0]!r}", f"Build it with Config(size={size}, width=1).")) from None


# ---------------------------------------------------------------------------------------------
# Reading a published file safely
# ---------------------------------------------------------------------------------------------
def read_official_file(path: PathLike) -> dict[str, torch.Tensor]:
    """The weights of one published file, with the ``module.`` prefix removed.

    Accepts ``{"model": state_dict, "optimizer": ...}`` (what the published ``train.py`` saves)
    or a bare state dict. Reads with ``torch.load(weights_only=True)`` only.

    Raises:
        CheckpointError: ``path`` does not exist, is not a torch file, holds non-tensor Python
            objects, or has no weights.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(explain("published weights", "an existing file such as "
                                      "G_iter80000.pth", f"{path} (does not exist)",
                                      "Check the path."))
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file; expected a .pth file such as G_iter80000.pth")
    obj = load_weights_only(path, "published weights file")
    return _strip_prefix(_extract_state(path, obj))


def _extract_state(path: Path, obj: object) -> dict[str, torch.Tensor]:
    state = obj
    if isinstance(obj, dict):
        for key in STATE_KEYS:
            if isinstance(obj.get(key), dict):
                state = obj[key]
                break
    if (not isinstance(state, dict) or not state
            or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                       for k, v in state.items())):
        keys = list(obj)[:MAX_LISTED] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{path} has no 'model' state dict (found {keys}); expected "
            "{'model': state_dict, 'optimizer': ...} as saved by the published train.py, "
            "or a bare state dict"
        )
    return state


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    n = len(DATA_PARALLEL_PREFIX)
    return {k[n:] if k.startswith(DATA_PARALLEL_PREFIX) else k: v for k, v in state.items()}


# ---------------------------------------------------------------------------------------------
# Checking a file against the expected layout
# ---------------------------------------------------------------------------------------------
def _config(size: int, latent_dim: int, num_classes: int) -> Config:
    return preset(f"paper{size}", latent_dim=latent_dim, num_classes=num_classes)


def official_shapes(kind: str, size: int, latent_dim: int = 1024,
                    num_classes: int = 0) -> dict[str, Shape]:
    """Every published weight name of one network and its shape (built on the meta device)."""
    with torch.device("meta"):
        net = KIND_CLASSES[kind](_config(size, latent_dim, num_classes))
    return {k: tuple(v.shape) for k, v in to_official_state_dict(net, kind, size).items()}


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


def _layout_problem(found: dict[str, Shape], expected: dict[str, Shape]) -> str | None:
    """The first difference between two layouts in words, or None when they are equal."""
    missing = [k for k in expected if k not in found]
    if missing:
        return f"{_listed(missing)} {'is' if len(missing) == 1 else 'are'} missing"
    unexpected = [k for k in found if k not in expected]
    if unexpected:
        return f"it has unexpected weights {_listed(unexpected)}"
    for key, shape in expected.items():
        if found[key] != shape:
            return f"{key} has shape {found[key]}, expected {shape}"
    return None


def _candidates(kind: str, found: dict[str, Shape], size: int, latent_dim: int,
                num_classes: int) -> list[tuple[int, int, int]]:
    """Other (size, latent_dim, num_classes) the file might fit, read off its shapes."""
    dims = {(latent_dim, num_classes)}
    if kind == "G" and len(found.get("fc1.weight", ())) == 2:
        n_in = found["fc1.weight"][1]  # latent_dim + num_classes
        dims |= {(latent_dim, n_in - latent_dim), (n_in - num_classes, num_classes), (n_in, 0)}
    elif kind == "D":
        n_cls = found.get("fc2_class.weight", (0,))[0]
        dims.add((latent_dim, n_cls))
    elif kind == "SubE" and found.get("conv5.weight"):
        dims.add((found["conv5.weight"][0], num_classes))
    return [(s, ld, nc) for s in OFFICIAL_SIZES for ld, nc in sorted(dims)
            if (s, ld, nc) != (size, latent_dim, num_classes) and ld > 0 and nc >= 0 and nc != 1]


def _hint(kind: str, found: dict[str, Shape], size: int, latent_dim: int,
          num_classes: int) -> str:
    for s, ld, nc in _candidates(kind, found, size, latent_dim, num_classes):
        if _layout_problem(found, official_shapes(kind, s, ld, nc)) is None:
            flags = [f"--{flag} {new}" for flag, new, old in (
                ("size", s, size), ("latent-dim", ld, latent_dim),
                ("num-classes", nc, num_classes)) if new != old]
            return f"; did you mean {' '.join(flags)}?"
    return ""


def load_network(path: PathLike, kind: str, cfg: Config) -> nn.Module:
    """Load one published file into the matching kit network, in eval mode.

    Raises:
        CheckpointError: the file does not exist, is unreadable, unsafe, or does not fit the
            network of ``cfg`` (the message names the first differing weight and, when it fits
            another size, latent size or class count, the options that would load it).
    """
    path = Path(path)
    state = read_official_file(path)
    found = {k: tuple(v.shape) for k, v in state.items()}
    expected = official_shapes(kind, cfg.size, cfg.latent_dim, cfg.num_classes)
    problem = _layout_problem(found, expected)
    if problem is not None:
        hint = _hint(kind, found, cfg.size, cfg.latent_dim, cfg.num_classes)
        raise CheckpointError(f"{path.name} does not look like a {cfg.size}^3 HA-GAN "
                              f"{KIND_NAMES[kind]}: {problem}{hint}")
    names = dict(key_map(kind, cfg.size))
    kit_state = _rename({k: v.float() for k, v in state.items()}, names)
    with torch.device("meta"):  # no random init: every tensor comes from the file
        net = KIND_CLASSES[kind](cfg)
    net.load_state_dict(kit_state, strict=True, assign=True)
    logger.info("loaded %s from %s (%.2f M parameters)", KIND_NAMES[kind], path,
                count_parameters(net) / 1e6)
    return net.eval()


# ---------------------------------------------------------------------------------------------
# Public entry point and CLI
# ---------------------------------------------------------------------------------------------
@dataclass
class OfficialModels:
    """Networks imported from published files (None where no file was given), in eval mode."""

    config: Config
    generator: Generator | None = None
    encoder: Encoder | None = None
    sub_encoder: SubEncoder | None = None
    discriminator: Discriminator | None = None

    def networks(self) -> dict[str, nn.Module]:
        """The loaded networks under the kit's names ``G``, ``D``, ``E``, ``SubE``."""
        nets = {"G": self.generator, "D": self.discriminator, "E": self.encoder,
                "SubE": self.sub_encoder}
        return {k: v for k, v in nets.items() if v is not None}


def load_official(size: int, generator: PathLike | None, encoder: PathLike | None = None,
                  sub_encoder: PathLike | None = None, discriminator: PathLike | None = None,
                  num_classes: int = 0, latent_dim: int = 1024) -> OfficialModels:
    """Load published HA-GAN weight files into kit networks.

    Args:
        size: 128 or 256: which published model (``Model_HA_GAN_<size>.py``) wrote the files.
            The generator and E^H have the same weights at both sizes, so ``size`` cannot be
            read from them; D and E^G differ and are checked.
        generator, encoder, sub_encoder, discriminator: ``G_iter<N>.pth``, ``E_iter<N>.pth``,
            ``Sub_E_iter<N>.pth``, ``D_iter<N>.pth`` (any may be None; at least one is needed).
        num_classes: Classes of a conditional model (published ``--num-class``), else 0.
        latent_dim: Length of ``z`` (published ``--latent-dim``, default 1024).

    Returns:
        An :class:`OfficialModels` whose ``config`` is the ``paper<size>`` preset with these
        settings; ``generator.generate(z)`` gives (B, 1, S, S, S) volumes in [-1, 1].

    Raises:
        ConfigError: ``size`` is not 128 or 256, or no file was given.
        CheckpointError: a file does not exist, is unreadable, unsafe, or does not fit (see
            :func:`load_network`).
    """
    if size not in OFFICIAL_SIZES:
        raise ConfigError(explain("--size", f"{OFFICIAL_SIZES[0]} or {OFFICIAL_SIZES[1]} (the "
                                  "published HA-GAN networks)", str(size),
                                  "Pass --size 128 or --size 256."))
    files = {"G": generator, "D": discriminator, "E": encoder, "SubE": sub_encoder}
    if all(f is None for f in files.values()):
        raise ConfigError(explain("published files", "at least the generator file", "none",
                                  "Pass --generator G_iter<N>.pth."))
    cfg = _config(size, latent_dim, num_classes)
    nets = {k: load_network(f, k, cfg) for k, f in files.items() if f is not None}
    return OfficialModels(config=cfg, generator=cast(Generator | None, nets.get("G")),
                          encoder=cast(Encoder | None, nets.get("E")),
                          sub_encoder=cast(SubEncoder | None, nets.get("SubE")),
                          discriminator=cast(Discriminator | None, nets.get("D")))


def _check_kind_size(kind: str, size: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if size not in OFFICIAL_SIZES:
        raise ValueError(f"the published networks have size 128 or 256, not {size}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``hagan import-official``."""
    parser.add_argument("--size", type=int, choices=OFFICIAL_SIZES, required=True,
                        help="cube side of the published model (its --img-size): 128 or 256")
    parser.add_argument("--generator", required=True, metavar="PATH",
                        help="published generator file, e.g. G_iter80000.pth")
    parser.add_argument("--encoder", metavar="PATH", help="published E^H file (E_iter<N>.pth)")
    parser.add_argument("--sub-encoder", metavar="PATH",
                        help="published E^G file (Sub_E_iter<N>.pth)")
    parser.add_argument("--discriminator", metavar="PATH",
                        help="published discriminator file (D_iter<N>.pth)")
    parser.add_argument("--num-classes", type=int, default=0,
                        help="classes of a conditional model (published --num-class; default 0)")
    parser.add_argument("--latent-dim", type=int, default=1024,
                        help="length of z (published --latent-dim; default 1024)")
    parser.add_argument("--out", required=True, metavar="PATH",
                        help="kit weights file (safetensors) to write, e.g. copd256.safetensors")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def main(args: argparse.Namespace) -> int:
    """Convert published files to one kit weights file (safetensors with the config in its
    metadata, see :mod:`hagan.weights`; usable by ``hagan generate``) and print its SHA-256."""
    from .weights import note_suffix, write_weights

    out = Path(args.out)
    if out.exists() and not args.force:
        raise RunError(explain("--out", "a path that does not exist yet",
                               f"{out} (already exists)",
                               "Pass --force to overwrite it or choose another --out."))
    models = load_official(args.size, args.generator, encoder=args.encoder,
                           sub_encoder=args.sub_encoder, discriminator=args.discriminator,
                           num_classes=args.num_classes, latent_dim=args.latent_dim)
    nets = models.networks()
    names = [Path(f).name for f in (args.generator, args.discriminator, args.encoder,
                                    args.sub_encoder) if f]
    digest = write_weights(out, models.config, nets,
                           source="published HA-GAN files " + ", ".join(names))
    print(f"wrote {out} ({', '.join(nets)}; {args.size}^3)")
    print(f"sha256 {digest}")
    note_suffix(out)
    return 0
