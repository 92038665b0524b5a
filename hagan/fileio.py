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
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import CheckpointError

PathLike = str | os.PathLike
TEMP_SUFFIX = ".tmp"  # temporary files are ".<name>.<random>.tmp" beside their target
_UMASK = os.umask(0o022)  # read the process umask once (os.umask sets it: set it back)
os.umask(_UMASK)


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], object],
                 check: Callable[[Path], None] | None = None) -> Path:
    """Call ``write(fh)`` on a temporary binary file beside ``path``, fsync it, then rename it
    over ``path``. Creates the parent folder.

    Args:
        check: Called with the temporary file's path after it is on disk and before it gets
            its final name (e.g. to verify that it reads back); an exception from it aborts the
            write like a failed write.

    Raises:
        OSError: writing failed (disk full, read-only folder); ``path`` is left as it was and the
            temporary file is removed. The error always names ``path``.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_UMASK)  # mkstemp makes 0600: use the usual mode
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                Path(tmp).unlink(missing_ok=True)
            except OSError:
                pass
        if isinstance(exc, OSError):
            raise named_os_error(exc, path) from None
        if isinstance(exc, RuntimeError) and _is_write_failure(exc):
            raise _disk_error(path) from None
        raise
    return path


def named_os_error(exc: OSError, path: PathLike) -> OSError:
    """``exc`` with a file name (a failed ``write`` on a full disk names none), so that the
    ``hagan`` command prints one line naming the path and the cause."""
    if exc.filename is not None:
        return exc
    err = OSError(exc.errno, exc.strerror or str(exc), str(path))
    return err


def _is_write_failure(exc: RuntimeError) -> bool:
    """torch.save reports a failed write (full disk) as a RuntimeError from its zip writer."""
    text = str(exc)
    return "PytorchStreamWriter" in text or "unexpected pos" in text or "file write failed" in text


def _disk_error(path: Path) -> OSError:
    """The OSError a failed write most likely was: a full disk when the folder has no room."""
    import errno
    import shutil

    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = -1
    if free == 0:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return OSError(errno.EIO, "the write failed (disk full or device error)", str(path))


@contextmanager
def atomic_target(path: PathLike) -> Iterator[Path]:
    """For writers that need a file name (e.g. ``nibabel.save``): yields a temporary path
    beside ``path`` with the same suffixes; on success it is fsynced and renamed to ``path``,
    on any error it is removed and ``path`` is left as it was.

    Example:
        >>> with atomic_target(out / "sample_0000.nii.gz") as tmp:  # doctest: +SKIP
        ...     nib.save(img, tmp)
    """
    path = Path(path)
    suffixes = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}{TEMP_SUFFIX}"
                         f"{suffixes}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise named_os_error(exc, path) from None
        raise


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


def sha256_file(path: PathLike) -> str:
    """SHA-256 (hex) of a file, read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_weights_only(path: PathLike, what: str = "file",
                      map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with one clear :class:`CheckpointError` per fault.

    Args:
        path: a file written by ``torch.save``.
        what: what the file should be, for messages (e.g. ``"checkpoint"``, ``"MedicalNet file"``).
        mmap: Map the tensors' storage instead of reading it (checks the file's structure and
            its pickle, not every byte of tensor data; cheap for a large file).

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
        raise CheckpointError(f"{what} {path} is empty (0 bytes); use another copy")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic[:2] != b"PK":  # torch.save writes a zip archive
        raise CheckpointError(f"{what} {path} is not a PyTorch file ({size} bytes, not written "
                              "by torch.save)")
    import zipfile

    if not zipfile.is_zipfile(path):  # a zip's directory is at its end: cut files fail here
        raise CheckpointError(f"{what} {path} is truncated or corrupt ({size} bytes, its zip "
                              "directory is missing); use an earlier copy")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises several types for bad files
        text = str(exc)
        if "WeightsUnpickler" in text or "Unsupported global" in text:
            found = re.search(r"GLOBAL (\S+)", text)  # the class the pickle asks for, if named
            holds = f"{found.group(1)}, not only tensors" if found else (
                "Python objects other than tensors and plain containers")
            raise CheckpointError(
                f"refusing to load {what} {path}: it holds {holds}, which could run code when "
                "unpickled (hagan loads with weights_only=True). If you trust the file, re-save "
                "just its state dict with torch.save") from None
        raise CheckpointError(f"{what} {path} is truncated or corrupt ({type(exc).__name__}); "
                              "use an earlier copy") from None


# --- output-folder locks -----------------------------------------------------------------------
LOCK_NAME = ".hagan.lock"  # the lock file (held with an OS lock while a command writes)
HOLDER_SUFFIX = ".holder.json"  # beside the lock: who holds it (pid, command, host, start time)

_held: dict[str, list[Any]] = {}  # lock file -> [FileLock, count]: re-entrant in one process
_held_guard = threading.Lock()


def is_lock_file(path: PathLike) -> bool:
    """True for the files :func:`lock_folder` and :func:`lock_file` leave (not user content)."""
    name = Path(path).name
    return name.startswith(LOCK_NAME) or (name.startswith(".") and ".hagan.lock" in name)


class OutputLock:
    """An exclusive lock on one output (a folder or a file); release it with :meth:`release`
    or use it as a context manager. Re-entrant within one process (a command's ``main`` and
    the function it calls may both take it)."""

    def __init__(self, lock_path: Path, target: Path, command: str,
                 remove: bool = False) -> None:
        self.lock_path, self.target, self.command = lock_path, target, command
        self._released = False
        _acquire(lock_path, target, command, remove)

    def release(self) -> None:
        if not self._released:
            self._released = True
            _release(self.lock_path)

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_folder(folder: PathLike, command: str) -> OutputLock:
    """Take the exclusive lock of output ``folder`` for ``command`` (e.g. ``"hagan train"``),
    creating the folder. The lock is ``folder/.hagan.lock`` (an OS file lock via the
    ``filelock`` library, freed by the OS when the process dies, even by SIGKILL); who holds it
    is written to ``folder/.hagan.lock.holder.json``.

    Raises:
        RunError: another process holds the lock (the message names it).
        OSError: the folder cannot be created or written (read-only, full): names the path.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise named_os_error(exc, folder) from None
    return OutputLock(folder / LOCK_NAME, folder, command)


def lock_file(path: PathLike, command: str) -> OutputLock:
    """Like :func:`lock_folder` for a single output file: the lock is ``.<name>.hagan.lock``
    beside it (e.g. ``hagan evaluate --out report.json``), removed again on release (while it
    is still held, so no other process can hold it then; a process that locks a removed lock
    file sees that its file is gone and reports the output as in use)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise named_os_error(exc, path.parent) from None
    return OutputLock(path.with_name(f".{path.name}{LOCK_NAME}"), path, command, remove=True)


def _holder_path(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + HOLDER_SUFFIX)


def _locked_inode_is_current(lock: Any, lock_path: Path) -> bool | None:
    """Whether the file ``lock`` holds is still the one named ``lock_path`` (``False``: it was
    removed by its previous holder after we opened it); ``None`` when this filelock version
    does not tell which file descriptor it holds."""
    fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
    if not isinstance(fd, int):
        return None
    try:
        held, named = os.fstat(fd), os.stat(lock_path)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def _acquire(lock_path: Path, target: Path, command: str, remove: bool = False) -> None:
    import socket
    import time

    from filelock import FileLock, Timeout

    from .errors import RunError

    key = str(lock_path.resolve())
    with _held_guard:
        if key in _held:
            _held[key][1] += 1
            return
        lock = FileLock(str(lock_path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RunError(f"{target} is in use by another process ({_describe_holder(lock_path)})"
                           "; wait for it to finish or stop it, or choose another output") from None
        except OSError as exc:
            raise named_os_error(exc, lock_path) from None
        current = _locked_inode_is_current(lock, lock_path) if remove else None
        if current is False:  # the previous holder removed this file as we opened it
            lock.release()
            raise RunError(f"{target} is in use by another process (it has just finished); "
                           "run the command again")
        _held[key] = [lock, 1, bool(current)]  # remove the lock file on release only when safe
    try:
        write_json(_holder_path(lock_path), {"pid": os.getpid(), "command": command,
                                             "host": socket.gethostname(),
                                             "since": time.strftime("%Y-%m-%d %H:%M:%S")})
    except BaseException:
        _release(lock_path)
        raise


def _release(lock_path: Path) -> None:
    key = str(lock_path.resolve())
    with _held_guard:
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[key]
    try:
        _holder_path(lock_path).unlink(missing_ok=True)
        if entry[2]:  # a file-level lock: remove it while still held (nobody else holds it)
            lock_path.unlink(missing_ok=True)
    except OSError:
        pass
    entry[0].release()


def _describe_holder(lock_path: Path) -> str:
    try:
        h = read_json(_holder_path(lock_path))
        return f"{h['command']}, pid {h['pid']} on {h['host']}, since {h['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def set_aside(path: PathLike, tag: str) -> Path:
    """Rename ``path`` (a file or folder) to ``<name>.<tag>`` beside it, or ``<name>.<tag>-2``...
    when that exists: never deletes or overwrites anything. Returns the new path."""
    path = Path(path)
    n = 1
    while True:
        new = path.with_name(f"{path.name}.{tag}" + (f"-{n}" if n > 1 else ""))
        if not os.path.lexists(new):
            break
        n += 1
    try:
        os.rename(path, new)
    except OSError as exc:
        raise named_os_error(exc, path) from None
    return new


# --- where outputs may go ----------------------------------------------------------------------
DATASET_MARKERS = ("dataset.json", "manifest.csv")  # a folder holding both is a prepared dataset


def dataset_root_of(path: PathLike) -> Path | None:
    """The prepared dataset folder (one holding both ``dataset.json`` and ``manifest.csv``)
    that ``path`` is, or lies inside; ``None`` when there is none. Follows symbolic links and
    ``..`` (the path need not exist yet)."""
    p = Path(path).expanduser().resolve()
    for folder in (p, *p.parents):
        try:
            if all((folder / name).is_file() for name in DATASET_MARKERS):
                return folder
        except OSError:  # an unreadable ancestor: it cannot be checked, go on upwards
            continue
    return None


def check_output_outside_dataset(out: PathLike, what: str,
                                 inputs: tuple[PathLike | None, ...] = ()) -> None:
    """Refuse an output path that lies inside a prepared dataset, or that is one of the
    command's own input files (``inputs``): writing there would change or destroy data the
    kit does not own.

    Args:
        out: the output file or folder a command is about to write (need not exist).
        what: what it is, for the message (e.g. ``"hagan generate --out"``).
        inputs: files or folders the command reads (``None`` entries are skipped); ``out``
            may not be one of them.

    Raises:
        RunError: ``out`` is inside a prepared dataset, or is one of ``inputs``.
    """
    from .errors import RunError

    root = dataset_root_of(out)
    if root is not None:
        raise RunError(f"{what} {out} is inside the prepared dataset {root} (it holds "
                       "dataset.json and manifest.csv); the kit never writes into a dataset. "
                       "Choose an output outside it.")
    resolved = Path(out).expanduser().resolve()
    for src in inputs:
        if src is None:
            continue
        s = Path(src).expanduser().resolve()
        if resolved == s:
            raise RunError(f"{what} {out} is the command's own input {src}; writing there would "
                           "destroy it. Choose another output.")


def check_output_file(out: str | PathLike, what: str) -> Path:
    """Refuse an output *file* path that ends in a path separator or names an existing folder
    (writing would otherwise make a file with the folder's name, or fail late). Returns it as
    a :class:`Path`.

    Raises:
        RunError: the path ends in a separator or is an existing folder.
    """
    from .errors import RunError

    text = os.fspath(out)
    seps = (os.sep,) + ((os.altsep,) if os.altsep else ())
    if text.endswith(seps) or Path(text).is_dir():
        raise RunError(f"{what} {text} names a folder; it must be a file name "
                       "(e.g. report.json).")
    return Path(text)
