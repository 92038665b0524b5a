"""Helpers for the teaching notebooks: settings per scale, the shared work dir, inputs made on
demand, and the live measurement of a naive full-resolution step versus the hierarchical step.

The notebooks in ``notebooks/`` chain through one work dir (data -> checkpoint -> samples ->
metrics). Each can also run alone: :func:`ensure_demo` and :func:`ensure_run` make a missing input
(small) and say so. :func:`settings` turns the papermill parameters into concrete numbers for one
of three scales, so that ``-p smoke True`` runs in seconds on a CPU while the defaults suit a
Colab GPU and a Binder CPU.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import PathLike, preset
from .runtime import print_env, resolve_device

logger = logging.getLogger(__name__)

WORK_DIR_ENV = "HAGAN_WORK_DIR"  # the work dir shared by all notebooks (MONAI_DATA_DIRECTORY style)
# never the current folder: notebooks must not write next to themselves
DEFAULT_WORK_DIR = "~/hagan-work"
FIGURE_DPI = 110  # PNG copies of notebook figures: sharp enough to read, small enough to commit
SCALES = ("smoke", "cpu", "gpu")
SLABS_PER_VOLUME = 8  # a slab is S/8 deep (config.SLAB_FRACTION), so 8 slabs tile the volume
MIB = 2**20
PAPER_LATENT_DIM = 1024  # length of z in the published networks


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
    "cpu": dict(preset="tiny32", n_subjects=32, iterations=200, cond_iterations=100, n_samples=8,
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
        ValueError: an unknown scale or field.
    """
    dev = resolve_device(device)
    if smoke:
        scale = "smoke"
    if scale == "auto":
        scale = "gpu" if dev.type == "cuda" else "cpu"
    if scale not in SCALES:
        raise ValueError(f"scale must be auto, {', '.join(SCALES)}; not {scale!r}")
    values = dict(SCALE_DEFAULTS[scale])
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(values)}")
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


def setup(work: PathLike | None = "", seed: int = 0) -> Path:
    """Print versions and device, seed everything and return the work dir (created)."""
    print_env()
    seed_everything(seed)
    folder = work_dir(work)
    print(f"work dir: {folder}")
    return folder


def show(fig, path: PathLike):
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


def _matches(root: Path, n: int, size: int, seed: int, lesion_fraction: float) -> bool:
    try:
        recipe = json.loads((root / "dataset.json").read_text()).get("recipe", {})
    except (OSError, ValueError):
        return False
    return (recipe.get("n"), recipe.get("size"), recipe.get("seed"),
            recipe.get("lesion_fraction")) == (n, size, seed, lesion_fraction)


def ensure_demo(work: PathLike, s: Settings, lesion_fraction: float = 0.0,
                made_by: str | None = "00_setup_and_data_tour") -> Path:
    """The demo cohort for settings ``s``: reused when present, else built now (and said so).

    ``made_by`` names the notebook that normally builds it (None: the calling one does).
    """
    from .demo import make_demo_dataset

    root = demo_path(work, s.size, lesion=lesion_fraction > 0)
    if _matches(root, s.n_subjects, s.size, s.seed, lesion_fraction):
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
    from .checkpoint import list_checkpoints
    from .train import train

    run = run_path(work, s.preset, conditional)
    if list_checkpoints(run):
        print(f"model: using the checkpoint in {run}")
        return run
    iterations = s.cond_iterations if conditional else s.iterations
    origin = f" ({made_by} normally makes it)" if made_by else ""
    print(f"model: no checkpoint in {run} yet{origin}; training {s.preset} for {iterations} "
          "iterations now")
    cfg = preset(s.preset, data=str(data), iterations=iterations, seed=s.seed,
                 device=s.device.type, num_classes=2 if conditional else 0,
                 checkpoint_every=max(iterations, 1))
    train(cfg, run)
    return run


# ---------------------------------------------------------------------------------------------
# Notebook 02: shapes, slab sampling, and the cost of a naive vs a hierarchical step
# ---------------------------------------------------------------------------------------------
def trace_shapes(cfg, batch: int = 1, slab_start: int = 0) -> list[tuple[str, tuple[int, ...]]]:
    """(stage, shape) of every tensor of one training pass and one inference pass of ``cfg``."""
    from .models import build_models

    with torch.device("meta"):  # shapes only: no memory, no compute, any size (even 256^3)
        nets = build_models(cfg)
    G, D = nets["G"].eval(), nets["D"].eval()
    with torch.no_grad():
        z = torch.zeros(batch, cfg.latent_dim, device="meta")
        features = G.features(z)
        slab, low = G(z, slab_start)
        logit, _ = D(slab, low, slab_start)
        start = slab_start // 4
        volume = G.generate(z)
    d = cfg.feature_slab_depth
    return [
        ("z (latent)", tuple(z.shape)),
        ("G^A trunk: features", tuple(features.shape)),
        ("G^L low-res head: whole image at 1/4", tuple(low.shape)),
        (f"feature slab [{start}:{start + d}] (depth S/32)", (batch, features.shape[1], d,
                                                            *features.shape[3:])),
        ("G^H high-res head: image slab (depth S/8)", tuple(slab.shape)),
        ("D = (D^H + D^L)/2: logit", tuple(logit.shape)),
        ("inference: G^H on all features = full volume", tuple(volume.shape)),
    ]


def draw_slab_starts(cfg, iterations: int, seed: int = 0) -> np.ndarray:
    """Slab starts c ~ U{0, ..., 7S/8} for ``iterations`` iterations, drawn like the trainer."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.max_slab_start + 1, (iterations,), generator=gen).numpy()


def slab_coverage(starts: np.ndarray, size: int, depth: int) -> np.ndarray:
    """How many times each axial slice 0..S-1 fell inside a slab, (S,) int."""
    cover = np.zeros(size, dtype=int)
    for c in starts:
        cover[int(c):int(c) + depth] += 1
    return cover


def parameter_table(presets: tuple[str, ...] = ("tiny32", "small64", "paper128", "paper256")
                    ) -> list[tuple[str, int, dict[str, float]]]:
    """(preset, size, {network: millions of parameters}) for each preset (counted on the meta
    device, so even the paper's networks cost nothing to count)."""
    from .models import build_models, count_parameters

    rows = []
    for name in presets:
        cfg = preset(name)
        with torch.device("meta"):
            nets = build_models(cfg)
        rows.append((name, cfg.size, {k: count_parameters(v) / 1e6 for k, v in nets.items()}))
    return rows


def slab_cost(size: int, feature_depth: int, width: float = 0.125, batch: int = 1,
              device: str | torch.device = "cpu") -> dict[str, Any]:
    """Activation memory and time of the high-res head G^H alone on a feature slab.

    A feature slab ``feature_depth`` deep becomes an image slab 4x deeper, so
    ``feature_depth = S/32`` is HA-GAN's S/8 slab and ``feature_depth = S/4`` the whole volume.
    Forward and backward of ``G^H`` with an L1 loss; returns ``image_depth``, ``saved_mib``
    and ``seconds``.
    """
    from .config import Config
    from .models import HighResHead

    cfg = Config(size=size, width=width, latent_dim=8)
    dev = torch.device(device)
    head = HighResHead(cfg).to(dev)
    features = torch.randn(batch, cfg.channels(64), feature_depth, size // 4, size // 4,
                           device=dev, requires_grad=True)
    meter = _SavedTensorMeter(list(head.parameters()))
    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t):
        slab = head(features)  # (B, 1, 4 * feature_depth, S, S)
    slab.abs().mean().backward()
    return {"size": size, "image_depth": int(slab.shape[2]), "saved_mib": meter.nbytes / MIB,
            "seconds": time.perf_counter() - t0}


class _SavedTensorMeter:
    """Counts the bytes autograd saves for backward (unique storages, parameters excluded)."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.skip = {p.untyped_storage().data_ptr() for p in params}
        self.seen: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.skip:
            self.seen[ptr] = storage.nbytes()
        return t

    @property
    def nbytes(self) -> int:
        return sum(self.seen.values())


def _naive_loss(G: nn.Module, D: nn.Module, z: torch.Tensor, cfg) -> torch.Tensor:
    """Generator loss when the whole full-resolution volume is generated and judged."""
    B, S, d = z.shape[0], cfg.size, cfg.slab_depth
    volume = G.generate(z)  # (B, 1, S, S, S): every voxel at full resolution, with gradients
    slabs = volume.reshape(B, 1, SLABS_PER_VOLUME, d, S, S).transpose(1, 2)  # (B, 8, 1, d, S, S)
    slabs = slabs.reshape(B * SLABS_PER_VOLUME, 1, d, S, S)  # D^H judges all 8 slabs at once
    starts = torch.arange(SLABS_PER_VOLUME, dtype=torch.float32) * d
    position = (starts / cfg.max_slab_start).repeat(B).to(z.device)  # (8B,)
    logit_h, _ = D.high_res(slabs, position)  # (8B, 1)
    logit_l, _ = D.low_res(volume[:, :, ::4, ::4, ::4])  # (B, 1)
    logit = (logit_h.view(B, SLABS_PER_VOLUME).mean(1, keepdim=True) + logit_l) / 2
    return F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))


def _hierarchical_loss(G: nn.Module, D: nn.Module, z: torch.Tensor, cfg) -> torch.Tensor:
    """Generator loss of HA-GAN: the low-res whole image plus one full-resolution slab."""
    c = cfg.max_slab_start // 2
    slab, low = G(z, c)  # (B, 1, S/8, S, S), (B, 1, S/4, S/4, S/4)
    logit, _ = D(slab, low, c)
    return F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))


def step_cost(size: int, mode: str, width: float = 0.125, latent_dim: int | None = None,
              batch: int = 1, device: str | torch.device = "cpu", repeats: int = 1
              ) -> dict[str, Any]:
    """Memory and time of one generator update (forward through G and D, backward) at ``size``.

    Args:
        size: Cube edge S.
        mode: ``naive`` (G makes the whole S^3 volume, D judges all of it) or ``hierarchical``
            (G makes the (S/4)^3 image and one S/8-deep slab, as HA-GAN trains).
        width: Network width multiplier (1.0: the paper's networks).
        latent_dim: Latent length; default ``1024 * width`` (the paper's 1024 at width 1).
        batch: Volumes per step.
        device: Where to run.
        repeats: Timed repetitions (the median is reported; the first call also warms up).

    Returns:
        ``size``, ``mode``, ``saved_mib`` (bytes autograd keeps for backward: activation memory,
        the part that grows with S^3), ``peak_mib`` (CUDA only: peak allocated during the step
        above what was allocated before it; None on CPU) and ``seconds``.
    """
    from .config import Config
    from .models import Discriminator, Generator

    if mode not in ("naive", "hierarchical"):
        raise ValueError(f"mode must be 'naive' or 'hierarchical', not {mode!r}")
    dev = torch.device(device)
    latent_dim = latent_dim or max(8, int(PAPER_LATENT_DIM * width))
    cfg = Config(size=size, width=width, latent_dim=latent_dim)
    torch.manual_seed(0)
    G, D = Generator(cfg).to(dev), Discriminator(cfg).to(dev)
    z = torch.randn(batch, latent_dim, device=dev)
    loss_fn = _naive_loss if mode == "naive" else _hierarchical_loss
    meter = _SavedTensorMeter(list(G.parameters()) + list(D.parameters()))
    times, peak = [], None
    for _ in range(max(repeats, 1)):
        G.zero_grad(set_to_none=True)
        D.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            before = torch.cuda.memory_allocated(dev)
        t0 = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t):
            loss = loss_fn(G, D, z, cfg)
        loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            peak = (torch.cuda.max_memory_allocated(dev) - before) / MIB
        times.append(time.perf_counter() - t0)
    return {"size": size, "mode": mode, "saved_mib": meter.nbytes / MIB, "peak_mib": peak,
            "seconds": statistics.median(times), "width": width, "batch": batch,
            "device": str(dev), "status": "ok"}


def _memory_limit_mib(device: torch.device) -> float:
    """Half the free memory of the device: the most a measured step may be predicted to use."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 2 / MIB
    try:
        with open("/proc/meminfo") as fh:
            info = dict(line.split(":", 1) for line in fh)
        return int(info["MemAvailable"].split()[0]) * 1024 / 2 / MIB
    except (OSError, KeyError, ValueError):
        return 2048.0  # unknown: assume a small machine (Binder gives 2 GB)


def compare_steps(sizes: list[int], width: float = 0.125, latent_dim: int | None = None,
                  batch: int = 1,
                  device: str | torch.device = "cpu", repeats: int = 1) -> list[dict[str, Any]]:
    """:func:`step_cost` of both modes at growing sizes, printing one line per measurement.

    Before each size, the memory is predicted from the previous size (activations grow like S^3,
    i.e. x8 per doubling); a step predicted to need more than half the free memory is skipped
    and recorded as such, and a CUDA out-of-memory error is recorded instead of raised.
    """
    dev = torch.device(device)
    limit = _memory_limit_mib(dev)
    results: list[dict[str, Any]] = []
    last: dict[str, dict[str, Any]] = {}
    for size in sorted(sizes):
        for mode in ("naive", "hierarchical"):
            prev = last.get(mode)
            predicted = prev["saved_mib"] * (size / prev["size"]) ** 3 if prev else 0.0
            if predicted > limit:
                rec = {"size": size, "mode": mode, "saved_mib": None, "peak_mib": None,
                       "seconds": None, "status": f"skipped: predicted {predicted:.0f} MiB > "
                                                  f"limit {limit:.0f} MiB"}
            else:
                try:
                    rec = step_cost(size, mode, width, latent_dim, batch, dev, repeats)
                    last[mode] = rec
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    rec = {"size": size, "mode": mode, "saved_mib": None, "peak_mib": None,
                           "seconds": None, "status": "out of memory"}
            results.append(rec)
            print(format_cost(rec))
    return results


def format_cost(rec: dict[str, Any]) -> str:
    """One line of a :func:`step_cost` record."""
    head = f"{rec['size']:>4}^3 {rec['mode']:<12}"
    if rec["status"] != "ok":
        return f"{head} {rec['status']}"
    peak = f", CUDA peak {rec['peak_mib']:8.1f} MiB" if rec.get("peak_mib") is not None else ""
    return f"{head} saved for backward {rec['saved_mib']:8.1f} MiB{peak}, {rec['seconds']:.3f} s"


def save_json(obj: Any, path: PathLike) -> Path:
    """Write ``obj`` as JSON (numpy numbers and dataclasses converted)."""
    def default(o: Any) -> Any:
        if dataclasses.is_dataclass(o):
            return dataclasses.asdict(o)
        if isinstance(o, (np.generic,)):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=default) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# Notebook 03, exercise: training without the low-resolution anchor
# ---------------------------------------------------------------------------------------------
class NoLowResCritic(nn.Module):
    """Stands in for D^L and always answers 0: the discriminator then judges slabs only.

    ``D = (D^H + D^L) / 2`` becomes ``D^H / 2``; the low-resolution head G^L gets no gradient
    from D any more, and nothing ties the slabs of one volume together.
    """

    def __init__(self, num_classes: int = 0) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, low: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        B = low.shape[0]
        cls = low.new_zeros(B, self.num_classes) if self.num_classes else None
        return low.new_zeros(B, 1), cls  # (B, 1), (B, num_classes) or None


def train_without_low_res_anchor(cfg, run_dir: PathLike):
    """Train ``cfg`` from scratch in ``run_dir`` with D^L replaced by :class:`NoLowResCritic`.

    Returns the :class:`hagan.train.Trainer` (its ``G`` is the trained generator). The run's
    checkpoints lack D^L's weights, so use the returned trainer rather than ``load_models``.
    """
    from .train import Trainer

    trainer = Trainer(cfg, run_dir, resume=False)
    trainer.D.low_res = NoLowResCritic(cfg.num_classes).to(trainer.device)
    trainer.train()
    return trainer


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
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise RuntimeError(f"command failed with exit code {proc.returncode}: "
                           f"{' '.join(map(str, args))}\n{output}")
    lines = [ln for ln in output.splitlines() if ln.strip() and "\r" not in ln]
    for line in lines[-tail:]:
        print("  " + line)
    return output
