"""Weights people can share: one safetensors file with the networks and their config.

A kit weights file is a `safetensors <https://huggingface.co/docs/safetensors>`_ file: a JSON
header followed by raw tensor bytes, so reading it never runs code (unlike a pickle) and any
safetensors reader in any language can open it. Layout::

    tensors   "<net>.<parameter name>" for net in G, D, E, SubE (the kit's state-dict names)
    metadata  format = "hagan-kit weights", format_version = "1",
              config = the run's Config as JSON, networks = "G,D,E,SubE" (those present),
              step = training iteration, source = where the weights came from,
              data = the training data's geometry as JSON (path, size, spacing_mm, modality,
                     window; from the run's checkpoint), when known

Optimiser state and RNG state are not in it (a run's checkpoints keep those, for resuming).
:func:`hagan.checkpoint.load_models` reads both formats, so ``hagan generate``, ``hagan evaluate``
and the notebooks accept either. Each writer prints the file's SHA-256, so that whoever receives
the file can check they have the same bytes (``sha256sum FILE``).

The ``hagan export`` command is in :mod:`hagan.export`. Example::

    hagan export runs/brain128 --out brain128.safetensors
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config, PathLike, from_dict
from .errors import CheckpointError, HaganError, explain
from .fileio import atomic_write_bytes, sha256_file

logger = logging.getLogger(__name__)

FORMAT = "hagan-kit weights"
FORMAT_VERSION = 1
NETWORKS = ("G", "D", "E", "SubE")  # the kit's names (hagan.models.build_models)
SUFFIX = ".safetensors"
_HEADER_LENGTH_BYTES = 8  # a safetensors file opens with its JSON header's length (u64 LE)
_MAX_HEADER = 100_000_000  # safetensors' own limit on the header size


def looks_like_safetensors(path: PathLike) -> bool:
    """True when ``path`` opens like a safetensors file (a plausible header length followed by
    ``{``), whatever its name. A torch checkpoint (a zip archive) never does."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEADER_LENGTH_BYTES + 1)
    except OSError:
        return False
    if len(head) < _HEADER_LENGTH_BYTES + 1:
        return False
    length = int.from_bytes(head[:_HEADER_LENGTH_BYTES], "little")
    return 2 <= length <= _MAX_HEADER and head[_HEADER_LENGTH_BYTES:] == b"{"


def write_weights(path: PathLike, cfg: Config, nets: Mapping[str, nn.Module | None],
                  step: int = 0, source: str = "", data: dict[str, Any] | None = None) -> str:
    """Write networks and their config as one safetensors file (atomically).

    Args:
        path: The file to write (by convention ``*.safetensors``).
        cfg: The networks' config (stored as JSON in the metadata).
        nets: Any of ``G``, ``D``, ``E``, ``SubE`` (None entries are skipped), plain modules
            (not wrapped in DDP or ``torch.compile``: see :func:`hagan.checkpoint.unwrap`).
        step: Training iteration the weights come from.
        source: Free text: where the weights came from (a run folder, published files).
        data: The training data's geometry (:func:`hagan.checkpoint.run_data_geometry`), so that
            ``hagan generate`` writes samples with the right voxel size and units.

    Returns:
        The file's SHA-256 (hex).

    Raises:
        ValueError: no network given, or an unknown network name.
        OSError: the file cannot be written (names the path).
    """
    from safetensors.torch import save

    present = {k: v for k, v in nets.items() if v is not None}
    unknown = sorted(set(present) - set(NETWORKS))
    if unknown or not present:
        raise ValueError(f"expected networks among {', '.join(NETWORKS)}, got {sorted(nets)}")
    tensors: dict[str, torch.Tensor] = {}
    for name in NETWORKS:
        if name in present:
            for key, value in present[name].state_dict().items():
                # own contiguous CPU copies: safetensors refuses shared or strided storage
                tensors[f"{name}.{key}"] = value.detach().to("cpu").contiguous().clone()
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                "config": json.dumps(cfg.to_dict(), sort_keys=True),
                "networks": ",".join(n for n in NETWORKS if n in present),
                "step": str(int(step)), "source": source}
    if data:
        metadata["data"] = json.dumps(data, sort_keys=True)
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    return sha256_file(path)


def read_weights(path: PathLike) -> tuple[Config, dict[str, dict[str, torch.Tensor]], int]:
    """Read a kit weights file: ``(config, {net: state_dict}, step)``.

    Raises:
        CheckpointError: missing, empty, truncated or corrupt, not a kit weights file, a newer
            format, or a config the kit rejects (one line each).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"weights file {path} is empty (0 bytes); use another copy or "
                              "export it again")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CheckpointError(explain(
                    str(path), f"a {FORMAT} file (metadata format={FORMAT!r})",
                    f"format={meta.get('format')!r}", "Write one with `hagan export` or "
                    "`hagan import-official`."))
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    except SafetensorError as exc:
        raise CheckpointError(f"weights file {path} is truncated or corrupt ({exc}); use an "
                              "earlier copy or export it again") from None
    except (OSError, ValueError, RuntimeError) as exc:
        if isinstance(exc, HaganError):
            raise
        raise CheckpointError(f"weights file {path} cannot be read ({type(exc).__name__}: "
                              f"{exc}); use an earlier copy or export it again") from None
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        version = -1
    if not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(explain(f"{path} format_version", f"1..{FORMAT_VERSION}",
                                      repr(meta.get("format_version")),
                                      "Upgrade hagan-kit to read newer files."))
    try:
        cfg = from_dict(json.loads(meta["config"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: its config metadata is missing or invalid "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                              ) from None
    states: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        net, _, name = key.partition(".")
        if net not in NETWORKS or not name:
            raise CheckpointError(explain(f"{path} tensor {key!r}", "a name '<net>.<weight>' "
                                          f"with net one of {', '.join(NETWORKS)}", repr(key)))
        states.setdefault(net, {})[name] = value
    if not states:
        raise CheckpointError(f"{path} holds no network weights")
    try:
        step = int(meta.get("step", "0"))
    except ValueError:
        step = 0
    return cfg, states, step


def read_data_geometry(path: PathLike) -> dict[str, Any] | None:
    """The training data's geometry stored in a kit weights file (``data`` metadata, shaped like
    ``dataset.json``: ``spacing_mm``, ``modality``, ``window``, ...), or None when it has none
    (e.g. files from ``hagan import-official``: the published files record no geometry).

    Raises:
        CheckpointError: the file cannot be read or its ``data`` metadata is not a JSON object.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            text = (fh.metadata() or {}).get("data")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"weights file {path} is truncated or corrupt ({exc})") from None
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise CheckpointError(explain(f"{path} data metadata", "a JSON object", repr(text[:40])))
    return data


def note_suffix(path: PathLike) -> None:
    """Log a hint when a weights file is not named ``*.safetensors`` (the kit reads it by its
    content either way; other tools go by the name)."""
    if Path(path).suffix != SUFFIX:
        logger.info("note: %s is a safetensors file; naming it *%s lets other tools recognise it",
                    path, SUFFIX)

