"""Figures: orthogonal slices, real-vs-generated grids, loss curves and a slice viewer.

Every function returns a matplotlib ``Figure`` (never calls ``plt.show()``); panels are titled
axial / coronal / sagittal with the slice index, axes carry anatomical directions, intensity images
use a grey colormap with a colorbar. Arrays are in kit order (z, y, x) = (I->S, P->A, L->R).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .config import PathLike

VIEWS = ("axial", "coronal", "sagittal")


def _plt():
    try:
        import matplotlib

        if matplotlib.get_backend().lower() not in ("agg",) and not _in_notebook():
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - matplotlib is a dependency
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from exc
    return plt


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None
    except ImportError:
        return False


def _as_volume(v) -> np.ndarray:
    a = np.asarray(v.detach().cpu().float() if hasattr(v, "detach") else v, dtype=np.float32)
    a = a.reshape(a.shape[-3:])
    if a.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {a.shape}")
    return a


def orthogonal_slices(volume, index: Sequence[int] | None = None
                      ) -> list[tuple[str, np.ndarray, int, tuple[str, str]]]:
    """The three central (or given) slices as (view, image, index, (x label, y label)).

    Images are oriented for display with ``origin='lower'``: axial shows L->R by P->A,
    coronal L->R by I->S, sagittal P->A by I->S.
    """
    v = _as_volume(volume)
    d, h, w = v.shape
    iz, iy, ix = index if index is not None else (d // 2, h // 2, w // 2)
    return [
        ("axial", v[iz], iz, ("left → right", "posterior → anterior")),
        ("coronal", v[:, iy, :], iy, ("left → right", "inferior → superior")),
        ("sagittal", v[:, :, ix], ix, ("posterior → anterior", "inferior → superior")),
    ]


def plot_volumes(volumes: Sequence, names: Sequence[str], title: str = "",
                 vmin: float = -1.0, vmax: float = 1.0, index: Sequence[int] | None = None):
    """A grid: one row per volume, columns axial / coronal / sagittal, shared grey scale."""
    plt = _plt()
    n = len(volumes)
    fig, axes = plt.subplots(n, 3, figsize=(9.5, 3.0 * n + 0.6), squeeze=False,
                             constrained_layout=True)
    im = None
    for r, (vol, name) in enumerate(zip(volumes, names)):
        for c, (view, img, idx, (xl, yl)) in enumerate(orthogonal_slices(vol, index)):
            ax = axes[r, c]
            im = ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, origin="lower",
                           interpolation="nearest")
            ax.set_title(f"{name}: {view} slice {idx}", fontsize=9)
            ax.set_xlabel(xl, fontsize=8)
            ax.set_ylabel(yl, fontsize=8)
            ax.tick_params(labelsize=6)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label="intensity (scaled to [-1, 1])")
    if title:
        fig.suptitle(title)
    return fig


def plot_orthogonal(volume, title: str = "volume", vmin: float = -1.0, vmax: float = 1.0):
    """Axial, coronal and sagittal central slices of one volume."""
    return plot_volumes([volume], [title], title=title, vmin=vmin, vmax=vmax)


def plot_real_vs_generated(real: Sequence, fake: Sequence, title: str = "real vs generated"):
    """Rows of real volumes followed by rows of generated volumes."""
    vols = list(real) + list(fake)
    names = [f"real {i + 1}" for i in range(len(real))] + \
            [f"generated {i + 1}" for i in range(len(fake))]
    return plot_volumes(vols, names, title=title)


def plot_losses(run_dir_or_records, title: str = "training losses", smooth: int = 1):
    """Loss curves from a run's ``metrics.jsonl`` (or the list of records)."""
    from .train import LOSS_KEYS, read_metrics

    plt = _plt()
    records = (read_metrics(run_dir_or_records)
               if isinstance(run_dir_or_records, (str, Path)) else list(run_dir_or_records))
    if not records:
        raise ValueError("no training log records to plot (metrics.jsonl is empty or missing)")
    steps = np.array([r["step"] for r in records])
    fig, (ax_gan, ax_rec) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    labels = {"loss_d": "D (real + fake)", "loss_g": "G (adversarial)",
              "loss_e": "E^H (L1 slab)", "loss_sube": "E^G (L1 slab + low-res)"}
    for key in LOSS_KEYS:
        if key not in labels:
            continue
        y = np.array([r[key] for r in records], dtype=float)
        if smooth > 1 and len(y) >= smooth:
            y = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
            x = steps[smooth - 1:]
        else:
            x = steps
        ax = ax_gan if key in ("loss_d", "loss_g") else ax_rec
        ax.plot(x, y, label=labels[key])
    ax_gan.set_title("adversarial losses (BCE)")
    ax_rec.set_title("encoder reconstruction losses (L1)")
    for ax in (ax_gan, ax_rec):
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


def save(fig, path: PathLike, dpi: int = 110) -> Path:
    """Save a figure (creating the folder) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


def slice_viewer(volume, title: str = "volume"):
    """Interactive axial/coronal/sagittal sliders (ipywidgets); a static figure when headless.

    Returns the widget in a live notebook kernel with ipywidgets, else the static ``Figure``.
    """
    v = _as_volume(volume)
    try:
        import ipywidgets as widgets
        from IPython.display import display  # noqa: F401
    except ImportError:
        return plot_orthogonal(v, title)
    if not _in_notebook():
        return plot_orthogonal(v, title)
    d, h, w = v.shape

    def show(axial: int, coronal: int, sagittal: int):
        fig = plot_volumes([v], [title], title=title, index=(axial, coronal, sagittal))
        _plt().show()
        return fig

    return widgets.interactive(
        show,
        axial=widgets.IntSlider(d // 2, 0, d - 1, description="axial"),
        coronal=widgets.IntSlider(h // 2, 0, h - 1, description="coronal"),
        sagittal=widgets.IntSlider(w // 2, 0, w - 1, description="sagittal"),
    )
