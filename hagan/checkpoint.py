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

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config, PathLike, from_dict
from .data import SPLIT_SEED, DataSplit, PreparedDataset, make_split
from .errors import CheckpointError, HaganError, RunError
from .fileio import (
    atomic_write,
    atomic_write_text,
    load_weights_only,
    named_os_error,
    read_json,
    set_aside,
    write_json,
)
from .models import Networks, build_models

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
KIND = "hagan-kit checkpoint"
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^ckpt_(\d{8})\.pt$")
METRICS_FILE = "metrics.jsonl"
# What a run folder holds from its run: a fresh start moves these aside, never deletes them.
RUN_ENTRIES = (CHECKPOINT_DIR, METRICS_FILE, "config.json", "split.json", "tb")
# The parts a checkpoint needs to resume training, and the networks it must hold.
TRAINING_PARTS = ("config", "step", "models", "optimizers", "rng")
NETWORKS = ("G", "D", "E", "SubE")
# What a run records about its dataset (from dataset.json), beside the absolute path.
DATA_KEYS = ("size", "spacing_mm", "modality", "window", "axes")
# Files and folders that mark a prepared dataset (hagan preprocess / demo-data).
DATASET_MARKERS = ("manifest.csv", "dataset.json", "volumes")
DAMAGED_TAG = "damaged"
# The checkpoint chosen by validation (Config.keep_best_from): models only, beside the ckpt_*.pt
# files (not one of them, so never pruned), and the run folder's model when present.
BEST_NAME = "best.pt"
SUPERSEDED_TAG = "superseded"
_ANNOUNCED: set[Path] = set()  # run folders whose best.pt resolve() has named in the log


def checkpoint_path(run_dir: PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"ckpt_{step:08d}.pt"


def best_path(run_dir: PathLike) -> Path:
    """``RUN/checkpoints/best.pt``: the checkpoint kept by validation (``keep_best_from``)."""
    return Path(run_dir) / CHECKPOINT_DIR / BEST_NAME


# What a best.pt must share with its run folder's config.json to count as that run's model.
BEST_IDENTITY = ("size", "width", "latent_dim", "num_classes", "d_minibatch_std", "seed", "data",
                 "keep_best_from")


def load_best(run_dir: PathLike) -> dict[str, Any]:
    """Load a run's ``best.pt`` (memory-mapped) and check that it is this run's.

    Raises:
        CheckpointError: it does not load, records no validation score, or its config differs
            from the run's ``config.json`` in one of :data:`BEST_IDENTITY` (a file from another
            run); the message says how to go on without it.
    """
    path = best_path(run_dir)
    remedy = (f"It is the run's kept model (keep_best_from). Move it out of {path.parent} to "
              "use the newest checkpoint (training then chooses again from its next check), or "
              "pass a checkpoints/ckpt_*.pt file")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file. {remedy}")
    try:
        state = load_checkpoint(path, mmap=True)
    except CheckpointError as exc:
        raise CheckpointError(f"{str(exc).split('; use ')[0]}. {remedy}") from None
    scores = state.get("validation")
    if not isinstance(scores, dict) or not isinstance(scores.get("val_score"), float):
        raise CheckpointError(f"{path} records no validation score (val_score), so it is not a "
                              f"kept model. {remedy}")
    config_file = Path(run_dir) / "config.json"
    if config_file.is_file():
        run_cfg = read_json(config_file)
        differ = [k for k in BEST_IDENTITY if isinstance(run_cfg, dict)
                  and run_cfg.get(k) != state["config"].get(k)]
        if differ:
            k = differ[0]
            raise CheckpointError(f"{path} is not from this run: its {k} is "
                                  f"{state['config'].get(k)!r}, the run's ({config_file}) "
                                  f"{run_cfg.get(k)!r}. {remedy}")
    return state


def read_best(run_dir: PathLike, step: int) -> dict[str, float] | None:
    """The validation scores of a run's ``best.pt`` when a run resumes at iteration ``step``.

    None when there is none. A ``best.pt`` from after ``step`` (saved, then the run stopped
    before the checkpoint it resumes from) belongs to a trajectory that is not continued: it is
    renamed ``best.pt.superseded`` (not deleted) and None is returned.

    Raises:
        CheckpointError: ``best.pt`` is not this run's kept model (:func:`load_best`): fail
            closed, the run would otherwise forget the model it chose.
    """
    path = best_path(run_dir)
    if not os.path.lexists(path):
        return None
    state = load_best(run_dir)
    if state["step"] > step:
        moved = set_aside(path, SUPERSEDED_TAG)
        logger.warning("%s is from iteration %d, after the checkpoint this run resumes from "
                       "(%d): set aside as %s", path, state["step"], step, moved.name)
        return None
    return {"step": state["step"], **state["validation"]}


def save_checkpoint(path: PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file + fsync + ``os.replace``), after
    checking that the written file loads with the kit's own loader (:func:`load_checkpoint`,
    ``weights_only=True``): a checkpoint counts as written only when it can be read back.

    Raises:
        CheckpointError: the written file does not read back (e.g. the state holds an object
            that is not a tensor, number, string or plain container); nothing is kept.
        OSError: writing failed (e.g. disk full); the previous file at ``path`` is untouched.
    """
    path = Path(path)
    state = {"format_version": FORMAT_VERSION, "kind": KIND, **state}

    def verify(tmp: Path) -> None:
        try:
            load_checkpoint(tmp, mmap=True)
        except CheckpointError as exc:
            reason = str(exc).replace(str(tmp), "it")
            raise CheckpointError(f"checkpoint {path} was not written: the kit's own loader "
                                  f"cannot read it back ({reason}). Every value saved must be "
                                  "a tensor, number, string or list/dict of them") from None

    return atomic_write(path, lambda fh: torch.save(state, fh), check=verify)


def load_checkpoint(path: PathLike, map_location: str | torch.device = "cpu",
                    mmap: bool = False) -> dict[str, Any]:
    """Read a kit checkpoint safely (``weights_only=True``, see
    :func:`hagan.fileio.load_weights_only`).

    Args:
        mmap: Map tensor storage instead of reading it (a cheap check of a large file).

    Raises:
        CheckpointError: the file is missing, empty, truncated, not a kit checkpoint, lacks a
            part every checkpoint has (config, step, models), or holds objects other than
            tensors and plain containers (possible code execution: refused).
    """
    path = Path(path)
    state = load_weights_only(path, "checkpoint", map_location=map_location, mmap=mmap)
    if not isinstance(state, dict) or state.get("kind") != KIND:
        raise CheckpointError(
            f"{path} is not a hagan-kit checkpoint. For weights published with the original "
            "HA-GAN code, convert them first with `hagan import-official`."
        )
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {state['format_version']}; this "
                              f"hagan-kit reads up to {FORMAT_VERSION}. Upgrade hagan-kit.")
    missing = [k for k, kind in (("config", dict), ("step", int), ("models", dict))
               if not isinstance(state.get(k), kind)]
    if missing:
        raise CheckpointError(f"checkpoint {path} is damaged: its {', '.join(missing)} "
                              f"{'is' if len(missing) == 1 else 'are'} missing or not readable")
    bad = [k for k, v in state["models"].items() if not isinstance(v, dict)]
    if bad:
        raise CheckpointError(f"checkpoint {path} is damaged: the weights of "
                              f"{', '.join(map(str, bad))} are not a state dict")
    return state


def check_training_state(state: dict[str, Any], path: PathLike) -> None:
    """Raise :class:`CheckpointError` naming what ``state`` lacks to resume training (the
    optimiser and RNG states, one of the networks G, D, E, SubE)."""
    missing = [k for k in TRAINING_PARTS if state.get(k) is None]
    missing += [f"the {k} weights" for k in NETWORKS if k not in (state.get("models") or {})]
    missing += [f"the {k} optimiser state" for k in NETWORKS
                if isinstance(state.get("optimizers"), dict) and k not in state["optimizers"]]
    if missing:
        raise CheckpointError(f"checkpoint {path} cannot resume training: it lacks "
                              f"{', '.join(missing)} (a weights-only export is for `hagan "
                              "generate`, not for resuming)")


def list_checkpoints(run_dir: PathLike) -> list[Path]:
    """Checkpoints of a run, oldest first (by step)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def step_of(path: PathLike) -> int:
    """The iteration in a checkpoint's file name (``ckpt_00000120.pt`` -> 120)."""
    return int(_NAME.match(Path(path).name).group(1))  # type: ignore[union-attr]


@dataclass
class RunScan:
    """What :func:`scan_run` found in a run folder's checkpoints.

    Attributes:
        newest: (path, state) of the newest checkpoint that loads, or None (whether it can
            resume training is :func:`check_training_state`'s to say).
        good: every checkpoint that loads, newest first.
        damaged: (path, reason) of every checkpoint that does not, newest first.
    """

    newest: tuple[Path, dict[str, Any]] | None = None
    good: list[Path] = field(default_factory=list)
    damaged: list[tuple[Path, str]] = field(default_factory=list)


def scan_run(run_dir: PathLike) -> RunScan:
    """Check every checkpoint of a run: the newest good one is loaded in full, the others only
    checked (their structure and pickle, tensors memory-mapped). Nothing is written."""
    scan = RunScan()
    for path in reversed(list_checkpoints(run_dir)):
        try:
            state = load_checkpoint(path, mmap=scan.newest is not None)
        except CheckpointError as exc:
            logger.warning("skipping broken checkpoint: %s", exc)
            scan.damaged.append((path, str(exc)))
            continue
        scan.good.append(path)
        if scan.newest is None:
            scan.newest = (path, state)
        del state
    return scan


def set_aside_damaged(damaged: list[tuple[Path, str]]) -> list[Path]:
    """Rename damaged checkpoints to ``ckpt_XXXXXXXX.pt.damaged`` (never deleted, never counted
    as checkpoints again), logging each. Returns the new paths."""
    moved = []
    for path, _reason in damaged:
        new = set_aside(path, DAMAGED_TAG)
        logger.warning("set aside damaged checkpoint %s as %s", path.name, new.name)
        moved.append(new)
    return moved


def latest_checkpoint(run_dir: PathLike) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of a run that loads, skipping (and reporting) broken ones."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as exc:
            logger.warning("skipping broken checkpoint: %s", exc)
    return None


def refuse_unloadable_run(run_dir: PathLike, damaged: list[tuple[Path, str]]) -> None:
    """Fail closed: ``run_dir`` holds checkpoints and none of them loads.

    Raises:
        RunError: always; names every file and the way to start over explicitly.
    """
    reasons = "; ".join(reason for _, reason in damaged)
    raise RunError(f"{run_dir} holds {len(damaged)} checkpoint(s) and none of them loads "
                   f"({reasons}). Nothing was changed. To start a new run in this folder anyway, "
                   "pass --fresh (Python: fresh=True): the old files are moved aside, not deleted")


def move_previous_run(run_dir: PathLike) -> Path | None:
    """Move what an earlier run left in ``run_dir`` (checkpoints, metrics.jsonl, config.json,
    split.json, tb) into ``run_dir/previous-<date>-<time>/``, for a fresh start: nothing is
    deleted or overwritten. Returns that folder, or None when there was nothing to move."""
    run_dir = Path(run_dir)
    present = [run_dir / name for name in RUN_ENTRIES if (run_dir / name).exists()]
    if not present:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir / f"previous-{stamp}"
    n = 2
    while target.exists():
        target = run_dir / f"previous-{stamp}-{n}"
        n += 1
    try:
        target.mkdir()
        for entry in present:
            entry.rename(target / entry.name)
    except OSError as exc:
        raise named_os_error(exc, target) from None
    logger.warning("fresh start: moved the folder's earlier %s to %s",
                   ", ".join(p.name for p in present), target)
    return target


def _is_kit_config(path: Path) -> bool:
    """True when ``path`` is a config.json the kit wrote (every key a Config field, with the
    preset, size and iterations present, and valid values)."""
    try:
        values = read_json(path)
        if not isinstance(values, dict) or not {"preset", "size", "iterations"} <= set(values):
            return False
        from_dict(values)
    except (OSError, ValueError, TypeError, HaganError):
        return False
    return True


def check_run_folder(run_dir: PathLike) -> None:
    """Refuse to start or resume a run in a non-empty folder that is not recognisably a kit run
    folder (no kit checkpoint under ``checkpoints/`` and no kit ``config.json``): a fresh
    start would move the user's own ``checkpoints/`` or ``config.json`` aside. The folder's lock
    files and ``previous-*`` folders do not count. An absent or empty folder passes.

    Raises:
        RunError: the folder holds other files; nothing was changed (``--fresh`` overrides).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    entries = sorted(e.name for e in run_dir.iterdir()
                     if not e.name.startswith((".hagan.lock", "previous-")))
    if not entries or list_checkpoints(run_dir) or _is_kit_config(run_dir / "config.json"):
        return
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    raise RunError(f"--out {run_dir}: expected an empty folder or a hagan run folder, found "
                   f"other files ({shown}; no kit checkpoint or kit config.json). Nothing was "
                   "changed. Choose a new or empty --out folder, or pass --fresh to start a run "
                   "here anyway (checkpoints/, config.json, metrics.jsonl, split.json and tb/ "
                   "are then moved to previous-DATE-TIME/, never deleted).")


def is_dataset_folder(path: PathLike) -> bool:
    """True when ``path`` looks like a prepared dataset (manifest.csv, dataset.json, volumes)."""
    return any((Path(path) / name).exists() for name in DATASET_MARKERS)


def data_record(root: PathLike) -> dict[str, Any]:
    """What a run records about its dataset: the absolute path and, from ``dataset.json``, the
    cube size, voxel spacing (``spacing_mm``, z y x), modality, CT window and axis orientation.
    Stored in every checkpoint (``state["data"]``) so that generation never has to look at the
    dataset (or the current folder) again."""
    path = Path(root).resolve()
    try:
        info = read_json(path / "dataset.json")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict):
        info = {}
    names = info.get("label_names")
    return {"path": str(path), **{k: info.get(k) for k in DATA_KEYS},
            "label_names": [str(n) for n in names] if isinstance(names, list) else None}


def label_names(source: PathLike) -> list[str]:
    """The label names of the data a checkpoint was trained on (class index = position):
    recorded in the checkpoint, else read from its recorded dataset's ``dataset.json``;
    [] when neither is known. For messages only: never raises on a missing or bad file."""
    try:
        data = load_checkpoint(source, mmap=True).get("data")
    except (OSError, HaganError):
        return []
    data = data if isinstance(data, dict) else {}
    names = data.get("label_names")
    if names is None and data.get("path"):
        try:
            info = read_json(Path(data["path"]) / "dataset.json")
            names = info.get("label_names") if isinstance(info, dict) else None
        except (OSError, ValueError):
            names = None
    return [str(n) for n in names] if isinstance(names, list) else []


def label_map_text(names: list[str]) -> str:
    """``"label -> class index: a=0, b=1"`` for messages; "" without names."""
    if not names:
        return ""
    return "label -> class index: " + ", ".join(f"{n}={i}" for i, n in enumerate(names))


def run_data_geometry(state: dict[str, Any]) -> dict[str, Any]:
    """The training data's geometry recorded in a checkpoint ``state``: a dict with ``path``
    (absolute), ``size``, ``spacing_mm`` (z, y, x in mm), ``modality``, ``window`` (CT, HU) and
    ``axes``; each is None when the checkpoint does not record it (a checkpoint from before
    this was stored, a model trained on an in-memory dataset, an imported official model).
    Shaped like ``dataset.json``, so ``hagan.data.nifti_settings(geometry)`` accepts it."""
    data = state.get("data")
    data = data if isinstance(data, dict) else {}
    return {"path": data.get("path"), **{k: data.get(k) for k in DATA_KEYS}}


# --- the JSON-lines training log ---------------------------------------------------------------
def load_metrics_log(path: PathLike) -> tuple[list[dict[str, Any]], bool]:
    """Records of a ``metrics.jsonl`` file, and whether its last line was torn.

    A last line without its newline that does not parse is what a crash or a full disk leaves
    mid-write: it is left out (``torn`` True). Any other line that does not parse is damage.

    Raises:
        RunError: a line other than a torn last one is not a JSON object (names file and line).
    """
    path = Path(path)
    if not path.is_file():
        return [], False
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise named_os_error(exc, path) from None
    lines = text.split("\n")
    records: list[dict[str, Any]] = []
    torn = False
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not a record with an integer step")
        except ValueError:
            if i == len(lines) - 1:  # the last line, without its newline: torn by a crash
                torn = True
                continue
            raise RunError(f"training log {path} is damaged at line {i + 1} (not a JSON record "
                           "with a step); move the file aside or fix that line") from None
        records.append(record)
    return records, torn


def truncate_metrics_log(path: PathLike, step: int) -> None:
    """Keep the log records up to iteration ``step`` (a resumed run redoes later iterations
    and logs them again) and drop a torn last line with a warning; rewritten atomically, so a
    full disk never loses the log. Does nothing when there is nothing to drop."""
    path = Path(path)
    records, torn = load_metrics_log(path)
    kept = [r for r in records if r["step"] <= step]
    if torn:
        logger.warning("dropped a torn last line of %s (left by a crash or a full disk)", path)
    if torn or len(kept) != len(records):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def append_metrics(path: PathLike, record: dict[str, Any]) -> None:
    """Append one record to a ``metrics.jsonl`` log (UTF-8; an OSError names the file)."""
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
    except OSError as exc:
        raise named_os_error(exc, path) from None


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


def prune_checkpoints(run_dir: PathLike, keep: int, verified: set[Path] | None = None
                      ) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints that load; only those count.

    A checkpoint not in ``verified`` is checked first (and added to it when good); one that
    does not load is set aside (renamed ``*.damaged``), neither counted nor deleted, so the
    newest good checkpoint is never deleted. Returns the deleted paths.
    """
    keep = max(1, int(keep))
    good: list[Path] = []
    for path in reversed(list_checkpoints(run_dir)):
        if verified is None or path not in verified:
            try:
                load_checkpoint(path, mmap=True)
            except CheckpointError as exc:
                logger.warning("not counting checkpoint %s: %s", path.name, exc)
                set_aside_damaged([(path, str(exc))])
                continue
            if verified is not None:
                verified.add(path)
        good.append(path)
    deleted = good[keep:]
    for path in deleted:
        path.unlink(missing_ok=True)
        if verified is not None:
            verified.discard(path)
    return deleted


def resolve(path: PathLike) -> Path:
    """Accept a checkpoint file or a run folder, meaning the checkpoint its validation chose
    (``checkpoints/best.pt``, see ``Config.keep_best_from``) when there is one, else its newest
    good checkpoint."""
    path = Path(path)
    if path.is_dir() and os.path.lexists(best_path(path)):
        if path.resolve() not in _ANNOUNCED:  # checked and named once per folder
            load_best(path)
            logger.info("%s: using %s, the checkpoint chosen by validation (keep_best_from)",
                        path, best_path(path))
            _ANNOUNCED.add(path.resolve())
        return best_path(path)
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
                step: int = 0, data: dict[str, Any] | None = None,
                validation: dict[str, float] | None = None) -> Path:
    """Save networks (any of G, D, E, SubE) with their config; no optimiser state.

    Args:
        data: What the run records about its dataset (:func:`data_record`), if known.
        validation: The validation scores that chose this checkpoint (``best.pt``), if any.
    """
    state = {"config": cfg.to_dict(), "step": step,
             "models": {k: unwrap(m).state_dict() for k, m in models.items() if m is not None}}
    if data is not None:
        state["data"] = data
    if validation is not None:
        state["validation"] = validation
    return save_checkpoint(path, state)


def load_models(path: PathLike, device: str | torch.device = "cpu",
                ) -> tuple[Config, Networks]:
    """Rebuild the networks of a kit checkpoint (file or run folder) or of a kit weights file
    (safetensors, written by ``hagan export`` / ``hagan import-official``; see
    :mod:`hagan.weights`) in eval mode. The format is recognised from the file's content.

    Returns:
        ``(config, {"G": Generator, ...})`` holding the networks the file has.

    Raises:
        CheckpointError: the file is missing, damaged, unsafe, or its weights do not fit its
            config (one line each).
    """
    from .weights import looks_like_safetensors, read_weights

    source = resolve(path)
    if looks_like_safetensors(source):
        cfg, states, _ = read_weights(source)
    else:
        state = load_checkpoint(source)
        cfg, states = from_dict(state["config"]), state["models"]
    return cfg, networks_from_states(cfg, states, source, device)


def networks_from_states(cfg: Config, states: dict[str, Any], where: PathLike,
                         device: str | torch.device = "cpu") -> Networks:
    """Networks of ``cfg`` with the state dicts ``states`` ({"G": ..., ...}) loaded strictly,
    on ``device`` in eval mode.

    Raises:
        CheckpointError: an unknown network name, or weights that do not fit (names ``where``).
    """
    nets = build_models(cfg)
    out = Networks()
    for name, sd in states.items():
        if name not in nets:
            raise CheckpointError(f"{where}: unknown network {name!r} (expected "
                                  f"{', '.join(nets)})")
        net = nets[name]
        load_weights(net, sd, name, where, cfg)
        out[name] = net.to(device).eval()
    return out


def load_weights(net: nn.Module, sd: dict[str, Any], name: str, where: PathLike,
                 cfg: Config) -> None:
    """``net.load_state_dict(sd)`` with one line naming missing, unexpected or misshapen keys.

    Raises:
        CheckpointError: the weights do not fit ``net`` (the model of ``cfg``); names ``where``.
    """
    own = net.state_dict()
    missing = [k for k in own if k not in sd]
    extra = [k for k in sd if k not in own]
    shapes = [k for k in own if k in sd and hasattr(sd[k], "shape")
              and tuple(sd[k].shape) != tuple(own[k].shape)]

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({few(missing)})")
    if extra:
        problems.append(f"{len(extra)} unexpected ({few(extra)})")
    if shapes:
        problems.append(f"{len(shapes)} of another shape ({few(shapes)})")
    if problems:
        raise CheckpointError(f"{where}: the {name} weights do not fit a {cfg.size}^3 model "
                              f"(its config): {'; '.join(problems)} tensors")
    try:
        net.load_state_dict(sd)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{where}: the {name} weights do not load "
                              f"({str(exc).splitlines()[0]})") from None


# ---------------------------------------------------------------------------------------------
# The run's data split (which volumes it trained on, which it kept out)
# ---------------------------------------------------------------------------------------------
SPLIT_FILE = "split.json"


def run_folder(path: PathLike) -> Path | None:
    """The run folder of a run folder or of a checkpoint inside ``RUN/checkpoints/``; None for a
    file elsewhere (e.g. an exported or imported weights file)."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.parent.name == CHECKPOINT_DIR:
        return path.parent.parent
    return None


def write_split(run_dir: PathLike, split: DataSplit) -> Path:
    """Record the run's data split as ``RUN/split.json`` (atomically)."""
    return write_json(Path(run_dir) / SPLIT_FILE, split.to_dict())


def read_split(run_dir: PathLike) -> DataSplit | None:
    """The data split a run recorded, or None when it recorded none (runs made before the split
    existed, runs given their dataset directly).

    Raises:
        CheckpointError: ``split.json`` exists but cannot be read or is not a valid split.
    """
    path = Path(run_dir) / SPLIT_FILE
    if not path.is_file():
        return None
    try:
        return DataSplit.from_dict(read_json(path), where=str(path))
    except (OSError, ValueError) as exc:  # DataError is a ValueError
        raise CheckpointError(f"{path} cannot be used: {exc}") from None


def training_split(run_dir: PathLike, dataset: PreparedDataset, fraction: float,
                   resumed: bool) -> DataSplit:
    """The split a run trains with: on resume, the one it recorded (a run that recorded none was
    made before splits existed and trained on every volume, so it goes on doing so); for a new
    run, a fresh one of ``dataset`` with ``fraction`` held out (:func:`hagan.data.make_split`).
    The trainer writes it with :func:`write_split` when training starts.

    Raises:
        CheckpointError: the recorded ``split.json`` is damaged.
        DataError: see :func:`hagan.data.make_split`.
    """
    if resumed:
        recorded = read_split(run_dir)
        if recorded is not None:
            return recorded
        logger.warning("%s recorded no data split (made by an earlier hagan-kit): it goes on "
                       "training on every volume of %s, none held out", run_dir, dataset.root)
        return DataSplit(str(dataset.root.resolve()), 0.0, SPLIT_SEED,
                         tuple(sorted(r.file for r in dataset.records)), ())
    return make_split(dataset, fraction)



# --- the training log's reader and keys (viz, notebooks and tests read the log through these) ---
# Loss keys of every record (besides "step", "ms_per_step" and "time"): Trainer.step's losses.
LOSS_KEYS = ("loss_d", "loss_d_real", "loss_d_fake", "loss_g", "loss_e", "loss_sube")


def read_metrics(run_dir: PathLike) -> list[dict[str, float]]:
    """The JSON-lines training log of a run as a list of dicts. A torn last line (a crash or
    a full disk mid-write) is left out with a warning.

    Raises:
        RunError: another line is damaged (names the file and line).
    """
    path = Path(run_dir) / METRICS_FILE
    records, torn = load_metrics_log(path)
    if torn:
        logger.warning("left out a torn last line of %s (a crash or a full disk)", path)
    return records
