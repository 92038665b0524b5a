"""Plumbing of the teaching notebooks: settings per scale, the shared work dir, figures saved as
they are shown, inputs made on demand, and running a command from a notebook. (Lesson helpers:
:mod:`hagan.lessons`; the naive-vs-hierarchical cost measurements: :mod:`hagan.scaling`.)

The notebooks in ``notebooks/`` chain through one work dir (data -> checkpoint -> samples ->
metrics). Each can also run alone: :func:`ensure_demo` and :func:`ensure_run` make a missing input
(small) and say so. :func:`settings` turns the papermill parameters into concrete numbers for one
of three scales, so that ``-p smoke True`` runs in seconds on a CPU while the defaults suit a
Colab GPU and a Binder CPU.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import PRESETS, PathLike, preset
from .errors import ConfigError, explain
from .runtime import resolve_device

logger = logging.getLogger(__name__)

WORK_DIR_ENV = "HAGAN_WORK_DIR"  # the work dir shared by all notebooks (MONAI_DATA_DIRECTORY style)
# never the current folder: notebooks must not write next to themselves
DEFAULT_WORK_DIR = "~/hagan-work"
FIGURE_DPI = 110  # PNG copies of notebook figures: sharp enough to read, small enough to commit
SCALES = ("smoke", "cpu", "gpu")


@dataclass
class Settings:
    """Concrete sizes of one notebook run. Values of 0 / "" in the parameters cell mean "the
    scale's default"; anything else overrides it.

    Attributes:
        scale: ``smoke`` (CI: seconds on a CPU), ``cpu`` (Binder, ``make demo``) or ``gpu`` (Colab).
        preset: Model preset; its cube size is also the demo cohort's size.
        n_subjects: Volumes in the demo cohort.
        iterations: Training iterations of the unconditional model (notebook 03).
        cond_iterations: Training iterations of the conditional model (notebook 04).
        n_samples: Generated volumes per figure or metric.
        bench_sizes: Cube sizes of the memory/time comparison (notebook 02).
        bench_width: Channel multiplier of the networks measured in notebook 02.
        device: The resolved torch device.
        seed: Seed of everything.
    """

    scale: str
    preset: str
    n_subjects: int
    iterations: int
    cond_iterations: int
    n_samples: int
    bench_sizes: list[int]
    bench_width: float
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0

    @property
    def size(self) -> int:
        """Cube edge S of the preset."""
        return preset(self.preset).size

    def describe(self) -> str:
        return (f"scale {self.scale}: preset {self.preset} ({self.size}^3), {self.n_subjects} demo "
                f"subjects, {self.iterations} iterations ({self.cond_iterations} conditional), "
                f"{self.n_samples} samples, device {self.device}, seed {self.seed}")


# Teaching defaults per scale. gpu: a Colab T4 or better; cpu: 2 cores (Binder, make demo);
# smoke: the CI run of every notebook, seconds each.
SCALE_DEFAULTS: dict[str, dict[str, Any]] = {
    "smoke": dict(preset="tiny32", n_subjects=8, iterations=20, cond_iterations=10, n_samples=4,
                  bench_sizes=[32, 64], bench_width=0.125),
    # cpu: the demo32 recipe on the 64-volume cohort, the same model as `make demo`'s
    "cpu": dict(preset="demo32", n_subjects=64, iterations=PRESETS["demo32"]["iterations"],
                cond_iterations=1000, n_samples=8,
                bench_sizes=[32, 64, 128], bench_width=0.25),
    "gpu": dict(preset="small64", n_subjects=64, iterations=3000, cond_iterations=1500,
                n_samples=16, bench_sizes=[32, 64, 128, 256], bench_width=1.0),
}


def settings(smoke: bool = False, scale: str = "auto", device: str = "auto", seed: int = 0,
             verbose: bool = True, **overrides: Any) -> Settings:
    """The concrete settings of a notebook run.

    Args:
        smoke: CI mode; same as ``scale="smoke"``.
        scale: ``auto`` (gpu when CUDA is visible, else cpu), ``smoke``, ``cpu`` or ``gpu``.
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: Seed of everything.
        **overrides: Any field of :class:`Settings`; 0, "" and None keep the scale's default.

    Raises:
        ConfigError: an unknown scale or field.
    """
    dev = resolve_device(device)
    if smoke:
        scale = "smoke"
    if scale == "auto":
        scale = "gpu" if dev.type == "cuda" else "cpu"
    if scale not in SCALES:
        raise ConfigError(explain("scale", f"auto, {', '.join(SCALES)}", repr(scale),
                                  "Set the notebook parameter scale to one of these."))
    values = dict(SCALE_DEFAULTS[scale])
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise ConfigError(explain("notebook setting", f"one of {', '.join(values)}",
                                  ", ".join(map(repr, unknown))))
    values.update({k: v for k, v in overrides.items() if v not in (0, "", None, [])})
    s = Settings(scale=scale, device=dev, seed=seed, **values)
    if verbose:
        print(s.describe())
    return s


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def work_dir(path: PathLike | None = "") -> Path:
    """The shared work dir: ``path``, else ``$HAGAN_WORK_DIR``, else ``~/hagan-work``; created."""
    chosen = str(path or os.environ.get(WORK_DIR_ENV, "") or DEFAULT_WORK_DIR)
    folder = Path(chosen).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "figures").mkdir(exist_ok=True)
    return folder


def show(fig: Any, path: PathLike) -> Any:
    """Save ``fig`` as a PNG (for reports and reviews), close it, and return it for display.

    In a notebook, end a cell with ``teaching.show(viz.plot_...(...), figures / "name.png")``:
    the figure appears once and a copy lands in the work dir's ``figures/`` folder. The PNG is
    rendered once and the same bytes are shown (an ``IPython.display.Image``), and closing the
    figure stops the inline backend from drawing it a second time. Anything that is not a
    figure (e.g. an ipywidgets viewer) is returned unchanged.
    """
    if not hasattr(fig, "savefig"):
        return fig
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
    plt.close(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    try:
        from IPython.display import Image
    except ImportError:  # plain Python: the figure object is still useful
        return fig
    return Image(data=buffer.getvalue(), format="png")


# ---------------------------------------------------------------------------------------------
# Inputs made on demand
# ---------------------------------------------------------------------------------------------
def demo_path(work: PathLike, size: int, lesion: bool = False) -> Path:
    """Where the notebooks keep the demo cohort of one size (with lesions: a separate folder)."""
    return Path(work) / (f"demo{size}_lesion" if lesion else f"demo{size}")


def ensure_demo(work: PathLike, s: Settings, lesion_fraction: float = 0.0,
                made_by: str | None = "00_setup_and_data_tour") -> Path:
    """The demo cohort for settings ``s``: reused when present, else built now (and said so).

    ``made_by`` names the notebook that normally builds it (None: the calling one does).
    """
    from .demo import is_built, make_demo_dataset

    root = demo_path(work, s.size, lesion=lesion_fraction > 0)
    if is_built(root, s.n_subjects, s.size, s.seed, lesion_fraction):
        print(f"demo cohort: using {root} ({s.n_subjects} volumes of {s.size}^3)")
        return root
    origin = f" ({made_by} normally makes it)" if made_by else ""
    print(f"demo cohort: not in the work dir yet{origin}; building {s.n_subjects} volumes of "
          f"{s.size}^3 in {root} now")
    workers = 1 if s.n_subjects <= 8 else None  # a process pool costs more than it saves here
    return make_demo_dataset(root, n=s.n_subjects, size=s.size, seed=s.seed,
                             lesion_fraction=lesion_fraction, progress=False, workers=workers,
                             force=True)


def run_path(work: PathLike, preset_name: str, conditional: bool = False) -> Path:
    """Run folder of a preset in the work dir (the conditional model gets its own)."""
    return Path(work) / (f"run_{preset_name}_conditional" if conditional else f"run_{preset_name}")


def ensure_run(work: PathLike, s: Settings, data: PathLike, conditional: bool = False,
               made_by: str | None = "03_training") -> Path:
    """A trained run folder: reused when it holds a checkpoint, else trained now (and said so).

    The unconditional run trains ``s.iterations`` iterations, the conditional one
    ``s.cond_iterations`` with ``num_classes=2`` on a lesion cohort.
    """
    from .checkpoint import best_path, list_checkpoints
    from .train import train

    run = run_path(work, s.preset, conditional)
    if list_checkpoints(run):
        # what load_models(run) will load: best.pt when the run chose one (keep_best_from)
        which = ("checkpoints/best.pt" if best_path(run).exists()
                 else "the newest good checkpoint")
        print(f"model: using {which} in {run}")
        return run
    iterations = s.cond_iterations if conditional else s.iterations
    origin = f" ({made_by} normally makes it)" if made_by else ""
    print(f"model: no checkpoint in {run} yet{origin}; training {s.preset} for {iterations} "
          "iterations now")
    cfg = preset(s.preset, data=str(data), iterations=iterations, seed=s.seed,
                 device=s.device.type, num_classes=2 if conditional else 0)
    if not cfg.keep_best_from:  # one checkpoint at the end; else every one is a candidate
        cfg = cfg.replace(checkpoint_every=max(iterations, 1))
    train(cfg, run)
    return run


# ---------------------------------------------------------------------------------------------
# Notebook 07: running a command (torchrun) from a notebook
# ---------------------------------------------------------------------------------------------
def run_command(args: list[str], tail: int = 6, timeout: float = 600) -> str:
    """Run a command, print it and the last ``tail`` lines of its output; return all output.

    Raises:
        RuntimeError: the command failed; the message holds the command and its output.
    """
    import shlex
    import subprocess

    print("$ " + " ".join(shlex.quote(str(a)) for a in args))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "PYTHONIOENCODING": "utf-8"}  # a Python child writes what is decoded below
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          encoding="utf-8", errors="replace", timeout=timeout, env=env)
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise RuntimeError(f"command failed with exit code {proc.returncode}: "
                           f"{' '.join(map(str, args))}\n{output}")
    lines = [ln for ln in output.splitlines() if ln.strip() and "\r" not in ln]
    for line in lines[-tail:]:
        print("  " + line)
    return output
