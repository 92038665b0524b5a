"""Feature extractors: networks that turn volumes into one feature vector each, for the metrics
(FID, MMD, memorisation; :mod:`hagan.metrics`) and the feature-space figures
(:mod:`hagan.analysis`).

Extractors (all return one vector per volume, any cube size unless stated):

* :class:`MedicalNetResNet`: the MedicalNet / Med3D 3D ResNet (Chen et al., "Med3D: Transfer
  Learning for 3D Medical Image Analysis", 2019) at depth 10, 18, 34 or 50, with its dilated
  layer3/layer4, ending in global average pooling instead of the segmentation head. This is the
  network of the official HA-GAN ``fid_score.py`` (ResNet-50, 2048-d features); weights come from
  a user-given MedicalNet file, loaded with ``weights_only=True``.
* :class:`EncoderFeatures`: the kit's trained encoders, z = E^G(E^H(x)) (official ``Sub_E(E(x))``).
* :class:`RandomFeatureNet`: a seeded random conv net, for offline use only.

:func:`build_extractor` wraps any of them in a :class:`FeatureExtractor`, whose ``name`` and
``weights_hash`` go into every report.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import PathLike
from .errors import CheckpointError, ConfigError, explain
from .fileio import load_weights_only, sha256_file
from .runtime import resolve_device

logger = logging.getLogger(__name__)


# depth -> (block type, blocks in layer1..4), as in the Med3D paper and MedicalNet's model zoo
MEDICALNET_LAYOUTS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    10: ("basic", (1, 1, 1, 1)), 18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)), 200: ("bottleneck", (3, 24, 36, 3)),
}
MEDICALNET_DEPTHS = (10, 18, 34, 50)  # the depths offered as extractors
# Shortcut of MedicalNet's published weights (its README): A = zero-padded identity (no
# weights), B = 1x1 conv + BN. Only used for fresh networks; a file's own type is detected.
MEDICALNET_SHORTCUT = {10: "B", 18: "A", 34: "A", 50: "B"}
MEDICALNET_PLANES = (64, 128, 256, 512)  # width of layer1..4 (x4 for bottlenecks)
MEDICALNET_STRIDES = (1, 2, 1, 1)  # only layer2 halves the resolution ...
MEDICALNET_DILATIONS = (1, 1, 2, 4)  # ... layer3/4 dilate instead: output stride 8 (Med3D)
STEM_CHANNELS = 64  # conv1 7^3 stride 2 -> 64 channels, then a 3^3 stride-2 max pool
DATA_PARALLEL_PREFIX = "module."  # MedicalNet saved nn.DataParallel models
SEG_HEAD_PREFIX = "conv_seg."  # MedicalNet's segmentation head, replaced by average pooling
RANDOM_CHANNELS = (8, 16, 32, 64)  # random net: four stride-2 stages, features = their means
RANDOM_SLOPE = 0.2  # LeakyReLU slope of the random net
MAX_LISTED = 4  # names listed in an error message
EXTRACTORS = ("random", "encoder", *(f"medicalnet{d}" for d in MEDICALNET_DEPTHS))
SHORT_HASH = 12  # hex digits of a SHA-256 shown in tables and titles


# ---------------------------------------------------------------------------------------------
# MedicalNet 3D ResNet
# ---------------------------------------------------------------------------------------------
def _conv3(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Conv3d:
    return nn.Conv3d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation,
                     bias=False)


class BasicBlock(nn.Module):
    """Two 3^3 convs (ResNet-10/18/34); weight names as in MedicalNet (conv1, bn1, conv2, bn2)."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, dilation: int,
                 downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3(c_in, planes, stride, dilation), nn.BatchNorm3d(planes)
        self.conv2, self.bn2 = _conv3(planes, planes, 1, dilation), nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1^3 -> 3^3 -> 1^3 convs with 4x expansion (ResNet-50)."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, dilation: int,
                 downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv3d(c_in, planes, 1, bias=False), nn.BatchNorm3d(planes)
        self.conv2, self.bn2 = _conv3(planes, planes, stride, dilation), nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ZeroPadShortcut(nn.Module):
    """Shortcut type A: strided identity with zero channels appended (no weights)."""

    def __init__(self, c_out: int, stride: int) -> None:
        super().__init__()
        self.c_out, self.stride = c_out, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        x = x[:, :, ::s, ::s, ::s]  # (B, C, D/s, H/s, W/s)
        pad = x.new_zeros(x.shape[0], self.c_out - x.shape[1], *x.shape[2:])
        return torch.cat([x, pad], dim=1)  # (B, c_out, D/s, H/s, W/s)


class MedicalNetResNet(nn.Module):
    """Med3D 3D ResNet feature extractor: (B, 1, S, S, S) -> (B, 512 * expansion).

    Args:
        depth: 10, 18, 34 or 50 (101, 152 and 200 are built too, for completeness).
        shortcut: ``"A"`` or ``"B"`` (default: that of MedicalNet's published weights).
    """

    layer1: nn.Sequential  # layer1..4 are added by name in __init__
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, depth: int = 50, shortcut: str | None = None) -> None:
        super().__init__()
        if depth not in MEDICALNET_LAYOUTS:
            raise ValueError(f"MedicalNet depth must be one of {tuple(MEDICALNET_LAYOUTS)}, "
                             f"not {depth}")
        kind, blocks = MEDICALNET_LAYOUTS[depth]
        self.depth, self.shortcut = depth, shortcut or MEDICALNET_SHORTCUT.get(depth, "B")
        block = BasicBlock if kind == "basic" else Bottleneck
        self.conv1 = nn.Conv3d(1, STEM_CHANNELS, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(STEM_CHANNELS)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        c_in = STEM_CHANNELS
        for i, (planes, n, stride, dilation) in enumerate(
                zip(MEDICALNET_PLANES, blocks, MEDICALNET_STRIDES, MEDICALNET_DILATIONS)):
            layers = []
            for j in range(n):
                c_out, s = planes * block.expansion, stride if j == 0 else 1
                down = self._shortcut(c_in, c_out, s) if j == 0 else None
                layers.append(block(c_in, planes, s, dilation, down))
                c_in = c_out
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        self.out_features = c_in
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _shortcut(self, c_in: int, c_out: int, stride: int) -> nn.Module | None:
        if stride == 1 and c_in == c_out:
            return None
        if self.shortcut == "A":
            return ZeroPadShortcut(c_out, stride)
        return nn.Sequential(nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False),
                             nn.BatchNorm3d(c_out))

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(volume))))  # (B, 64, S/4, S/4, S/4)
        x = self.layer1(x)  # (B, 64e, S/4, S/4, S/4), e = block expansion
        x = self.layer2(x)  # (B, 128e, S/8, S/8, S/8)
        x = self.layer4(self.layer3(x))  # (B, 512e, S/8, S/8, S/8), dilated
        return x.mean(dim=(2, 3, 4))  # (B, 512e): global average pooling


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


def read_weights(path: PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a torch file (``{'state_dict': ...}`` or bare), ``module.`` stripped and
    MedicalNet's ``conv_seg.*`` head dropped. Loads with ``weights_only=True``.

    Raises:
        CheckpointError: no such file, unreadable, unsafe, or not a dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(explain("--weights", "an existing MedicalNet weights file",
                                      f"weights file {path} (does not exist)",
                                      "Download MedicalNet's resnet_<depth>.pth "
                                      "(github.com/Tencent/MedicalNet) or use --extractor random "
                                      "offline."))
    obj = load_weights_only(path, "MedicalNet weights file")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state_dict (a dict of tensors, optionally "
                              "under 'state_dict')")
    state = {(k[len(DATA_PARALLEL_PREFIX):] if k.startswith(DATA_PARALLEL_PREFIX) else k): v
             for k, v in obj.items()}
    return {k: v for k, v in state.items() if not k.startswith(SEG_HEAD_PREFIX)}


def identify_medicalnet(state: Mapping[str, torch.Tensor]) -> tuple[int, str] | None:
    """(depth, shortcut type) of MedicalNet ResNet weights, from their key names; else None."""
    if "conv1.weight" not in state:
        return None
    blocks = []
    for layer in range(1, 5):
        idx = {int(k.split(".")[1]) for k in state
               if k.startswith(f"layer{layer}.") and k.split(".")[1].isdigit()}
        if not idx:
            return None
        blocks.append(max(idx) + 1)
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    depth = next((d for d, layout in MEDICALNET_LAYOUTS.items()
                  if layout == (kind, tuple(blocks))), None)
    shortcut = "B" if any(".downsample." in k for k in state) else "A"
    return None if depth is None else (depth, shortcut)


def load_medicalnet(path: PathLike, depth: int) -> tuple[MedicalNetResNet, str]:
    """A MedicalNet ResNet with weights from ``path``, and the file's SHA-256 (also logged).

    Raises:
        CheckpointError: the file is not MedicalNet ResNet weights, or of another depth, or a
            tensor has the wrong shape. The message names the file and the fix.
    """
    state = read_weights(path)
    digest = sha256_file(path)
    logger.info("MedicalNet weights %s: sha256 %s", path, digest)
    found = identify_medicalnet(state)
    if found is None:
        raise CheckpointError(f"{path} does not hold MedicalNet 3D ResNet weights: expected keys "
                              f"such as conv1.weight and layer1.0.conv1.weight, found "
                              f"{_listed(sorted(state))}")
    if found[0] != depth:
        fix = (f"use --extractor medicalnet{found[0]}" if found[0] in MEDICALNET_DEPTHS
               else f"hagan-kit offers depths {MEDICALNET_DEPTHS}")
        raise CheckpointError(f"{path} holds MedicalNet ResNet-{found[0]} weights, not "
                              f"ResNet-{depth}; {fix}")
    with torch.device("meta"):  # no memory or init work: every tensor comes from the file
        net = MedicalNetResNet(depth, shortcut=found[1])
    expected = net.state_dict()
    for key in expected:  # files from PyTorch < 0.4.1 lack the BN counters (unused in eval)
        if key.endswith("num_batches_tracked"):
            state.setdefault(key, torch.tensor(0))
    problems = sorted(set(expected) ^ set(state)) + sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
        if k in state and state[k].shape != v.shape)
    if problems:
        raise CheckpointError(f"{path}: the weights do not fit a MedicalNet ResNet-{depth} "
                              f"(mismatched: {_listed(problems)})")
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                        assign=True)
    return net, digest


# ---------------------------------------------------------------------------------------------
# Random network and the kit's encoders
# ---------------------------------------------------------------------------------------------
class RandomFeatureNet(nn.Module):
    """A seeded random 3D conv net: four 3^3 stride-2 convs with He-normal weights and LeakyReLU;
    features are the channel means of every stage, concatenated: (B, 1, S, S, S) -> (B, 120).

    Random features separate distributions surprisingly well (Naeem et al., ICML 2020) but carry
    no medical prior: use them offline and for teaching, never to compare with published numbers.
    The same seed gives the same weights on every machine (CPU generator).
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        gain = math.sqrt(2.0 / (1.0 + RANDOM_SLOPE**2))  # He init for LeakyReLU
        self.stages = nn.ModuleList()
        c_in = 1
        for c in RANDOM_CHANNELS:
            conv = nn.Conv3d(c_in, c, 3, stride=2, padding=1, bias=False)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen)
                                  * gain / math.sqrt(c_in * 27))
            self.stages.append(conv)
            c_in = c
        self.out_features = sum(RANDOM_CHANNELS)
        self.requires_grad_(False)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        x, features = volume, []
        for conv in self.stages:  # (B, C_k, S/2^k, S/2^k, S/2^k) at stage k
            x = F.leaky_relu(conv(x), RANDOM_SLOPE)
            features.append(x.mean(dim=(2, 3, 4)))
        return torch.cat(features, dim=1)  # (B, 120)


class EncoderFeatures(nn.Module):
    """The kit's encoders as an extractor: (B, 1, S, S, S) -> z = E^G(E^H(x)), (B, latent_dim)."""

    def __init__(self, encoder_h: nn.Module, encoder_g: nn.Module) -> None:
        super().__init__()
        self.encoder_h, self.encoder_g = encoder_h, encoder_g

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        features = self.encoder_h(volume)  # (B, 64, S/4, S/4, S/4)
        return self.encoder_g(features)  # (B, latent_dim)


def hash_state_dict(*modules: nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the modules' state dicts."""
    h = hashlib.sha256()
    for module in modules:
        for key, t in sorted(module.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# FeatureExtractor
# ---------------------------------------------------------------------------------------------
def volume_at(volumes: Any, index: int) -> torch.Tensor:
    """Item ``index`` of a tensor/array (N, 1, S, S, S) or a dataset, as a (1, S, S, S) tensor."""
    item = volumes[index]
    if isinstance(item, (tuple, list)):  # (volume, label) from a conditional dataset
        item = item[0]
    return torch.as_tensor(item, dtype=torch.float32)


class FeatureExtractor:
    """Volumes (N, 1, S, S, S) in [-1, 1] -> features (N, F) float64, batch by batch.

    Attributes:
        name: What the features are, e.g. ``"medicalnet50"`` or ``"random (seed 0)"``.
        weights_hash: SHA-256 of the weights (of the file, for MedicalNet).
        size: Required cube side, or None for any (only the kit's encoders need their own size).
        feature_dim: F (known after the first call for the encoder).

    Example:
        >>> extractor = build_extractor("random", seed=0, device="cpu", progress=False)
        >>> extractor(torch.zeros(2, 1, 32, 32, 32)).shape, extractor.name
        ((2, 120), 'random (seed 0)')
    """

    def __init__(self, net: nn.Module, name: str, weights_hash: str,
                 device: str | torch.device = "auto", batch_size: int = 2,
                 progress: bool = True, size: int | None = None,
                 weights_file: str | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.net = net.to(self.device).eval()
        self.name, self.weights_hash, self.size = name, weights_hash, size
        self.batch_size, self.progress, self.weights_file = batch_size, progress, weights_file
        self.feature_dim: int | None = getattr(net, "out_features", None)  # else set on use

    @property
    def short_hash(self) -> str:
        """The first hex digits of ``weights_hash``, as printed in tables."""
        return self.weights_hash[:SHORT_HASH]

    def __repr__(self) -> str:
        return f"FeatureExtractor({self.name!r}, weights sha256 {self.short_hash})"

    def _batch(self, volumes: Any, start: int) -> torch.Tensor:
        stop = min(start + self.batch_size, len(volumes))
        if isinstance(volumes, (torch.Tensor, np.ndarray)):
            batch = torch.as_tensor(volumes[start:stop], dtype=torch.float32)
        else:
            batch = torch.stack([volume_at(volumes, i) for i in range(start, stop)])
        if batch.dim() != 5 or batch.shape[1] != 1:
            raise ValueError(f"expected volumes (N, 1, D, H, W), got a batch of shape "
                             f"{tuple(batch.shape)}")
        if self.size is not None and tuple(batch.shape[2:]) != (self.size,) * 3:
            raise ValueError(f"{self.name} takes {self.size}^3 volumes, got "
                             f"{tuple(batch.shape[2:])}; resample the data to {self.size}^3")
        return batch

    @torch.inference_mode()
    def __call__(self, volumes: Any) -> np.ndarray:
        """Features of a tensor/array (N, 1, S, S, S) or a dataset of (1, S, S, S) items."""
        from tqdm import tqdm  # the text bar: a notebook widget bar is saved at 0 %

        out = []
        for start in tqdm(range(0, len(volumes), self.batch_size), desc=f"features {self.name}",
                          disable=not self.progress, leave=False):
            batch = self._batch(volumes, start).to(self.device)
            out.append(self.net(batch).double().cpu().numpy())
        if not out:
            raise ValueError("no volumes to extract features from")
        features = np.concatenate(out)
        self.feature_dim = features.shape[1]
        return features


def check_extractor(kind: str, weights: PathLike | None) -> None:
    """Raise ConfigError unless ``kind`` is known and ``weights`` go with MedicalNet, only."""
    if kind not in EXTRACTORS:
        raise ConfigError(explain("--extractor", f"one of {', '.join(EXTRACTORS)}", repr(kind)))
    if kind.startswith("medicalnet") != (weights is not None):
        raise ConfigError(explain(
            "--weights", f"a weights FILE for {', '.join(EXTRACTORS[2:])} (MedicalNet's "
            "resnet_<depth>.pth) and only for them", f"extractor {kind!r} and weights {weights}",
            "Pass --weights FILE with --extractor medicalnetN, and not with the others."))


def build_extractor(kind: str = "random", weights: PathLike | None = None,
                    models: Mapping[str, nn.Module] | None = None, size: int | None = None,
                    device: str | torch.device = "auto", batch_size: int = 2, seed: int = 0,
                    progress: bool = True) -> FeatureExtractor:
    """Build one of :data:`EXTRACTORS`.

    Args:
        kind: ``random``, ``encoder`` or ``medicalnet10/18/34/50``.
        weights: MedicalNet weights file (required for, and only for, ``medicalnet*``).
        models: ``{"E": ..., "SubE": ...}`` from :func:`hagan.checkpoint.load_models`
            (required for ``encoder``), with ``size`` their cube side.
        seed: Seed of the random network's weights.

    Raises:
        ValueError: unknown kind, or weights/models missing or given where they do not belong.
    """
    check_extractor(kind, weights)
    common: dict[str, Any] = dict(device=device, batch_size=batch_size, progress=progress)
    if kind == "random":
        random_net = RandomFeatureNet(seed)
        return FeatureExtractor(random_net, f"random (seed {seed})", hash_state_dict(random_net),
                                **common)
    if kind == "encoder":
        if not models or "E" not in models or "SubE" not in models:
            raise CheckpointError(explain("--extractor encoder", "a checkpoint with the encoders "
                                          "E and SubE", "none"))
        encoders = EncoderFeatures(models["E"], models["SubE"])
        return FeatureExtractor(encoders, "encoder E^G(E^H(x))", hash_state_dict(encoders),
                                size=size, **common)
    assert weights is not None  # check_extractor refuses medicalnet* without weights
    resnet, digest = load_medicalnet(weights, int(kind[len("medicalnet"):]))
    return FeatureExtractor(resnet, kind, digest, weights_file=str(weights), **common)
