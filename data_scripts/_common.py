"""Shared steps of the data scripts: where data lives, resumable download, safe unpacking, prepare.

Every script keeps three folders under ``$HAGAN_DATA_DIR/<name>/`` (default ``~/hagan-data``):
``downloads/`` (archives, kept so a re-run does not download again), ``raw/`` (unpacked files,
only read by ``hagan preprocess``) and ``prepared-<size>/`` (the prepared dataset).

Only the Python standard library is used for the network part (``urllib``), so nothing beyond
hagan-kit's own dependencies is needed.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

logger = logging.getLogger("hagan.data_scripts")

DATA_DIR_ENV = "HAGAN_DATA_DIR"
DEFAULT_DATA_DIR = "~/hagan-data"
CHUNK_BYTES = 1 << 20  # read/write 1 MiB at a time
TIMEOUT_S = 60  # per network read; a stalled connection fails and the next run resumes
UNPACKED_MARKER = ".unpacked"  # written last: its presence means the unpack completed


def data_dir(override: str | None = None) -> Path:
    """``override``, else ``$HAGAN_DATA_DIR``, else ``~/hagan-data`` (created if needed)."""
    path = Path(override or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def check_digest(path: Path, checksum: str | None) -> None:
    """``checksum`` is ``"md5:<hex>"`` or ``"sha256:<hex>"``; None skips the check (logged)."""
    if not checksum:
        logger.info("%s: the source publishes no checksum; size-only check", path.name)
        return
    algorithm, expected = checksum.split(":", 1)
    found = file_digest(path, algorithm)
    if found != expected.lower():
        raise ValueError(f"{path.name}: {algorithm} is {found}, expected {expected}. The file is "
                         f"damaged or changed upstream; delete {path} and run again")


def download(url: str, dest: Path, checksum: str | None = None) -> Path:
    """Download ``url`` to ``dest``, resuming a partial ``dest.part`` with an HTTP Range request.

    A finished file is verified against ``checksum`` and kept; calling again then does nothing.

    Raises:
        ValueError: a checksum mismatch (the partial file is kept for inspection).
        urllib.error.URLError: the network failed; run again to resume.
    """
    if dest.is_file():
        check_digest(dest, checksum)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code != 416:  # 416: the range starts at the end, i.e. the part is complete
            raise
        response = None
    if response is not None:
        with response:
            resumed = response.status == 206  # 200 means the server ignored Range: start over
            total = int(response.headers.get("Content-Length", 0)) + (have if resumed else 0)
            logger.info("downloading %s (%s)%s", url, f"{total / 2**20:.0f} MiB" if total else
                        "size unknown", f", resuming at {have / 2**20:.0f} MiB" if resumed else "")
            with open(part, "ab" if resumed else "wb") as fh:
                shutil.copyfileobj(response, fh, CHUNK_BYTES)
    check_digest(part, checksum)
    os.replace(part, dest)
    return dest


def _safe_target(root: Path, name: str) -> Path:
    target = (root / name).resolve()
    if root.resolve() not in (target, *target.parents):
        raise ValueError(f"archive member {name!r} would be written outside {root}; refusing")
    return target


def unpack(archive: Path, dest: Path) -> Path:
    """Unpack a .tar, .tar.gz/.tgz, .tar.bz2 or .zip into ``dest`` once (a marker records it).

    Members that would land outside ``dest`` (absolute paths, ``..``) and links are refused.
    """
    marker = dest / f"{UNPACKED_MARKER}-{archive.name}"
    if marker.is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    logger.info("unpacking %s -> %s", archive.name, dest)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                _safe_target(dest, member.filename)
            zf.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for member in members:
                _safe_target(dest, member.name)
                if member.issym() or member.islnk() or member.isdev():
                    raise ValueError(f"archive member {member.name!r} is a link or device; "
                                     "refusing to unpack it")
            tf.extractall(dest, members=members)
    else:
        raise ValueError(f"{archive} is neither a tar nor a zip archive")
    marker.write_text("ok\n", encoding="utf-8")
    return dest


def prepare(raw: Path, out: Path, size: int, modality: str, window=None, labels=None,
            workers: int = 1):
    """Run ``hagan.preprocess.preprocess`` on ``raw`` and log its summary."""
    from hagan.preprocess import preprocess

    report = preprocess(raw, out, size=size, modality=modality, window=window, labels=labels,
                        workers=workers)
    logger.info("%s", report.summary())
    return report


def parser(description: str) -> argparse.ArgumentParser:
    """The options every data script shares."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir",
                   help=f"data folder (default ${DATA_DIR_ENV} or {DEFAULT_DATA_DIR})")
    p.add_argument("--size", type=int, default=128, help="cube edge of the prepared volumes")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1) // 2),
                   help="parallel preprocessing processes")
    p.add_argument("--skip-download", action="store_true",
                   help="use archives already in downloads/ (e.g. fetched by hand)")
    return p


def run(main) -> None:
    """Call a script's ``main(argv)``; user errors (the kit's HaganError, and this folder's
    ValueError and OSError) become one line and exit code 2."""
    from hagan.errors import HaganError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        sys.exit(main(sys.argv[1:]))
    except (HaganError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
