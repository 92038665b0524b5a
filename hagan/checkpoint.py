"""One-file, atomic, resumable checkpoints, loaded with ``weights_only=True``.

A checkpoint is a dict saved with ``torch.save``::

    {"format_version": 1, "kind": "hagan-kit checkpoint", "config": {...}, "step": int,
     "models": {"G": state_dict, "D": ..., "E": ..., "SubE": ...},
     "optimizers": {...}, "scaler": {...} | None, "rng": {...}}

It holds only tensors, numbers, strings, lists and dicts, so ``torch.load(weights_only=True)``
reads it and a file crafted to run code when unpickled is refused (PyTorch's safe unpickler).
Files are written to a temporary name in the same folder, flushed to disk and then renamed, so
a crash or a full disk never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config, PathLike, from_dict
from .errors import CheckpointError
from .models import build_models

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
KIND = "hagan-kit checkpoint"
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^ckpt_(\d{8})\.pt$")


def checkpoint_path(run_dir: PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"ckpt_{step:08d}.pt"


def save_checkpoint(path: PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file + fsync + ``os.replace``).

    Raises:
        OSError: writing failed (e.g. disk full); the previous file at ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format_version": FORMAT_VERSION, "kind": KIND, **state}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a kit checkpoint safely.

    Raises:
        CheckpointError: the file is missing, empty, truncated, not a kit checkpoint, or holds
            objects other than tensors and plain containers (possible code execution: refused).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the write was interrupted")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic[:2] != b"PK":  # torch.save writes a zip archive
        raise CheckpointError(f"{path} is not a checkpoint: it was not written by torch.save")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for bad files
        if "WeightsUnpickler" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"refusing to load {path}: it holds Python objects or pickle instructions that "
                "are not plain tensors and containers, which could run code when unpickled "
                "(hagan loads with weights_only=True)"
            ) from None
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt: "
                              f"{type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("kind") != KIND:
        raise CheckpointError(
            f"{path} is not a hagan-kit checkpoint. For weights published with the original "
            "HA-GAN code, convert them first with `hagan import-official`."
        )
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {state['format_version']}; this "
                              f"hagan-kit reads up to {FORMAT_VERSION}. Upgrade hagan-kit.")
    return state


def list_checkpoints(run_dir: PathLike) -> list[Path]:
    """Checkpoints of a run, oldest first (by step)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def latest_checkpoint(run_dir: PathLike) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of a run that loads, skipping (and reporting) broken ones."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as exc:
            logger.warning("skipping broken checkpoint: %s", exc)
    return None


def remove_stale_temp_files(run_dir: PathLike) -> int:
    """Delete temporary files left by a checkpoint write that was killed (SIGKILL, power loss).

    Only call this when no other process writes to ``run_dir``. Returns how many were removed.
    """
    folder = Path(run_dir) / CHECKPOINT_DIR
    stale = list(folder.glob(".ckpt_*.pt.*.tmp")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        logger.info("removed %d unfinished checkpoint file(s) left by an interrupted write",
                    len(stale))
    return len(stale)


def prune_checkpoints(run_dir: PathLike, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints."""
    for path in list_checkpoints(run_dir)[:-keep]:
        path.unlink(missing_ok=True)


def resolve(path: PathLike) -> Path:
    """Accept a checkpoint file or a run folder (meaning its newest good checkpoint)."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{path} holds no loadable checkpoint (looked in "
                                  f"{path / CHECKPOINT_DIR})")
        return found[0]
    return path


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers (what we save)."""
    module = getattr(module, "module", module)
    return getattr(module, "_orig_mod", module)


def save_models(path: PathLike, cfg: Config, models: dict[str, nn.Module | None],
                step: int = 0) -> Path:
    """Save networks (any of G, D, E, SubE) with their config; no optimiser state."""
    return save_checkpoint(path, {
        "config": cfg.to_dict(),
        "step": step,
        "models": {k: unwrap(m).state_dict() for k, m in models.items() if m is not None},
    })


def load_models(path: PathLike, device: str | torch.device = "cpu",
                ) -> tuple[Config, dict[str, nn.Module]]:
    """Rebuild the networks of a checkpoint (file or run folder) in eval mode.

    Returns:
        ``(config, {"G": Generator, ...})`` holding the networks the checkpoint has.
    """
    state = load_checkpoint(resolve(path))
    cfg = from_dict(state["config"])
    nets = build_models(cfg)
    out: dict[str, nn.Module] = {}
    for name, sd in state["models"].items():
        net = nets[name]
        try:
            net.load_state_dict(sd)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: the {name} weights do not fit a {cfg.size}^3 model "
                                  f"({str(exc).splitlines()[0]})") from None
        out[name] = net.to(device).eval()
    return cfg, out
