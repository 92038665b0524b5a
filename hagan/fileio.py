"""The kit's one copy of each file mechanism: atomic writes, JSON files, weights-only loading.

Every file the kit writes goes through :func:`atomic_write_bytes` (temporary file in the same
folder, fsync, ``os.replace``): a crash, a full disk or Ctrl-C leaves either the old file or the
new one under the final name, never a torn one. Every PyTorch file the kit reads goes through
:func:`load_weights_only` (``torch.load(weights_only=True)``: tensors and plain containers only,
never arbitrary pickled objects).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import CheckpointError

PathLike = str | os.PathLike
TEMP_SUFFIX = ".tmp"  # temporary files are ".<name>.<random>.tmp" beside their target


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(fh)`` on a temporary binary file beside ``path``, fsync it, then rename it
    over ``path``. Creates the parent folder.

    Raises:
        OSError: writing failed (disk full, read-only folder); ``path`` is left as it was and the
            temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically, always UTF-8 (never the process locale)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npy(path: PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as a ``.npy`` file atomically."""
    return atomic_write(path, lambda fh: np.save(fh, array))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_json(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented UTF-8 JSON, atomically. NumPy scalars/arrays and paths are
    converted to plain JSON values."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: PathLike) -> Any:
    """Read a UTF-8 JSON file (raises ``OSError`` or ``json.JSONDecodeError``)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def load_weights_only(path: PathLike, what: str = "file",
                      map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with one clear :class:`CheckpointError` per fault.

    Args:
        path: a file written by ``torch.save``.
        what: what the file should be, for messages (e.g. ``"checkpoint"``, ``"MedicalNet file"``).

    Raises:
        CheckpointError: missing, empty, not a ``torch.save`` file, truncated or corrupt, or it
            holds Python objects other than tensors and plain containers (refused: unpickling them
            could run code).
    """
    import torch  # here, so that importing this module stays cheap

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes): its write was interrupted")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic[:2] != b"PK":  # torch.save writes a zip archive
        raise CheckpointError(f"{what} {path} is not a PyTorch file ({size} bytes, not written "
                              "by torch.save)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for bad files
        text = str(exc)
        if "WeightsUnpickler" in text or "Unsupported global" in text:
            raise CheckpointError(
                f"refusing to load {what} {path}: it holds Python objects other than tensors "
                "and plain containers, which could run code when unpickled (hagan loads with "
                "weights_only=True)") from None
        raise CheckpointError(f"{what} {path} is truncated or corrupt ({type(exc).__name__}); "
                              "use an earlier copy") from None
