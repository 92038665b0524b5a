"""Feature space: 2-D embeddings of real vs generated features (PCA, MDS) with 2-sigma ellipses,
and latent traversals of the generator. The features come from :mod:`hagan.features`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from . import viz

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .models import Generator

ELLIPSE_STD = 2.0  # ellipses cover +-2 standard deviations along each principal axis


# ---------------------------------------------------------------------------------------------
# Embeddings, ellipses, latent traversals
# ---------------------------------------------------------------------------------------------
def embed(groups: Mapping[str, np.ndarray], method: str = "pca", seed: int = 0
          ) -> tuple[dict[str, np.ndarray], tuple[str, str]]:
    """2-D embedding of several feature sets fitted jointly on standardised features.

    Args:
        groups: name -> features (N_g, F), e.g. ``{"real": ..., "generated": ...}``.
        method: ``pca`` (scikit-learn PCA) or ``mds`` (metric MDS, as in the authors' notebook).

    Returns:
        name -> (N_g, 2) coordinates, and the two axis labels.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import MDS

    if method not in ("pca", "mds"):
        raise ValueError(f"method must be 'pca' or 'mds', not {method!r}")
    arrays = [np.asarray(v, np.float64) for v in groups.values()]
    if not arrays or any(a.ndim != 2 or a.shape[1] != arrays[0].shape[1] for a in arrays):
        raise ValueError("expected one or more feature arrays (N_g, F) with a common F")
    stacked = np.concatenate(arrays)
    std = stacked.std(axis=0)
    stacked = (stacked - stacked.mean(axis=0)) / np.where(std > 0, std, 1.0)
    if method == "pca":
        pca = PCA(n_components=2, random_state=seed)
        coords = pca.fit_transform(stacked)
        r = pca.explained_variance_ratio_ * 100
        labels = (f"PC 1 ({r[0]:.1f} % of variance)", f"PC 2 ({r[1]:.1f} % of variance)")
    else:
        extra = {"init": "classical_mds"} if "init" in inspect.signature(MDS).parameters else {}
        mds = MDS(n_components=2, n_init=1, random_state=seed, **extra)
        coords = mds.fit_transform(stacked)
        labels = ("MDS 1 (standardised feature units)", "MDS 2 (standardised feature units)")
    splits = np.cumsum([len(a) for a in arrays])[:-1]
    return dict(zip(groups, np.split(coords, splits))), labels


def ellipse(points: np.ndarray, n_std: float = ELLIPSE_STD) -> tuple[np.ndarray, float, float,
                                                                      float]:
    """(center, width, height, angle in degrees) of the n_std-sigma ellipse of 2-D points."""
    pts = np.asarray(points, np.float64)
    w, v = np.linalg.eigh(np.cov(pts, rowvar=False))  # ascending eigenvalues
    w = np.clip(w, 0.0, None)
    angle = math.degrees(math.atan2(v[1, 1], v[0, 1]))  # direction of the largest axis
    return pts.mean(axis=0), 2 * n_std * math.sqrt(w[1]), 2 * n_std * math.sqrt(w[0]), angle


def plot_embedding(groups: Mapping[str, np.ndarray], method: str = "pca",
                   title: str | None = None, seed: int = 0, n_std: float = ELLIPSE_STD
                   ) -> Figure:
    """Scatter of a joint PCA/MDS embedding (:func:`embed`) of feature groups, each with its
    n_std-sigma ellipse (:func:`ellipse`), drawn by :func:`hagan.viz.plot_embedding`.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> fig = plot_embedding({"real": rng.normal(size=(20, 8)),
        ...                       "generated": rng.normal(1, 1, size=(20, 8))})
        >>> fig.axes[0].get_title()
        'PCA of features: real vs generated'
    """
    coords, axis_labels = embed(groups, method, seed)
    ellipses = {name: ellipse(pts, n_std) for name, pts in coords.items() if len(pts) >= 3}
    return viz.plot_embedding(coords, axis_labels, ellipses,
                              title or f"{method.upper()} of features: {' vs '.join(coords)}",
                              legend_title=f"dashed: {n_std:g}-sigma ellipses")


def principal_directions(z: torch.Tensor | np.ndarray, k: int = 3) -> torch.Tensor:
    """The k leading principal directions (k, latent_dim) of latents z (N, latent_dim), e.g. of
    real volumes encoded with :func:`hagan.generate.encode`; unit vectors."""
    z = torch.as_tensor(z, dtype=torch.float32)
    _, _, v = torch.linalg.svd(z - z.mean(dim=0), full_matrices=False)
    return v[:k]


def latent_traversal(G: Generator, direction: int | torch.Tensor = 0, steps: int = 7,
                     span: float = 3.0, z: torch.Tensor | None = None, seed: int = 0,
                     labels: Any = None) -> torch.Tensor:
    """Volumes G(z + t d) for t evenly spaced in [-span, span] along a unit direction d.

    Args:
        G: A :class:`hagan.models.Generator`.
        direction: A latent axis index, or a vector (latent_dim,) (e.g. from
            :func:`principal_directions`); it is normalised to unit length.
        steps: Number of volumes (>= 2).
        span: Largest |t|, in standard deviations of the latent prior.
        z: The centre (latent_dim,); default: drawn from N(0, I) with ``seed``.

    Returns:
        (steps, 1, S, S, S) float32 in [-1, 1].
    """
    from .generate import interpolate

    dim = int(G.latent_dim)
    if z is None:
        z = torch.randn(dim, generator=torch.Generator().manual_seed(seed))
    if isinstance(direction, int):
        if not 0 <= direction < dim:
            raise ValueError(f"direction index must be in [0, {dim}), not {direction}")
        direction = F.one_hot(torch.tensor(direction), dim).float()
    d = torch.as_tensor(direction, dtype=torch.float32).reshape(-1)
    if d.shape != (dim,) or z.shape != (dim,) or not d.norm() > 0:
        raise ValueError(f"z and direction must be non-zero vectors of length {dim}, got "
                         f"{tuple(z.shape)} and {tuple(d.shape)}")
    d = d / d.norm()
    return interpolate(G, z - span * d, z + span * d, steps, labels=labels, spherical=False)
