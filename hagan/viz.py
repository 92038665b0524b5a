"""Figures: orthogonal slices, real-vs-generated grids, loss curves and a slice viewer.

Every function returns a matplotlib ``Figure`` (never calls ``plt.show()``); panels are titled
axial / coronal / sagittal with the slice index, axes carry anatomical directions, intensity images
use a grey colormap with a colorbar. Arrays are in kit order (z, y, x) = (I->S, P->A, L->R).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import PathLike

if TYPE_CHECKING:
    from matplotlib.figure import Figure

VIEWS = ("axial", "coronal", "sagittal")
# Volumes: a numpy array or a torch tensor, (S, S, S) or with leading singleton axes.
Volume = Any
# Training-loss panels: log key -> legend label (keys as in hagan.checkpoint.LOSS_KEYS)
LOSS_LABELS = {"loss_d": "D (real + fake)", "loss_g": "G (adversarial)",
               "loss_e": "E^H (L1 slab)", "loss_sube": "E^G (L1 slab + low-res)"}


def _plt() -> Any:
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


def _as_volume(v: Volume) -> np.ndarray:
    a = np.asarray(v.detach().cpu().float() if hasattr(v, "detach") else v, dtype=np.float32)
    a = a.reshape(a.shape[-3:])
    if a.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {a.shape}")
    return a


def orthogonal_slices(volume: Volume, index: Sequence[int] | None = None
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


def plot_volumes(volumes: Sequence[Volume], names: Sequence[str], title: str = "",
                 vmin: float = -1.0, vmax: float = 1.0, index: Sequence[int] | None = None,
                 cbar_label: str = "intensity (scaled to [-1, 1])") -> Figure:
    """A grid: one row per volume, columns axial / coronal / sagittal, shared grey scale
    [vmin, vmax] whose colorbar is labelled ``cbar_label`` (e.g. "Hounsfield units")."""
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
        fig.colorbar(im, ax=axes, shrink=0.8, label=cbar_label)
    if title:
        fig.suptitle(title)
    return fig


def plot_orthogonal(volume: Volume, title: str = "volume", vmin: float = -1.0,
                    vmax: float = 1.0, cbar_label: str = "intensity (scaled to [-1, 1])"
                    ) -> Figure:
    """Axial, coronal and sagittal central slices of one volume."""
    return plot_volumes([volume], [title], title=title, vmin=vmin, vmax=vmax,
                        cbar_label=cbar_label)


def plot_real_vs_generated(real: Sequence[Volume], fake: Sequence[Volume],
                           title: str = "real vs generated") -> Figure:
    """Rows of real volumes followed by rows of generated volumes."""
    vols = list(real) + list(fake)
    names = [f"real {i + 1}" for i in range(len(real))] + \
            [f"generated {i + 1}" for i in range(len(fake))]
    return plot_volumes(vols, names, title=title)


def plot_losses(records: Sequence[Mapping[str, float]], title: str = "training losses",
                smooth: int = 1) -> Figure:
    """Loss curves of a run's training log: ``plot_losses(read_metrics(run_dir))`` with
    :func:`hagan.checkpoint.read_metrics`. ``smooth`` > 1 averages over that many records.

    Raises:
        TypeError: a run folder was passed instead of its records.
        ValueError: no records.
    """
    if isinstance(records, (str, Path)):
        raise TypeError("plot_losses takes the log records: plot_losses(read_metrics(run_dir)) "
                        "with hagan.checkpoint.read_metrics")
    plt = _plt()
    records = list(records)
    if not records:
        raise ValueError("no training log records to plot (metrics.jsonl is empty or missing)")
    steps = np.array([r["step"] for r in records])
    fig, (ax_gan, ax_rec) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    for key, label in LOSS_LABELS.items():
        y = np.array([r[key] for r in records], dtype=float)
        if smooth > 1 and len(y) >= smooth:
            y = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
            x = steps[smooth - 1:]
        else:
            x = steps
        ax = ax_gan if key in ("loss_d", "loss_g") else ax_rec
        # markers when there are few points: a one-record log would otherwise draw nothing
        ax.plot(x, y, label=label, marker="o" if len(x) < 20 else None)
    ax_gan.set_title("adversarial losses (BCE)")
    ax_rec.set_title("encoder reconstruction losses (L1)")
    for ax in (ax_gan, ax_rec):
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))  # iterations are whole
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


def save(fig: Figure, path: PathLike, dpi: int = 110) -> Path:
    """Save a figure (creating the folder) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


def slice_viewer(volume: Volume, title: str = "volume", interactive: bool | None = None
                 ) -> Any:
    """Interactive axial/coronal/sagittal sliders (ipywidgets); a static figure when headless.

    Args:
        volume: (S, S, S) or (1, S, S, S) array or tensor, kit order (z, y, x).
        title: Figure title.
        interactive: None: sliders whenever a notebook kernel with ipywidgets is running;
            False: always the static figure (papermill and ``make demo`` runs have a kernel but no
            one to move the sliders, so the notebooks pass False there).

    Returns the widget in a live notebook kernel with ipywidgets, else the static ``Figure``.
    """
    v = _as_volume(volume)
    if interactive is False:
        return plot_orthogonal(v, title)
    try:
        import ipywidgets as widgets
        from IPython.display import display  # noqa: F401
    except ImportError:
        return plot_orthogonal(v, title)
    if not _in_notebook():
        return plot_orthogonal(v, title)
    d, h, w = v.shape

    def show(axial: int, coronal: int, sagittal: int) -> Figure:
        fig = plot_volumes([v], [title], title=title, index=(axial, coronal, sagittal))
        _plt().show()
        return fig

    return widgets.interactive(
        show,
        axial=widgets.IntSlider(d // 2, 0, d - 1, description="axial"),
        coronal=widgets.IntSlider(h // 2, 0, h - 1, description="coronal"),
        sagittal=widgets.IntSlider(w // 2, 0, w - 1, description="sagittal"),
    )


# ---------------------------------------------------------------------------------------------
# Figures of the teaching notebooks (notebooks/02, 01, 05, 07)
# ---------------------------------------------------------------------------------------------
def plot_slab(volume: Volume, start: int, depth: int,
              title: str = "what the discriminator sees") -> Figure:
    """The hierarchical view of one volume: where slab [start, start + depth) lies, the slab
    itself at full resolution, and the whole image at 1/4 resolution (what D^L judges).

    Args:
        volume: (S, S, S) volume in [-1, 1], kit order (z, y, x); z is the slab (axial) axis.
        start: Slab start c (axial index).
        depth: Slab depth S/8.
    """
    plt = _plt()
    v = _as_volume(volume)
    S = v.shape[0]
    ix = v.shape[2] // 2
    low = v[::4, ::4, ::4]
    slab = v[start:start + depth]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.8), constrained_layout=True)
    panels = [
        (v[:, :, ix], f"full volume {S}^3 (sagittal slice {ix}):\nslab [{start}, {start + depth}) "
                      "shaded", ("posterior → anterior", "inferior → superior (axial index)"),
         "equal"),
        (slab[:, :, ix], f"G^H / D^H: the slab, {depth} x {S} x {S}\n(sagittal slice {ix}, full "
                         "resolution, stretched)", ("posterior → anterior",
                                                    "slice within the slab"), "auto"),
        (low[:, :, ix // 4], f"G^L / D^L: whole image at 1/4, {S // 4}^3\n(sagittal slice "
                             f"{ix // 4})", ("posterior → anterior", "inferior → superior"),
         "equal"),
    ]
    im = None
    for ax, (img, name, (xl, yl), aspect) in zip(axes, panels):
        im = ax.imshow(img, cmap="gray", vmin=-1, vmax=1, origin="lower",
                       interpolation="nearest", aspect=aspect)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xl, fontsize=8)
        ax.set_ylabel(yl, fontsize=8)
    axes[0].axhspan(start - 0.5, start + depth - 0.5, color="tab:orange", alpha=0.35)
    fig.colorbar(im, ax=axes, shrink=0.8, label="intensity (scaled to [-1, 1])")
    fig.suptitle(title)
    return fig


def plot_slab_coverage(coverage: Sequence[int] | np.ndarray, depth: int, iterations: int,
                       title: str = "how often each axial slice is inside the training slab"
                       ) -> Figure:
    """Bar chart of the number of iterations in which each axial slice fell inside the slab."""
    plt = _plt()
    cover = np.asarray(coverage)
    fig, ax = plt.subplots(figsize=(8, 3.4), constrained_layout=True)
    ax.bar(np.arange(len(cover)), cover, width=1.0, color="tab:blue", label="measured")
    S = len(cover)
    expected = iterations * depth / (S - depth + 1)  # a middle slice: depth of the S-depth+1 starts
    ax.axhline(expected, color="tab:orange", linestyle="--",
               label=f"expected for a middle slice ({expected:.0f})")
    ax.set_xlabel("axial slice index (inferior → superior)")
    ax.set_ylabel(f"iterations (of {iterations}) inside the slab")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower center")  # a fixed place: "best" is slow on bar charts
    return fig


def plot_step_costs(records: Sequence[Mapping[str, Any]],
                    title: str = "one generator update: naive vs hierarchical") -> Figure:
    """Memory and time of :func:`hagan.scaling.step_cost` records against the cube size.

    Left: activation memory autograd keeps for backward (and the CUDA peak when measured), right:
    seconds per step. Log scales: a straight line of slope 3 is the S^3 growth. Skipped or
    out-of-memory measurements are marked with an x at the top of the panel.
    """
    plt = _plt()
    fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    colors = {"naive": "tab:red", "hierarchical": "tab:green"}
    for mode, color in colors.items():
        ok = [r for r in records if r["mode"] == mode and r["status"] == "ok"]
        if not ok:
            continue
        sizes = [r["size"] for r in ok]
        ax_m.plot(sizes, [r["saved_mib"] for r in ok], "o-", color=color,
                  label=f"{mode}: saved for backward")
        if all(r.get("peak_mib") is not None for r in ok):
            ax_m.plot(sizes, [r["peak_mib"] for r in ok], "s--", color=color,
                      label=f"{mode}: CUDA peak")
        ax_t.plot(sizes, [r["seconds"] for r in ok], "o-", color=color, label=mode)
    failed = [r for r in records if r["status"] != "ok"]
    for r in failed:  # an x at the top of the panel, explained in the legend
        for ax in (ax_m, ax_t):
            ax.plot([r["size"]], [0.96], "x", color=colors[r["mode"]], markersize=9,
                    transform=ax.get_xaxis_transform(), linestyle="none",
                    label=f"{r['mode']} {r['size']}^3: {r['status'].split(':')[0]}")
    from matplotlib.ticker import FuncFormatter, LogLocator

    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 20, not 2 x 10^1
    sizes = sorted({r["size"] for r in records})
    for ax, ylabel, name in ((ax_m, "memory (MiB, log scale)", "activation memory"),
                             (ax_t, "seconds per step (log scale)", "time")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))  # label 2x and 5x only
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel("cube size S (voxels per side)")
        ax.set_ylabel(ylabel)
        ax.set_title(name)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def plot_bars(values: Mapping[str, float], title: str, ylabel: str, xlabel: str = ""
              ) -> Figure:
    """A labelled bar chart of name -> value (e.g. seconds per iteration per precision)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4), constrained_layout=True)
    names, heights = list(values), [float(v) for v in values.values()]
    bars = ax.bar(names, heights, color=[f"C{i}" for i in range(len(names))])
    ax.bar_label(bars, fmt="%.3g", fontsize=8)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.set_xlabel(xlabel)
    return fig


def plot_metric_report(report: Mapping[str, Any], title: str | None = None) -> Figure:
    """The numbers of a ``hagan.metrics.evaluate`` report: each generated-vs-real value next to
    its real-vs-real baseline (FID, MMD^2, MS-SSIM diversity, memorisation distances)."""
    plt = _plt()
    m = report["metrics"]
    # the baseline set: held-out real volumes, or (when the run kept none) a labelled train half
    held = ("held-out real" if report.get("reference", {}).get("is_heldout", True)
            else "train half (not held-out)")
    panels = [
        (f"FID vs {held} (lower = closer)", "Fréchet distance",
         {"generated": m["fid"]["generated_vs_heldout"],
          "real train": m["fid"]["train_vs_heldout"]}),
        (f"MMD² vs {held} (lower = closer)", "unbiased MMD²",
         {"generated": m["mmd2"]["generated_vs_heldout"],
          "real train": m["mmd2"]["train_vs_heldout"]}),
        ("MS-SSIM of random pairs\n(lower = more diverse)", "mean MS-SSIM",
         {"generated pairs": m["ms_ssim"]["generated"], "real pairs": m["ms_ssim"]["real"]}),
        ("nearest training neighbour\n(much lower = copying)", "median distance",
         {"generated": m["memorisation"]["generated_median"],
          held: m["memorisation"]["heldout_median"]}),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6), constrained_layout=True)
    for ax, (name, ylabel, vals) in zip(axes, panels):
        bars = ax.bar(list(vals), list(vals.values()), color=["tab:purple", "tab:gray"])
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("compared sets")
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(title or f"{report['extractor']} features, N = {report['n_generated']} "
                          f"generated, {report['resolution']}^3")
    return fig


def plot_histograms(arrays: Mapping[str, Any], title: str, xlabel: str,
                    window: Sequence[float] | None = None, bins: int = 80) -> Figure:
    """Intensity histograms (log counts) of name -> array, with an optional window [low, high]."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.4), constrained_layout=True)
    for name, a in arrays.items():
        values = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float32)
        ax.hist(values.ravel(), bins=bins, histtype="step", linewidth=1.5, label=name, log=True)
    if window is not None:
        for x in window:
            ax.axvline(x, color="black", linestyle="--", linewidth=1)
        ax.axvspan(window[0], window[1], color="gold", alpha=0.15,
                   label=f"window [{window[0]:g}, {window[1]:g}]")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("voxels (log scale)")
    ax.legend(fontsize=8, loc="upper right")  # a fixed place: "best" is slow on histograms
    return fig


def plot_embedding(coords: Mapping[str, np.ndarray], axis_labels: tuple[str, str],
                   ellipses: Mapping[str, tuple[np.ndarray, float, float, float]] | None = None,
                   title: str = "", legend_title: str | None = None) -> Figure:
    """Scatter of 2-D points per group, each with an optional dashed ellipse.

    Args:
        coords: group name -> (N_g, 2) coordinates, e.g. from :func:`hagan.analysis.embed`.
        axis_labels: (x label, y label).
        ellipses: group name -> (center, width, height, angle in degrees), e.g. from
            :func:`hagan.analysis.ellipse`.

    :func:`hagan.analysis.plot_embedding` embeds feature groups and calls this.
    """
    from matplotlib.patches import Ellipse

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5), constrained_layout=True)
    for i, (name, pts) in enumerate(coords.items()):
        color = f"C{i}"
        ax.scatter(pts[:, 0], pts[:, 1], s=14, alpha=0.7, color=color,
                   label=f"{name} (N={len(pts)})")
        if ellipses and name in ellipses:
            center, width, height, angle = ellipses[name]
            ax.add_patch(Ellipse((float(center[0]), float(center[1])), width, height,
                                 angle=angle, fill=False, edgecolor=color, linestyle="--",
                                 linewidth=1.5))
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(title)
    ax.legend(title=legend_title, fontsize="small")
    return fig


def plot_diversity(records: Sequence[Mapping[str, Any]],
                   title: str = "diversity during training") -> Figure:
    """The training log's diversity checks (``Config.diversity_every``): mean MS-SSIM among
    samples of fixed latents (``ms_ssim_fake``) and among real volumes (``ms_ssim_real``)
    against the iteration. Samples far above the real line, towards 1, are mode collapse."""
    plt = _plt()
    rows = [r for r in records if "ms_ssim_fake" in r]
    if not rows:
        raise ValueError("no diversity checks in the log: train with diversity_every > 0")
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.4), constrained_layout=True)
    ax.plot(steps, [r["ms_ssim_fake"] for r in rows], "o-", label="generated (8 fixed z)")
    ax.plot(steps, [r["ms_ssim_real"] for r in rows], "s--", label="real (8 volumes)")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean MS-SSIM of all pairs")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_validation(records: Sequence[Mapping[str, Any]],
                    title: str = "validation: which checkpoint to keep") -> Figure:
    """The training log's validations (``Config.keep_best_from``, :class:`hagan.metrics.
    Validation`) against the iteration: left, MS-SSIM among generated volumes next to held-out
    pairs and the diversity tolerance around them; right, the FID ratio and its tolerance. The
    checkpoint kept as ``best.pt`` (the lowest score, the worse of the two distances in units of
    its tolerance) is starred in both."""
    from .config import DIVERSITY_TOLERANCE, FID_RATIO_TOLERANCE

    plt = _plt()
    rows = [r for r in records if "val_score" in r]
    if not rows:
        raise ValueError("no validations in the log: train with keep_best_from > 0")
    steps = [r["step"] for r in rows]
    best = min(rows, key=lambda r: r["val_score"])  # the first of equal scores, as the trainer
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    real = [r["val_ms_ssim_real"] for r in rows]
    left.plot(steps, [r["val_ms_ssim"] for r in rows], "o-", label="generated (32)")
    left.plot(steps, real, "s--", label="held-out real")
    for sign in (1, -1):
        left.plot(steps, [v + sign * DIVERSITY_TOLERANCE for v in real], ":", color="grey",
                  label=f"real ± {DIVERSITY_TOLERANCE:g} (tolerance)" if sign > 0 else None)
    left.plot(best["step"], best["val_ms_ssim"], "*", ms=14, color="C3", label="kept (best.pt)")
    left.set_ylim(0, 1.02)
    left.set_ylabel("mean MS-SSIM of 100 pairs")
    right.plot(steps, [r["val_fid_ratio"] for r in rows], "o-", label="FID(gen, held-out) / "
               "FID(train, held-out)")
    right.axhline(FID_RATIO_TOLERANCE, ls=":", color="grey", label="tolerance")
    right.plot(best["step"], best["val_fid_ratio"], "*", ms=14, color="C3", label="kept (best.pt)")
    right.set_ylim(0, None)
    right.set_ylabel("FID ratio (1 = as close as real)")
    for ax in (left, right):
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig
