"""Evaluation in feature space: 3D FID, MMD, MS-SSIM diversity and a memorisation check, each
shown next to its real-vs-real baseline, and the ``hagan evaluate`` command.

A metric of a 3D GAN is only meaningful together with the feature extractor, its weights, the
number of samples N and the resolution, so the JSON report and the printed table name all four.
Extractors (see :func:`build_extractor`):

* ``medicalnet10/18/34/50``: the MedicalNet (Med3D) 3D ResNet used by the official HA-GAN FID
  script, with weights from a user-given file (its SHA-256 is logged and reported);
* ``encoder``: the kit's own trained encoders, z = E^G(E^H(x)) (official ``Sub_E(E(x))``);
* ``random``: a seeded random 3D network for offline use, always labelled ``random (seed N)``.

The official ``fid_score.py`` feeds volumes in [-1, 1] to ResNet-50 without MedicalNet's z-score
normalisation; we do the same, so numbers are comparable with the paper's pipeline.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from scipy.spatial.distance import cdist

from .checkpoint import CheckpointError
from .cliargs import non_negative_int, positive_int
from .config import DIVERSITY_TOLERANCE, FID_RATIO_TOLERANCE, Config, PathLike
from .errors import ConfigError, DataError, RunError, explain
from .features import (
    EXTRACTORS,
    SHORT_HASH,
    FeatureExtractor,
    build_extractor,
    check_extractor,
    volume_at,
)
from .models import Generator

logger = logging.getLogger(__name__)

SQRTM_EPS = 1e-6  # diagonal offset for the retry when sqrtm fails (official fid_score.py)
SQRTM_IMAG_TOL = 1e-3  # largest |imaginary| diagonal part of sqrtm accepted (pytorch-fid's atol)
SSIM_WINDOW = 11  # Gaussian window side of SSIM (Wang et al., IEEE TIP 2004)
SSIM_SIGMA = 1.5  # its standard deviation in voxels (same source)
SSIM_K1, SSIM_K2 = 0.01, 0.03  # stabilising constants (same source)
# Per-scale exponents of MS-SSIM (Wang, Simoncelli & Bovik, Asilomar 2003); fewer scales use the
# first ones, renormalised to sum 1.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
DATA_RANGE = 2.0  # kit volumes span [-1, 1]
MS_SSIM_PAIRS = 100  # random pairs for the diversity score
PERMUTATIONS = 200  # MMD permutation test draws (p-value resolution 1/201)
MIN_REAL = 4  # two real halves of at least 2 volumes each (a covariance needs 2 rows)
CACHE_DIRNAME = ".hagan_cache"  # default cache folder, next to the report (--out)
CACHE_VERSION = "hagan-kit real features v1"  # part of the cache key: bump when features change
REPORT_KIND = "hagan-kit evaluation report"
CLOSEST_LISTED = 3  # generated volumes nearest to a training volume, named in the report


# ---------------------------------------------------------------------------------------------
# Fréchet distance and FID
# ---------------------------------------------------------------------------------------------
def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and covariance (F, F) of features (N, F), N >= 2 (``np.cov``, N - 1 divisor)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"expected features of shape (N, F) with N >= 2, got {f.shape}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray, eps: float = SQRTM_EPS) -> float:
    r"""Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    :math:`d^2 = \lVert\mu_1-\mu_2\rVert^2 + \mathrm{tr}(\Sigma_1 + \Sigma_2
    - 2(\Sigma_1\Sigma_2)^{1/2})` (Dowson & Landau 1982; Heusel et al. 2017).

    The trace of the matrix square root is taken from ``scipy.linalg.sqrtm``. When that result
    is not finite or has a significant imaginary part (singular or ill-conditioned covariances,
    e.g. fewer samples than features), it is retried with ``eps * I`` added to both covariances,
    and finally computed from eigenvalues as :math:`\mathrm{tr}\,(\Sigma_1^{1/2}\Sigma_2
    \Sigma_1^{1/2})^{1/2}`, which is exact for any positive semi-definite pair.

    Args:
        mu1, mu2: Means, shape (F,).
        sigma1, sigma2: Covariances, shape (F, F), symmetric positive semi-definite.
        eps: Diagonal offset of the retry.

    Returns:
        The squared distance (a float >= 0; tiny negative round-off is clipped to 0).

    Raises:
        ValueError: the shapes do not match.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    f = mu1.shape[0]
    if mu1.shape != (f,) or mu2.shape != (f,) or sigma1.shape != (f, f) or sigma2.shape != (f, f):
        raise ValueError(f"expected means (F,) and covariances (F, F) of one F; got {mu1.shape}, "
                         f"{sigma1.shape}, {mu2.shape}, {sigma2.shape}")
    diff = mu1 - mu2
    tr_covmean, _ = trace_sqrt_product(sigma1, sigma2, eps)
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean
    return float(max(value, 0.0))


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float = SQRTM_EPS
                       ) -> tuple[float, str]:
    """tr((sigma1 sigma2)^(1/2)) and the route taken: ``sqrtm``, ``sqrtm+eps`` or ``eigh``."""
    eye = np.eye(sigma1.shape[0])
    for route, offset in (("sqrtm", 0.0), ("sqrtm+eps", eps)):
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")  # sqrtm warns on singular input; we check the result
            try:
                covmean = np.asarray(scipy.linalg.sqrtm((sigma1 + offset * eye)
                                                        @ (sigma2 + offset * eye)))
            except (ValueError, np.linalg.LinAlgError):
                continue
        if not np.all(np.isfinite(covmean)):
            continue
        diag = np.diagonal(covmean)
        if np.iscomplexobj(covmean):
            if np.abs(diag.imag).max() > SQRTM_IMAG_TOL * max(1.0, np.abs(diag.real).max()):
                continue
        return float(diag.real.sum()), route
    logger.info("sqrtm gave a non-finite or complex result; using the eigenvalue route")
    return _trace_sqrt_product_eigh(sigma1, sigma2), "eigh"


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1^½ S2 S1^½)^½) from symmetric eigendecompositions (negative round-off clipped)."""
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T  # S1^(1/2)
    m = root1 @ sigma2 @ root1
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum())


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between the Gaussian fits of two feature sets (N_a, F) and (N_b, F)."""
    return frechet_distance(*feature_stats(features_a), *feature_stats(features_b))


# ---------------------------------------------------------------------------------------------
# MMD with the published kernel
# ---------------------------------------------------------------------------------------------
MMD_KERNEL = "exp(-d^2/m^2), m = median pooled pairwise distance (published HA-GAN evaluation)"


def median_bandwidth(features: np.ndarray) -> float:
    """The kernel scale m of the published evaluation: the median of the full (N, N) matrix of
    Euclidean distances between the rows of ``features`` (N, F).

    As in the published ``evaluation/fid_score.py`` (torch-two-sample ``MMDStatistic`` with
    ``alphas='median'``, which takes ``torch.median`` of the pooled distance matrix), the median
    runs over all N² entries, the N zero diagonal entries and both triangles included, and for an
    even count it is the lower of the two middle values (``torch.median``'s convention).

    Raises:
        ValueError: ``features`` is not (N, F) with N >= 2.
        DataError: the median is 0 (more than half of the pairs coincide: no kernel scale).
    """
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"expected features of shape (N, F) with N >= 2, got {f.shape}")
    d = cdist(f, f).ravel()
    lower_middle = (d.size - 1) // 2
    m = float(np.partition(d, lower_middle)[lower_middle])
    if not m > 0:
        raise DataError(explain("MMD kernel scale", "distinct feature vectors",
                                "the median pairwise distance is 0 (most vectors are identical)",
                                "Check the extractor and the volumes it was given."))
    return m


def _mmd2_unbiased(k: np.ndarray, n: int) -> float:
    """MMD²_u of a pooled kernel matrix whose first ``n`` rows are one sample (Gretton et al.,
    JMLR 2012, eq. 3): within-sample means without the diagonal, cross mean over all pairs."""
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    m = k.shape[0] - n
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1))
                 + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2.0 * kxy.mean())


def mmd(x: np.ndarray, y: np.ndarray, bandwidth: float | str = "median", permutations: int = 0,
        seed: int = 0) -> tuple[float, float | None]:
    r"""Unbiased squared MMD between samples x (N, F) and y (M, F), with the published kernel.

    :math:`k(a, b) = \exp(-\lVert a-b\rVert^2 / m^2)` with m the median pairwise distance of the
    pooled sample (:func:`median_bandwidth`), and :math:`\mathrm{MMD}^2_u` of Gretton et al.
    (JMLR 2012, eq. 3), as in the published HA-GAN evaluation (``evaluation/fid_score.py``,
    ``calculate_mmd``: torch-two-sample's ``MMDStatistic`` with ``alphas='median'``). It can be
    slightly negative when the samples agree. The statistic is symmetric in x and y.
    (In the exp(-d²/2σ²) convention, m = √2 σ.) Differences from the published code, both far
    below the printed precision: float64 instead of float32, and no 1e-5 added under the square
    root of the distances (torch-two-sample adds it to keep gradients finite).

    Args:
        x, y: Feature sets, N, M >= 2.
        bandwidth: m, or ``"median"`` (the published choice): the median of the pooled sample.
        permutations: Draws of the permutation test (0: no p-value; the published code has it
            commented out).
        seed: Seed of the permutations.

    Returns:
        ``(mmd2, p_value)``; ``p_value`` is None without permutations, otherwise
        ``(1 + #{permuted >= observed}) / (1 + permutations)``.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError(f"expected (N, F) and (M, F) with N, M >= 2, got {x.shape}, {y.shape}")
    z = np.concatenate([x, y])
    scale = median_bandwidth(z) if bandwidth == "median" else float(bandwidth)
    if not scale > 0:
        raise ValueError(f"bandwidth must be 'median' or > 0, not {bandwidth!r}")
    k = np.exp(-cdist(z, z, "sqeuclidean") / scale**2)
    value = _mmd2_unbiased(k, len(x))
    if permutations <= 0:
        return value, None
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(permutations):
        p = rng.permutation(len(z))
        hits += _mmd2_unbiased(k[np.ix_(p, p)], len(x)) >= value
    return value, (1 + hits) / (1 + permutations)


# ---------------------------------------------------------------------------------------------
# 3D MS-SSIM and diversity
# ---------------------------------------------------------------------------------------------
def ms_ssim_scales(size: int) -> int:
    """Scales MS-SSIM uses for a cube of side ``size``: at most 5, while the coarsest scale still
    holds a full 11-voxel window. 256^3: 5, 128^3: 4, 64^3: 3, 32^3: 2, 11..21: 1 (plain SSIM)."""
    if size < SSIM_WINDOW:
        raise ValueError(f"MS-SSIM needs volumes of at least {SSIM_WINDOW}^3, got {size}^3")
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and size // 2**scales >= SSIM_WINDOW:
        scales += 1
    return scales


def _as_batch(v: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=torch.float32)
    t = t.reshape(1, 1, *t.shape) if t.dim() == 3 else (t[None] if t.dim() == 4 else t)
    if t.dim() != 5 or t.shape[1] != 1:
        raise ValueError(f"expected volumes (S, S, S), (1, S, S, S) or (B, 1, D, H, W), got "
                         f"{tuple(torch.as_tensor(v).shape)}")
    return t


def _blur(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filter of every channel of (B, C, D, H, W) along D, H, W."""
    c = x.shape[1]
    for shape in ((c, 1, -1, 1, 1), (c, 1, 1, -1, 1), (c, 1, 1, 1, -1)):
        x = F.conv3d(x, window.expand(c, -1).reshape(shape), groups=c)
    return x


def _ssim_cs(a: torch.Tensor, b: torch.Tensor, window: torch.Tensor, c1: float, c2: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean SSIM and mean contrast-structure term of each pair, both (B,)."""
    # the five local moments in one grouped pass: (B, 5, D', H', W')
    mu_a, mu_b, m_aa, m_bb, m_ab = _blur(torch.cat([a, b, a * a, b * b, a * b], dim=1),
                                         window).unbind(dim=1)
    var_a, var_b, cov = m_aa - mu_a**2, m_bb - mu_b**2, m_ab - mu_a * mu_b
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    lum = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    return (lum * cs).mean(dim=(1, 2, 3)), cs.mean(dim=(1, 2, 3))


def ms_ssim_3d(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray,
               data_range: float = DATA_RANGE, scales: int | None = None) -> np.ndarray:
    """3D multi-scale SSIM (Wang et al. 2003) of volume pairs, 1 for identical volumes.

    Windows are 11^3 Gaussians (sigma 1.5) applied without padding; each further scale halves
    the volume by 2^3 average pooling. A 256^3 volume uses the 5 published scales; smaller cubes
    use fewer (see :func:`ms_ssim_scales`: 2 at 32^3) with the first exponents renormalised.
    Negative contrast terms are clipped to 0 before the power, as in common implementations.

    Args:
        a, b: Volumes of one shape: (S, S, S), (1, S, S, S) or (B, 1, D, H, W), in [-1, 1].
        data_range: Value range L of the constants C1 = (0.01 L)^2, C2 = (0.03 L)^2.
        scales: Number of scales (default: as many as the size allows, at most 5).

    Returns:
        (B,) float64 array of MS-SSIM values in [0, 1].
    """
    x, y = _as_batch(a), _as_batch(b)
    if x.shape != y.shape:
        raise ValueError(f"MS-SSIM compares volumes of one shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    scales = scales or ms_ssim_scales(min(x.shape[2:]))
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=torch.float64)
    weights = weights / weights.sum()
    coords = torch.arange(SSIM_WINDOW, dtype=torch.float32) - (SSIM_WINDOW - 1) / 2
    window = torch.exp(-coords**2 / (2 * SSIM_SIGMA**2)).to(x.device)
    window = window / window.sum()
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    result = torch.ones(x.shape[0], dtype=torch.float64)
    for j in range(scales):
        ssim, cs = _ssim_cs(x, y, window, c1, c2)
        term = ssim if j == scales - 1 else cs  # luminance only at the coarsest scale
        result *= term.double().cpu().clamp(min=0.0) ** weights[j]
        if j < scales - 1:
            x, y = F.avg_pool3d(x, 2), F.avg_pool3d(y, 2)
    return result.numpy()


def random_pairs(n: int, n_pairs: int, seed: int = 0) -> np.ndarray:
    """Up to ``n_pairs`` distinct unordered index pairs (i < j) of n items, (P, 2)."""
    rows, cols = np.triu_indices(n, 1)
    chosen = np.random.default_rng(seed).permutation(len(rows))[:n_pairs]
    return np.stack([rows[chosen], cols[chosen]], axis=1)


def pairwise_ms_ssim(volumes: Any, n_pairs: int = MS_SSIM_PAIRS, seed: int = 0,
                     batch_size: int = 4, device: str | torch.device = "cpu",
                     progress: bool = False) -> np.ndarray:
    """MS-SSIM of random pairs of volumes ((N, 1, S, S, S) or a dataset of (1, S, S, S))."""
    from tqdm import tqdm  # the text bar: a notebook widget bar is saved at 0 % by papermill

    if len(volumes) < 2:
        raise ValueError(f"diversity needs at least 2 volumes, got {len(volumes)}")
    pairs = random_pairs(len(volumes), n_pairs, seed)
    values = []
    for i in tqdm(range(0, len(pairs), batch_size), desc="MS-SSIM", disable=not progress,
                  leave=False):
        chunk = pairs[i:i + batch_size]
        a = torch.stack([volume_at(volumes, int(p)) for p in chunk[:, 0]]).to(device)
        b = torch.stack([volume_at(volumes, int(p)) for p in chunk[:, 1]]).to(device)
        values.append(ms_ssim_3d(a, b))
    return np.concatenate(values)


def diversity(volumes: Any, n_pairs: int = MS_SSIM_PAIRS, seed: int = 0, **kwargs: Any) -> float:
    """Mean MS-SSIM over random pairs of volumes; lower means more diverse (Odena et al. 2017)."""
    return float(pairwise_ms_ssim(volumes, n_pairs, seed, **kwargs).mean())


# ---------------------------------------------------------------------------------------------
# Memorisation
# ---------------------------------------------------------------------------------------------
def memorisation(gen_features: np.ndarray, train_features: np.ndarray,
                 heldout_features: np.ndarray) -> dict[str, Any]:
    """Nearest-training-neighbour distances of generated vs held-out real volumes.

    Features are standardised by the training set's per-feature mean and std, then for every
    generated volume and every held-out real volume the Euclidean distance to the nearest
    training volume is taken. A generator that copies training volumes gives generated distances
    far below the held-out baseline (ratio << 1, many samples closer than any held-out volume).

    Returns:
        ``generated_median``, ``heldout_median``, ``ratio`` (their quotient),
        ``fraction_closer_than_any_heldout`` and the arrays ``generated_distances`` (N_gen,),
        ``heldout_distances`` (N_held,) and ``nearest_train_index`` (N_gen,).
    """
    train = np.asarray(train_features, np.float64)
    mean, std = train.mean(axis=0), train.std(axis=0)
    std[std == 0] = 1.0
    gen = (np.asarray(gen_features, np.float64) - mean) / std
    held = (np.asarray(heldout_features, np.float64) - mean) / std
    train = (train - mean) / std
    d_gen, d_held = cdist(gen, train), cdist(held, train)
    gen_nn, held_nn = d_gen.min(axis=1), d_held.min(axis=1)
    return {
        "generated_median": float(np.median(gen_nn)),
        "heldout_median": float(np.median(held_nn)),
        "ratio": float(np.median(gen_nn) / max(np.median(held_nn), 1e-12)),
        "fraction_closer_than_any_heldout": float(np.mean(gen_nn < held_nn.min())),
        "generated_distances": gen_nn,
        "heldout_distances": held_nn,
        "nearest_train_index": d_gen.argmin(axis=1),
    }


# ---------------------------------------------------------------------------------------------
# Cache of real-set features
# ---------------------------------------------------------------------------------------------
_FILE_HASHES: dict[tuple[str, int, int, int], str] = {}  # (path, inode, size, mtime) -> sha256


def _file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, remembered in this process while its size and mtime stay."""
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def data_fingerprint(root: PathLike) -> str:
    """SHA-256 over a prepared dataset's content: ``manifest.csv``, ``dataset.json`` and the
    bytes of every ``volumes/*.npy`` (name and content), so re-prepared scans with the same
    names and shapes get another fingerprint (and another cache key)."""
    root = Path(root)
    h = hashlib.sha256()
    for name in ("manifest.csv", "dataset.json"):
        path = root / name
        h.update(path.read_bytes() if path.is_file() else b"")
    volumes = root / "volumes"
    for path in sorted(volumes.glob("*.npy")) if volumes.is_dir() else []:
        h.update(f"\n{path.name}\n{_file_sha256(path)}".encode())
    return h.hexdigest()


def cache_key(extractor_name: str, weights_hash: str, size: int, data_hash: str) -> str:
    """Key of cached real features: extractor, weights hash, cube size and data fingerprint."""
    text = "\n".join([CACHE_VERSION, extractor_name, weights_hash, str(size), data_hash])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    from .fileio import atomic_write

    # numeric and str arrays only (no pickling; cached() reads with allow_pickle=False)
    atomic_write(path, lambda fh: np.savez(fh, allow_pickle=False, **arrays))


def cached(path: Path | None, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Load ``values`` from ``path`` when it holds ``key``, else compute and store them.

    An unreadable or stale cache file is recomputed; a folder that cannot be written only logs
    a warning (evaluation still works, just without the cache).
    """
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as npz:
                if str(npz["key"]) == key:
                    values = np.asarray(npz["values"])
                    if np.isfinite(values).all():
                        logger.info("cached real-set values from %s", path)
                        return values
                    logger.warning("ignoring cache %s: it holds non-finite values", path)
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("ignoring unreadable cache %s (%s)", path, exc)
    values = compute()
    if path is not None and not np.isfinite(np.asarray(values, dtype=np.float64)).all():
        logger.warning("not caching real-set values with NaN or infinite entries (%s)", path)
    elif path is not None:
        try:
            _save_npz(path, key=np.array(key), values=values)
        except OSError as exc:
            logger.warning("could not write the cache %s (%s); continuing without it", path, exc)
    return values


# ---------------------------------------------------------------------------------------------
# Validation during training: which checkpoint to keep (Config.keep_best_from)
# ---------------------------------------------------------------------------------------------
VALIDATION_SEED = 1  # latents and MS-SSIM pairs: not `hagan evaluate`'s default 0
VALIDATION_EXTRACTORS = (1, 2, 3, 4)  # seeds of the random feature networks averaged over
VALIDATION_SAMPLES = 32  # generated volumes per validation


class Validation:
    """Score a generator against the run's held-out volumes, to choose the checkpoint to keep.

    A small GAN's samples change a lot between checkpoints (on the demo cohort, checkpoints 100
    iterations apart differ by 0.1-0.2 in MS-SSIM and 1-3x in FID: docs/teaching.md), so the
    last checkpoint is a noisy pick. This is the validation half of a train/validation/test
    protocol: volumes the model never saw, and seeds (:data:`VALIDATION_SEED`) that differ from
    the ones ``hagan evaluate`` reports with by default, so the numbers that chose a checkpoint
    are not the numbers that report on it. Two distances from the real data, each in units of
    its tolerance, and the worse of them is the score (lower is better; <= 1 is within both):

    * diversity: ``|ms_gen - ms_real| / DIVERSITY_TOLERANCE``, the mean MS-SSIM of 100 random
      pairs of ``n`` generated volumes against the same for the held-out volumes. Both ways:
      samples far more alike than real volumes are mode collapse, and samples far less alike
      (towards noise) are not as varied as the cohort either;
    * fidelity: ``FID(generated, held-out) / FID(train, held-out) / FID_RATIO_TOLERANCE``, in
      the features of seeded random 3D networks (the real-vs-real FID is the unit), averaged
      over the networks of ``extractor_seeds``: with 32 samples, one random network's FID
      ranks checkpoints noticeably differently from another's (docs/teaching.md).

    Args:
        train: The run's training volumes (a dataset of (1, S, S, S), or (volume, label) items).
        heldout: Its held-out volumes (at least 2), never trained on.
        size: Cube side S.
        device: Where the generator and the feature network run.
        n: Generated volumes per validation.
        seed: Seed of the latents and the pairs.
        extractor_seeds: Seeds of the random feature networks (:class:`hagan.features.
            RandomFeatureNet`); not 0, the one ``hagan evaluate`` uses by default.
        labels: Class labels to draw from for a conditional generator (None: unconditional).

    Raises:
        DataError: fewer than 2 held-out volumes.
    """

    def __init__(self, train: Any, heldout: Any, size: int, device: str | torch.device = "cpu",
                 n: int = VALIDATION_SAMPLES, seed: int = VALIDATION_SEED,
                 labels: list[int] | None = None,
                 extractor_seeds: tuple[int, ...] = VALIDATION_EXTRACTORS) -> None:
        if len(heldout) < 2:
            raise DataError(explain("validation (keep_best_from)", "at least 2 held-out volumes",
                                    str(len(heldout)), "Raise holdout_fraction or add volumes."))
        self.n, self.seed, self.device = n, seed, torch.device(device)
        self.labels = (np.random.default_rng(seed).choice(labels, n).tolist() if labels
                       else None)
        with torch.random.fork_rng(devices=[]):  # layer init draws from the global RNG
            self.extractors = [build_extractor("random", size=size, device=self.device,
                                               seed=s, progress=False) for s in extractor_seeds]
        self.heldout_features = [ext(heldout) for ext in self.extractors]
        self.fid_real = [fid(ext(train), held) for ext, held in zip(self.extractors,
                                                                   self.heldout_features)]
        self.ms_ssim_real = diversity(heldout, seed=seed, device=self.device)

    @torch.no_grad()
    def __call__(self, G: Generator) -> dict[str, float]:
        """Score ``G`` (left in the train/eval mode it came in).

        Returns:
            ``val_ms_ssim`` (generated pairs), ``val_ms_ssim_real`` (held-out pairs),
            ``val_fid_ratio`` and ``val_score``, rounded to 4 decimals.
        """
        from .generate import sample

        was_training = G.training
        fake = sample(G, self.n, batch_size=2, labels=self.labels, seed=self.seed,
                      device=self.device)
        G.train(was_training)
        ms = diversity(fake, seed=self.seed, device=self.device)
        ratio = float(np.mean([fid(ext(fake), held) / real for ext, held, real in
                               zip(self.extractors, self.heldout_features, self.fid_real)]))
        score = max(abs(ms - self.ms_ssim_real) / DIVERSITY_TOLERANCE, ratio / FID_RATIO_TOLERANCE)
        return {"val_ms_ssim": round(ms, 4), "val_ms_ssim_real": round(self.ms_ssim_real, 4),
                "val_fid_ratio": round(ratio, 4), "val_score": round(score, 4)}


# ---------------------------------------------------------------------------------------------
# evaluate(): generated vs real, next to real vs real
# ---------------------------------------------------------------------------------------------
def split_halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of n real volumes: (train indices, held-out indices), sizes ceil/floor n/2."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n // 2:]), np.sort(perm[:n // 2])


def real_features(extractor: FeatureExtractor, dataset: Any, root: PathLike, size: int,
                  cache_dir: PathLike | None) -> np.ndarray:
    """Features of every volume of a prepared dataset, cached under ``cache_dir`` (None: no
    cache) with the key of :func:`cache_key`."""
    key = cache_key(extractor.name, extractor.weights_hash, size, data_fingerprint(root))
    path = None if cache_dir is None else Path(cache_dir) / f"features_{key}.npz"
    feats = cached(path, key, lambda: extractor(dataset))
    return feats if len(feats) == len(dataset) else extractor(dataset)


def default_cache_dir(out: PathLike | None, cache_dir: PathLike | None) -> Path | None:
    """Folder of the real-feature cache: ``cache_dir`` if given, else ``.hagan_cache`` next to the
    report ``out`` (inside the command's output folder), else None (no cache: evaluate writes
    nothing outside its output). Keys (:func:`cache_key`) name extractor, weights, size and the
    dataset's fingerprint, so one folder serves several datasets."""
    if cache_dir is not None:
        return Path(cache_dir)
    return None if out is None else Path(out).parent / CACHE_DIRNAME


def _check_request(n: int, extractor: str, weights: PathLike | None, out: PathLike | None,
                   force: bool) -> None:
    """Validate cheap arguments before any model or data is loaded."""
    if n < 2:
        raise ConfigError(explain("--n", "at least 2 generated volumes (a covariance needs two "
                                  "samples)", str(n), "Use e.g. --n 64."))
    check_extractor(extractor, weights)
    if weights is not None and not Path(weights).is_file():
        raise CheckpointError(explain("--weights", "an existing MedicalNet weights file",
                                      f"{weights} (does not exist)",
                                      "Download resnet_N.pth from MedicalNet's release."))
    if out is not None and Path(out).exists() and not force:
        raise RunError(explain("--out", "a report path that does not exist yet",
                               f"{out} (already exists)",
                               "Choose another --out or pass --force."))


def _check_outputs(checkpoint: PathLike, data: PathLike | None, heldout: PathLike | None,
                   weights: PathLike | None, out: PathLike | None,
                   cache_dir: PathLike | None) -> None:
    """Refuse a report path that names a folder, lies inside a prepared dataset or is one of
    the inputs, and a cache folder inside a dataset (:mod:`hagan.fileio` checks)."""
    from .checkpoint import resolve
    from .errors import HaganError
    from .fileio import check_output_file, check_output_outside_dataset

    if out is not None:
        check_output_file(out, "--out")
        try:
            source: Path | None = resolve(checkpoint)  # a run folder's best.pt or newest
        except (HaganError, OSError):
            source = None  # reported when it is loaded
        check_output_outside_dataset(out, "--out",
                                     inputs=(checkpoint, source, data, heldout, weights))
    cache = default_cache_dir(out, cache_dir)
    if cache is not None:
        check_output_outside_dataset(cache, "--cache-dir")


REF_RUN_HELDOUT = "run-heldout"  # the held-out split the run recorded (split.json)
REF_HELDOUT_FOLDER = "heldout-folder"  # --heldout DIR, checked to hold no training volume
REF_TRAIN_SUBSET = "train-subset"  # no held-out set: a seeded half of the training volumes


@dataclass
class Reference:
    """The real volumes an evaluation compares with.

    Attributes:
        kind: :data:`REF_RUN_HELDOUT`, :data:`REF_HELDOUT_FOLDER` or :data:`REF_TRAIN_SUBSET`.
        description: One sentence for the report: where both sets come from.
        train, train_files: The dataset holding the training volumes, and the ones used.
        heldout, heldout_files: The same for the baseline set.
        baseline_label: Name of the baseline set in tables and figures.
    """

    kind: str
    description: str
    train: Any
    train_files: list[str]
    heldout: Any
    heldout_files: list[str]

    @property
    def is_heldout(self) -> bool:
        """True when the baseline volumes are known to be volumes the model never saw."""
        return self.kind != REF_TRAIN_SUBSET

    @property
    def baseline_label(self) -> str:
        return "real-heldout" if self.is_heldout else "real-train-other-half"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "description": self.description,
                "is_heldout": self.is_heldout, "baseline_label": self.baseline_label,
                "train": {"data": str(self.train.root), "n": len(self.train_files)},
                "heldout": {"data": str(self.heldout.root), "n": len(self.heldout_files)}}


def resolve_reference(checkpoint: PathLike, data: PathLike | None, heldout: PathLike | None,
                      cfg: Config, seed: int = 0) -> Reference:
    """Which real volumes an evaluation of ``checkpoint`` uses, never calling a training volume
    held-out.

    * ``heldout`` given: that prepared dataset, refused if any of its volumes is a training
      volume (same folder: by file name; another folder: by SHA-256 of the files).
    * else, when the run recorded a split (``RUN/split.json``, see ``Config.holdout_fraction``)
      with at least 2 held-out volumes: those.
    * else: no held-out set exists. A seeded half of the training volumes stands in, labelled
      "train subset" (not held-out) in the report: its baseline rows and the memorisation check
      then say nothing about generalisation.

    The training volumes are the run's recorded train split, or all of ``data`` when the
    checkpoint records none (e.g. imported weights). ``data`` defaults to the dataset the run
    recorded.

    Raises:
        ConfigError: no ``data`` and none recorded.
        DataError: ``heldout`` holds training volumes, a set is too small, or the recorded
            volumes are missing from ``data``.
    """
    from .checkpoint import read_split, run_folder
    from .data import PreparedDataset

    run = run_folder(checkpoint)
    split = read_split(run) if run is not None else None
    if data is None:
        if split is None:
            raise ConfigError(explain("--data", "the prepared dataset the model was trained on",
                                      f"none given, and {checkpoint} records no dataset",
                                      "Pass --data DIR."))
        data = split.data
    full = PreparedDataset(data, size=cfg.size, num_classes=cfg.num_classes)
    if split is not None:
        if full.root.resolve() != Path(split.data):
            logger.warning("%s is not the dataset the run recorded (%s): matching its volumes "
                           "by file name", full.root, split.data)
        train_files = list(split.train)
        full.select(train_files)  # every training volume must be there
        where = f"{len(train_files)} training volumes of the run (split.json)"
    else:
        train_files = [r.file for r in full.records]
        where = (f"all {len(train_files)} volumes of {data} (this checkpoint records no split, "
                 "so DATA is taken as its training data)")
    if heldout is not None:
        held = PreparedDataset(heldout, size=cfg.size, num_classes=cfg.num_classes)
        seen = _training_volumes_in(held, full, train_files)
        if seen:
            raise DataError(explain(
                f"--heldout {heldout}", "volumes the model never saw",
                f"{len(seen)} of its {len(held)} volumes are training volumes (e.g. {seen[0]})",
                "Pass a folder of unseen volumes, or leave --heldout out to use the run's "
                "recorded held-out split."))
        ref = Reference(REF_HELDOUT_FOLDER, f"held-out: --heldout {heldout} ({len(held)} "
                        f"volumes, none a training volume); train: {where}", full, train_files,
                        held, [r.file for r in held.records])
    elif split is not None and len(split.heldout) >= 2:
        held_files = list(split.heldout)
        full.select(held_files)
        ref = Reference(REF_RUN_HELDOUT, f"held-out: the run's held-out split, "
                        f"{len(held_files)} volumes of {data} kept out of training "
                        f"(holdout_fraction {split.holdout_fraction}); train: {where}",
                        full, train_files, full, held_files)
    else:
        why = (f"the run kept {len(split.heldout)} volume(s) out" if split is not None
               else f"{checkpoint} records no data split")
        a, b = split_halves(len(train_files), seed)
        logger.warning("no held-out volumes (%s): comparing with a half of the training "
                       "volumes instead; pass --heldout DIR for a real baseline", why)
        ref = Reference(REF_TRAIN_SUBSET, f"NOT held-out ({why}): a seeded half (seed {seed}) of "
                        f"the {where} stands in for it; the model saw these volumes, so the "
                        "baseline rows and the memorisation check measure nothing here. Pass "
                        "--heldout DIR.", full, [train_files[i] for i in a], full,
                        [train_files[i] for i in b])
    if min(len(ref.train_files), len(ref.heldout_files)) < 2:
        raise DataError(explain(
            "evaluation", "at least 2 training and 2 held-out real volumes (a covariance needs "
            "two)", f"{len(ref.train_files)} and {len(ref.heldout_files)}",
            "Use more data, or pass --heldout DIR."))
    return ref


def _training_volumes_in(held: Any, train: Any, train_files: list[str]) -> list[str]:
    """Files of ``held`` that are training volumes: by name within one folder, else by content
    (SHA-256 of the .npy files)."""
    from .fileio import sha256_file

    if held.root.resolve() == train.root.resolve():
        names = set(train_files)
        return [r.file for r in held.records if r.file in names]
    index = {r.file: i for i, r in enumerate(train.records)}
    digests = {sha256_file(train.paths[index[f]]) for f in train_files}
    return [r.file for r, p in zip(held.records, held.paths) if sha256_file(p) in digests]


def _features_of(ext: FeatureExtractor, full: Any, files: list[str], size: int,
                 cache_for: Callable[[PathLike], Path | None],
                 memo: dict[Path, np.ndarray]) -> np.ndarray:
    """Features of the volumes ``files`` of a prepared dataset: the whole dataset's features are
    computed once per call of :func:`evaluate` (``memo``) and cached on disk."""
    key = full.root.resolve()
    if key not in memo:
        memo[key] = real_features(ext, full, full.root, size, cache_for(full.root))
    index = {r.file: i for i, r in enumerate(full.records)}
    return memo[key][[index[f] for f in files]]


def evaluate(checkpoint: PathLike, data: PathLike | None = None, extractor: str = "random",
             weights: PathLike | None = None, n: int = 64, out: PathLike | None = None,
             cache_dir: PathLike | None = None, seed: int = 0, device: str = "auto",
             progress: bool = True, heldout: PathLike | None = None, batch_size: int = 2,
             permutations: int = PERMUTATIONS, n_pairs: int = MS_SSIM_PAIRS,
             use_cache: bool = True, force: bool = False) -> dict[str, Any]:
    """Generate ``n`` volumes and compare them with real data, next to real-vs-real baselines.

    The real sets come from :func:`resolve_reference`: the run's training volumes ("train") and
    its recorded held-out volumes, or ``heldout`` (a prepared dataset checked to hold no training
    volume); without either, a half of the training volumes stands in and the report says it is
    not held-out. As in the published evaluation, FID and MMD (published kernel, :func:`mmd`)
    compare generated features with the held-out features (the reference), next to the training
    features against the same reference (the real-vs-real baseline); MS-SSIM diversity compares
    random pairs of generated and of training volumes; memorisation compares
    nearest-train-neighbour distances of generated and held-out volumes.

    Args:
        checkpoint: Kit checkpoint file, run folder or weights file.
        data: Prepared dataset the model was trained on (default: the one the run recorded).
        extractor: One of :data:`hagan.features.EXTRACTORS`.
        weights: MedicalNet weights file, for ``medicalnet*`` only.
        n: Generated volumes.
        out: JSON report path (refused if it exists, unless ``force``).
        cache_dir: Where real features are cached (default: ``.hagan_cache`` next to ``out``;
            no cache without ``out``: nothing outside the output folder is written).
        seed: Seed of latent draws, pairs, permutations (and of the stand-in half).
        heldout: Prepared dataset of volumes the model never saw (overrides the run's split).
        permutations: MMD permutation-test draws (0: no p-values).
        n_pairs: Random pairs for MS-SSIM.

    Returns:
        The report (also written to ``out``): metadata naming extractor, weights SHA-256, N,
        resolution and the ``reference`` used, and ``metrics`` with each generated value next to
        its real baseline.
    """
    from .checkpoint import load_checkpoint, load_models, resolve
    from .generate import sample
    from .runtime import resolve_device

    _check_request(n, extractor, weights, out, force)
    _check_outputs(checkpoint, data, heldout, weights, out, cache_dir if use_cache else None)
    start = time.perf_counter()
    dev = resolve_device(device)
    model_file = resolve(checkpoint)  # a run folder's best.pt or newest checkpoint, once
    cfg, nets = load_models(model_file, device=dev)
    try:
        model_step: int | None = load_checkpoint(model_file, mmap=True)["step"]
    except CheckpointError:  # a weights file (hagan export / import-official) has no step
        model_step = None
    if "G" not in nets:
        raise CheckpointError(f"{checkpoint} holds no generator G")
    ref = resolve_reference(checkpoint, data, heldout, cfg, seed)
    ext = build_extractor(extractor, weights, models=nets, size=cfg.size, device=dev,
                          batch_size=batch_size, progress=progress)

    cache = default_cache_dir(out, cache_dir) if use_cache else None

    def cache_for(root: PathLike) -> Path | None:  # one folder: keys name the dataset
        return cache

    memo: dict[Path, np.ndarray] = {}
    train_feats = _features_of(ext, ref.train, ref.train_files, cfg.size, cache_for, memo)
    held_feats = _features_of(ext, ref.heldout, ref.heldout_files, cfg.size, cache_for, memo)
    train_set = ref.train.select(ref.train_files)
    t_real = time.perf_counter()
    labels = (np.random.default_rng(seed).choice(train_set.labels, n).tolist()
              if cfg.num_classes else None)  # conditional: labels drawn like the real data's
    fake = sample(nets["G"], n, batch_size=batch_size, labels=labels, seed=seed, device=dev,
                  progress=progress)
    t_gen = time.perf_counter()
    gen_feats = ext(fake)
    metrics = _compare(gen_feats, train_feats, held_feats, permutations, seed)
    metrics["memorisation"]["valid"] = ref.is_heldout
    _name_closest(metrics["memorisation"], ref.train_files)
    metrics["ms_ssim"] = _diversity_pair(fake, train_set, ref.train.root, ref.train_files,
                                         cfg.size, n_pairs, seed, dev, progress,
                                         cache_for(ref.train.root))
    report = _report(checkpoint, ref, cfg, ext, gen_feats, train_feats, held_feats, seed, dev,
                     metrics)
    report["checkpoint_file"], report["step"] = str(model_file), model_step
    report["seconds"] = {"real_features": round(t_real - start, 2),
                         "generate": round(t_gen - t_real, 2),
                         "total": round(time.perf_counter() - start, 2)}
    if out is not None:
        from .fileio import write_json

        write_json(out, report)
    return report


def _name_closest(mem: dict[str, Any], train_files: list[str]) -> None:
    """Replace memorisation's arrays by the few generated volumes nearest to a training file."""
    order = np.argsort(mem["generated_distances"])[:CLOSEST_LISTED]
    mem["closest"] = [{"generated_index": int(i), "distance": float(mem["generated_distances"][i]),
                       "train_file": train_files[int(mem["nearest_train_index"][i])]}
                      for i in order]
    for key in ("generated_distances", "heldout_distances", "nearest_train_index"):
        del mem[key]


def _report(checkpoint: PathLike, ref: Reference, cfg: Config, ext: FeatureExtractor,
            gen_feats: np.ndarray, train_feats: np.ndarray, held_feats: np.ndarray, seed: int,
            device: torch.device, metrics: dict[str, Any]) -> dict[str, Any]:
    from . import __version__

    return {
        "kind": REPORT_KIND, "hagan_kit_version": __version__, "checkpoint": str(checkpoint),
        "preset": cfg.preset, "resolution": cfg.size, "data": str(ref.train.root),
        "data_sha256": data_fingerprint(ref.train.root),
        "reference": ref.to_dict(), "heldout": ref.description,
        "extractor": ext.name, "weights_sha256": ext.weights_hash,
        "weights_file": ext.weights_file, "feature_dim": int(gen_feats.shape[1]),
        "n_generated": len(gen_feats), "n_real_train": len(train_feats),
        "n_real_heldout": len(held_feats), "seed": seed, "device": str(device),
        "metrics": metrics,
    }


def _compare(gen: np.ndarray, train: np.ndarray, held: np.ndarray, permutations: int,
             seed: int) -> dict[str, Any]:
    """FID and MMD of generated and of training features against the held-out features (the
    reference, as in the published evaluation: ``calculate_fid_fake`` and ``calculate_mmd``
    compare generated volumes with held-out real statistics, ``calculate_fid_real`` the
    training split with the same, as the real-vs-real baseline), and memorisation (nearest
    training neighbours). Each MMD uses the published kernel with the median of its own pooled
    sample."""
    mmd_gen, p_gen = mmd(gen, held, "median", permutations, seed)
    mmd_train, p_train = mmd(train, held, "median", permutations, seed)
    return {
        "fid": {"generated_vs_heldout": fid(gen, held), "train_vs_heldout": fid(train, held)},
        "mmd2": {"generated_vs_heldout": mmd_gen, "generated_p_value": p_gen,
                 "train_vs_heldout": mmd_train, "train_p_value": p_train,
                 "kernel": MMD_KERNEL,
                 "bandwidth_generated": median_bandwidth(np.concatenate([gen, held])),
                 "bandwidth_train": median_bandwidth(np.concatenate([train, held])),
                 "permutations": permutations},
        "memorisation": memorisation(gen, train, held),
    }


def _diversity_pair(fake: torch.Tensor, real: Any, root: PathLike, files: list[str], size: int,
                    n_pairs: int, seed: int, device: torch.device, progress: bool,
                    cache_dir: Path | None) -> dict[str, Any]:
    """Mean MS-SSIM of random generated pairs and of random pairs of the real volumes ``real``
    (``files`` of the dataset at ``root``; their values are cached)."""
    names = hashlib.sha256("\n".join(files).encode()).hexdigest()
    key = hashlib.sha256(f"ms-ssim v2|{size}|{data_fingerprint(root)}|{names}|{n_pairs}|{seed}"
                         .encode()).hexdigest()[:16]
    path = None if cache_dir is None else cache_dir / f"ms_ssim_{key}.npz"
    real_values = cached(path, key, lambda: pairwise_ms_ssim(real, n_pairs, seed, device=device,
                                                             progress=progress))
    gen_values = pairwise_ms_ssim(fake, n_pairs, seed, device=device, progress=progress)
    return {"generated": float(gen_values.mean()), "real": float(real_values.mean()),
            "generated_pairs": len(gen_values), "real_pairs": len(real_values),
            "n_real": len(real), "scales": ms_ssim_scales(size)}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def format_table(report: dict[str, Any]) -> str:
    """The report as a table in which every number names extractor, weights, N and resolution,
    followed by the reference used (held-out or, if none exists, a labelled train subset)."""
    r, m = report, report["metrics"]
    mm, mem, ms = m["mmd2"], m["memorisation"], m["ms_ssim"]
    ref = r.get("reference", {})
    base = ref.get("baseline_label", "real-heldout")
    res = f"{r['resolution']}^3"
    feat = (r["extractor"], r["weights_sha256"][:SHORT_HASH], res)
    vox = ("voxels (no extractor)", "-", res)
    gen = f"{r['n_generated']} vs {r['n_real_heldout']}"
    train = f"{r['n_real_train']} vs {r['n_real_heldout']}"
    nn_gen = f"{r['n_generated']} vs {r['n_real_train']}"
    nn_held = f"{r['n_real_heldout']} vs {r['n_real_train']}"
    rows = [
        ("metric", "comparison", "value", "N", "extractor", "weights sha256", "resolution"),
        ("FID", f"generated vs {base}", _fmt(m["fid"]["generated_vs_heldout"]), gen, *feat),
        ("FID", f"real-train vs {base}", _fmt(m["fid"]["train_vs_heldout"]), train, *feat),
        ("MMD^2 (p)", f"generated vs {base}",
         f"{_fmt(mm['generated_vs_heldout'])} (p={_fmt(mm['generated_p_value'])})", gen, *feat),
        ("MMD^2 (p)", f"real-train vs {base}",
         f"{_fmt(mm['train_vs_heldout'])} (p={_fmt(mm['train_p_value'])})", train, *feat),
        ("NN distance", "generated -> real-train", _fmt(mem["generated_median"]), nn_gen, *feat),
        ("NN distance", f"{base} -> real-train", _fmt(mem["heldout_median"]), nn_held, *feat),
        ("MS-SSIM", "generated pairs", _fmt(ms["generated"]),
         f"{r['n_generated']} ({ms['generated_pairs']} pairs)", *vox),
        ("MS-SSIM", "real-train pairs", _fmt(ms["real"]),
         f"{ms.get('n_real', r['n_real_train'])} ({ms['real_pairs']} pairs)", *vox),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"hagan evaluate: {r['checkpoint']} vs {r['data']}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    if mem.get("valid", True):
        lines.append(f"memorisation: median NN-distance ratio generated/held-out "
                     f"{_fmt(mem['ratio'])}; {mem['fraction_closer_than_any_heldout']:.0%} of "
                     "generated volumes are closer to a training volume than any held-out "
                     "volume is")
    else:
        lines.append("memorisation: not measured (no held-out volumes to compare with)")
    lines.append(f"lower FID / MMD^2 = closer to the {base} reference; the real-train row is "
                 "the real-vs-real baseline. "
                 f"MMD kernel {mm.get('kernel', MMD_KERNEL)}. "
                 f"MS-SSIM ({ms['scales']} scales): lower = more diverse.")
    lines.append(f"Reference: {r['heldout']}")
    return "\n".join(lines)


# --- CLI: hagan evaluate CKPT [--data DIR] [--heldout DIR] [--extractor ...] [--n N] [--out F] -
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run folder (its best.pt, else its newest checkpoint), "
                   "checkpoint or weights file")
    p.add_argument("--data", default=None, help="prepared dataset the model was trained on "
                   "(default: the one the run recorded)")
    p.add_argument("--heldout", default=None,
                   help="prepared dataset of volumes the model never saw (default: the run's "
                   "recorded held-out split; refused if it holds training volumes)")
    p.add_argument("--extractor", default="random", choices=EXTRACTORS,
                   help="feature network: random (offline, seeded), encoder (the checkpoint's "
                   "E^G(E^H(x))) or medicalnetN with --weights (default: random)")
    p.add_argument("--weights", default=None,
                   help="MedicalNet weights file (resnet_N.pth) for --extractor medicalnetN")
    p.add_argument("--n", type=positive_int, default=64, help="generated volumes (default 64)")
    p.add_argument("--out", default=None, help="write the JSON report here")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.add_argument("--cache-dir", default=None,
                   help="cache of real features (default: .hagan_cache next to --out; "
                   "no cache without --out)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of latents, pairs and permutations (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=2,
                   help="volumes per forward pass")
    p.add_argument("--permutations", type=non_negative_int, default=PERMUTATIONS,
                   help=f"MMD permutation-test draws, 0 for none (default {PERMUTATIONS})")
    p.add_argument("--pairs", type=positive_int, default=MS_SSIM_PAIRS,
                   help=f"random pairs for MS-SSIM diversity (default {MS_SSIM_PAIRS})")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true",
                   help="hide the progress bars (hidden anyway when stderr is not a terminal)")


def main(args: argparse.Namespace) -> int:
    import sys
    from contextlib import nullcontext

    from .fileio import lock_file

    if args.out:  # before the lock: its file goes beside --out
        _check_outputs(args.checkpoint, args.data, args.heldout, args.weights, args.out,
                       None if args.no_cache else args.cache_dir)
    with lock_file(args.out, "hagan evaluate") if args.out else nullcontext():
        report = evaluate(args.checkpoint, args.data, extractor=args.extractor,
                          weights=args.weights, n=args.n, out=args.out,
                          cache_dir=args.cache_dir, seed=args.seed, device=args.device,
                          progress=not args.no_progress and sys.stderr.isatty(),
                          heldout=args.heldout, batch_size=args.batch_size,
                          permutations=args.permutations, n_pairs=args.pairs,
                          use_cache=not args.no_cache, force=args.force)
    print(format_table(report))
    if args.out:
        print(f"wrote {args.out}")
    return 0
