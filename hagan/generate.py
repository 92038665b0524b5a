"""Generation: full-resolution sampling, conditional sampling, reconstruction through the encoders,
latent interpolation, and the ``hagan generate`` command that writes samples as NIfTI (the
NIfTI I/O itself is in :mod:`hagan.data`: ``save_nifti``, ``load_nifti``).

Volumes are ``(B, 1, S, S, S)`` tensors in [-1, 1] with axis 2 = axial (inferior -> superior),
axis 3 = posterior -> anterior, axis 4 = left -> right (see ``hagan.data``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .cliargs import non_negative_int, positive_float, positive_int
from .config import PRECISIONS, Config, PathLike
from .data import save_nifti
from .errors import ConfigError, DataError, RunError, explain
from .fileio import atomic_target, check_output_outside_dataset, lock_folder
from .models import Generator
from .runtime import autocast_context, resolve_device

logger = logging.getLogger(__name__)


def sample_name(index: int) -> str:
    """File name of the ``index``-th generated volume, the same for ``hagan generate``, the
    demo job and the notebooks: ``sample_0000.nii.gz``, ``sample_0001.nii.gz``, ..."""
    return f"sample_{index:04d}.nii.gz"


def _labels_tensor(labels: int | Sequence[int] | torch.Tensor | None, n: int
                   ) -> torch.Tensor | None:
    if labels is None:
        return None
    t = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if t.numel() == 1:
        t = t.expand(n).clone()
    if t.numel() != n:
        raise ValueError(f"expected 1 or {n} labels, got {t.numel()}")
    return t


@torch.inference_mode()
def sample(G: Generator, n: int, batch_size: int = 2, labels=None, seed: int | None = 0,
           device: str | torch.device | None = None, precision: str = "fp32",
           progress: bool = False, z: torch.Tensor | None = None,
           chunk: int | None = 16) -> torch.Tensor:
    """Draw ``n`` full-resolution volumes.

    Args:
        G: A :class:`hagan.models.Generator`.
        n: Number of volumes.
        batch_size: Volumes per forward pass (at 256^3, fp32, about 0.4 GB each with chunking
            and 5.7 GB without).
        labels: Class index (or one per volume) for a conditional generator.
        seed: Seed of the latent draws (``None``: the global RNG).
        device: Where to run (default: where ``G`` lives).
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast.
        progress: Show a tqdm bar.
        z: Latent vectors (n, latent_dim) to use instead of random draws.
        chunk: Run G^H this many feature slices at a time (the same volume, exact GroupNorm
            statistics, a fraction of the memory); ``None`` runs it in one pass like the paper.

    Returns:
        ``(n, 1, S, S, S)`` float32 tensor on the CPU, values in [-1, 1].
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, not {n}")
    device = torch.device(device) if device is not None else next(G.parameters()).device
    G = G.to(device).eval()
    y = _labels_tensor(labels, n)
    if z is None:
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        z = torch.randn(n, G.latent_dim, generator=gen)
    out = []
    from tqdm import tqdm  # the text bar: a notebook widget bar is saved at 0 % by papermill

    for i in tqdm(range(0, n, batch_size), desc="generate", disable=not progress, leave=False):
        zb = z[i:i + batch_size].to(device)
        yb = y[i:i + batch_size].to(device) if y is not None else None
        with autocast_context(device.type, precision):
            vol = G.generate(zb, labels=yb, chunk=chunk)
        out.append(vol.float().cpu())
    return torch.cat(out)


@torch.inference_mode()
def encode(E: nn.Module, SubE: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Volume ``(B, 1, S, S, S)`` -> latent ``z = E^G(E^H(x))`` of shape (B, latent_dim).

    E^H is fully convolutional and runs on the whole volume at once, as in the authors'
    reconstruction notebook.
    """
    device = next(E.parameters()).device
    return SubE(E(x.to(device)))


@torch.inference_mode()
def reconstruct(G: Generator, E: nn.Module, SubE: nn.Module, x: torch.Tensor,
                labels=None) -> torch.Tensor:
    """Reconstruct real volumes through the encoders: x -> z -> G(z), both (B, 1, S, S, S)."""
    z = encode(E, SubE, x)
    return G.generate(z, labels=_labels_tensor(labels, z.shape[0]), chunk=16).float().cpu()


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between latent vectors (White, 2016), suited to Gaussian z."""
    a, b = z0 / z0.norm(), z1 / z1.norm()
    omega = torch.arccos((a * b).sum().clamp(-1, 1))
    if omega.abs() < 1e-6:
        return (1 - t) * z0 + t * z1
    return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)


@torch.inference_mode()
def interpolate(G: Generator, z0: torch.Tensor, z1: torch.Tensor, steps: int = 5,
                labels=None, spherical: bool = True) -> torch.Tensor:
    """Volumes along the path from ``z0`` to ``z1`` (each (latent_dim,)): (steps, 1, S, S, S)."""
    if steps < 2:
        raise ValueError(f"steps must be >= 2, not {steps}")
    ts = torch.linspace(0, 1, steps)
    zs = torch.stack([slerp(z0, z1, float(t)) if spherical else (1 - t) * z0 + t * z1
                      for t in ts])
    return sample(G, steps, batch_size=1, labels=labels, z=zs)


# --- CLI: hagan generate CKPT --n N --out DIR [--label L] -------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint file or run folder (its best.pt, else its newest "
                   "checkpoint)")
    p.add_argument("--n", type=positive_int, default=4, help="number of volumes (default 4)")
    p.add_argument("--out", required=True, help="output folder for sample_XXXX.nii.gz")
    p.add_argument("--label", type=int, default=None,
                   help="class index for a conditional model (required there): the position "
                   "of the label in the run's dataset.json label_names, not the label itself "
                   "(a wrong value prints the label -> index map)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the latent draws (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="volumes per forward pass")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="autocast precision (default fp32)")
    p.add_argument("--spacing", type=positive_float, nargs=3, metavar=("Z", "Y", "X"), default=None,
                   help="voxel size in mm (default: the training data's, from its dataset.json; "
                   "required when it cannot be found)")
    p.add_argument("--force", action="store_true",
                   help="write every sample again; the samples already in --out (and their "
                   "generate.json) are first moved to --out/previous-<time>/ (default: complete "
                   "an interrupted run of the same request, skipping the files it finished)")
    p.add_argument("--no-progress", action="store_true",
                   help="hide the progress bar (hidden anyway when stderr is not a terminal)")


def _label_map_hint(source) -> str:
    """``" (label -> class index: a=0, ...)"`` when the run knows its label names, else ""."""
    from .checkpoint import label_map_text, label_names

    text = label_map_text(label_names(source))
    return f" ({text})" if text else ""


REQUEST_FILE = "generate.json"  # in --out: what the samples there were generated from


def main(args: argparse.Namespace) -> int:
    """``hagan generate``: volumes are generated and written one batch at a time (memory does
    not grow with --n), each file atomically (a temporary name, then renamed), under the lock
    of --out. Re-running an interrupted command completes it: the files it finished are kept."""
    from .checkpoint import load_models, resolve

    device = resolve_device(args.device)
    source = resolve(args.checkpoint)  # a run folder's best.pt or newest checkpoint, once
    cfg, nets = load_models(source, device=device)
    if cfg.num_classes and args.label is None:
        raise ConfigError(explain("--label", f"a class index 0..{cfg.num_classes - 1} (this "
                                  f"model is conditional, {cfg.num_classes} classes)", "none",
                                  f"Pass --label 0..{cfg.num_classes - 1}."
                                  + _label_map_hint(source)))
    if not cfg.num_classes and args.label is not None:
        raise ConfigError(explain("--label", "no label (this model is unconditional)",
                                  f"--label {args.label}", "Leave --label out."))
    if cfg.num_classes and not 0 <= args.label < cfg.num_classes:
        raise ConfigError(explain("--label", f"a class index 0..{cfg.num_classes - 1}",
                                  f"--label {args.label} (out of range)",
                                  f"Pass --label 0..{cfg.num_classes - 1}."
                                  + _label_map_hint(source)))
    if args.n < 1 or args.batch_size < 1:
        raise ConfigError(explain("--n and --batch-size", "values >= 1",
                                  f"{args.n} and {args.batch_size}"))
    settings = _recorded_settings(source, args.spacing)
    if settings is None:
        settings = output_settings(source, cfg, args.spacing)
    out = Path(args.out)
    check_output_outside_dataset(out, "--out", inputs=(args.checkpoint, source))
    with lock_folder(out, "hagan generate"):
        todo = _samples_to_write(out, _request(args, cfg, source), args.n, cfg.size, args.force)
        if not todo:
            print(f"all {args.n} volume(s) already exist in {out}; nothing to do (--force writes "
                  "them again)")
            return 0
        # the same latent draws as sample(G, n, seed=seed): sample i is the same volume
        # whichever files are left to write
        z = torch.randn(args.n, nets["G"].latent_dim,
                        generator=torch.Generator().manual_seed(args.seed))
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="generate", unit="vol",
                   disable=args.no_progress or not sys.stderr.isatty())
        try:
            for start in range(0, len(todo), args.batch_size):
                index = todo[start:start + args.batch_size]
                vols = sample(nets["G"], len(index), batch_size=len(index), labels=args.label,
                              z=z[index], device=device, precision=args.precision)
                for i, vol in zip(index, vols):
                    with atomic_target(out / sample_name(i)) as tmp:
                        save_nifti(vol, tmp, **settings)
                    bar.update(1)
                del vols
        finally:
            bar.close()
    done = args.n - len(todo)
    print(f"wrote {len(todo)} volume(s) of {cfg.size}^3 to {out}"
          + (f" ({done} already there from an interrupted run)" if done else ""))
    return 0


def _request(args: argparse.Namespace, cfg: Config, source: Path) -> dict[str, Any]:
    """What decides the samples' content: a re-run completes only an identical request."""
    source = source.resolve()
    stat = source.stat()
    return {"checkpoint": str(source), "checkpoint_bytes": stat.st_size,
            "checkpoint_mtime_ns": stat.st_mtime_ns, "n": args.n, "seed": args.seed,
            "label": args.label, "precision": args.precision, "size": cfg.size}


def _samples_to_write(out: Path, request: dict[str, Any], n: int, size: int,
                      force: bool) -> list[int]:
    """Indices of the samples still to write into ``out`` (all with ``force``), after recording
    ``request`` there.

    Raises:
        RunError: ``out`` holds samples from another request (or from an unknown one).
    """
    from .fileio import read_json, write_json

    names = [out / sample_name(i) for i in range(n)]
    existing = sorted(out.glob(SAMPLE_GLOB))  # all of them: also those past this request's n
    record = out / REQUEST_FILE
    if force and existing:
        moved = _move_aside(out, [*existing, record])
        print(f"moved the {len(existing)} earlier sample(s) in {out} to {moved}")
    elif existing:
        try:
            previous = read_json(record) if record.is_file() else None
        except (OSError, ValueError):
            previous = None
        if previous != request:
            raise RunError(explain("--out", "a folder without samples, or the samples of this "
                                   "same command (to complete them)",
                                   f"{existing[0]} (already exists, from "
                                   f"{'another' if previous else 'an unknown'} request: see "
                                   f"{record.name})",
                                   "Choose another --out, or pass --force to move them aside and "
                                   "write new ones."))
    write_json(record, request)
    if force:
        return list(range(n))
    return [i for i, p in enumerate(names) if not _complete(p, size)]


SAMPLE_GLOB = "sample_*.nii.gz"
PREVIOUS_PREFIX = "previous-"  # hagan generate --force moves earlier samples to OUT/previous-<time>


def _move_aside(out: Path, files: list[Path]) -> Path:
    """Move ``files`` (an earlier request's samples and record) into a new folder
    ``out/previous-<YYYYmmdd-HHMMSS>`` (``-2``, ... when it exists): ``--force`` never mixes
    samples of two requests and never deletes any. Returns the folder."""
    import os
    import time

    from .fileio import named_os_error

    stamp = time.strftime("%Y%m%d-%H%M%S")
    n = 1
    while True:
        folder = out / (f"{PREVIOUS_PREFIX}{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            folder.mkdir()
            break
        except FileExistsError:
            n += 1
        except OSError as exc:
            raise named_os_error(exc, folder) from None
    for path in files:
        if path.exists():
            try:
                os.rename(path, folder / path.name)
            except OSError as exc:
                raise named_os_error(exc, path) from None
    return folder


def _complete(path: Path, size: int) -> bool:
    """True when ``path`` holds a whole readable volume of ``size``^3 (a file cut short by an
    older version's crash is written again)."""
    if not path.is_file():
        return False
    try:
        import nibabel as nib
        import numpy as np
        from nibabel.spatialimages import SpatialImage

        img = nib.load(str(path))  # a NIfTI file loads as a SpatialImage (shape, dataobj)
        return (isinstance(img, SpatialImage) and tuple(img.shape) == (size,) * 3
                and np.asanyarray(img.dataobj).size == size**3)
    except Exception:  # noqa: BLE001 - any unreadable file is simply written again
        return False


def _recorded_settings(checkpoint: PathLike, spacing: Sequence[float] | None
                       ) -> dict[str, Any] | None:
    """save_nifti settings from the data geometry a kit checkpoint file recorded (its absolute
    data path, spacing, modality and CT window: :func:`hagan.checkpoint.run_data_geometry`), or
    None when it recorded none (older checkpoints, weights files) or ``spacing`` overrides it.
    Never looks at the current folder."""
    from .checkpoint import load_checkpoint, run_data_geometry
    from .data import nifti_settings

    if spacing is not None:
        return None
    source = Path(checkpoint)
    with open(source, "rb") as fh:
        if fh.read(2) != b"PK":  # not a torch.save checkpoint (e.g. safetensors)
            return None
    geometry = run_data_geometry(load_checkpoint(source, mmap=True))
    if not geometry["spacing_mm"]:
        return None
    return nifti_settings(geometry, where=f"the data geometry recorded in {source}")


def output_settings(checkpoint: PathLike, cfg: Config,
                    spacing: Sequence[float] | None = None) -> dict[str, Any]:
    """:func:`hagan.data.save_nifti` settings for a model's samples: the voxel size and, for CT,
    the HU window of the dataset the model was trained on, read from its ``dataset.json``.

    The geometry stored in a weights file (``hagan export``), else the dataset the run recorded
    (``RUN/split.json``, an absolute path), else ``cfg.data`` when absolute. ``spacing``
    (z, y, x in mm) overrides the recorded voxel size and is required when none can be found
    (e.g. a weights file from ``hagan import-official``): the voxel size is never assumed.

    Raises:
        DataError: the voxel size is unknown and ``spacing`` was not given, or the dataset's
            ``dataset.json`` is invalid.
    """
    from .checkpoint import read_split, resolve, run_folder
    from .data import nifti_settings, read_info
    from .weights import looks_like_safetensors, read_data_geometry

    source = resolve(checkpoint)
    stored = read_data_geometry(source) if looks_like_safetensors(source) else None
    run = run_folder(checkpoint)
    split = read_split(run) if run is not None else None
    roots = [r for r in (split.data if split else None, cfg.data or None)
             if r and Path(r).is_absolute()]  # a relative path would depend on the cwd
    root = next((Path(r) for r in roots if (Path(r) / "dataset.json").is_file()), None)
    if stored is not None:  # a weights file that carries its training data's geometry
        info, where = stored, f"the data geometry stored in {source}"
    else:
        info = read_info(root) if root is not None else {}
        where = f"{root / 'dataset.json'}" if root is not None else ""
    if spacing is not None:
        info = {**info, "spacing_mm": list(spacing)}
        where = "--spacing"
    if not info:
        looked = ", ".join(str(r) for r in roots) or "no dataset recorded"
        raise DataError(explain("voxel size of the samples", "the training data's dataset.json "
                                "(spacing_mm)", f"none ({looked})",
                                "Pass --spacing Z Y X (voxel size in mm)."))
    if root is None and stored is None:
        logger.info("no dataset.json found: values are written as the model's [-1, 1]")
    return nifti_settings(info, where=where)
