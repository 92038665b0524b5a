"""HA-GAN networks: generator (trunk G^A, low-res head G^L, high-res head G^H), discriminator
(D^H + D^L) and the two encoders (E^H, E^G).

References: Sun et al., "Hierarchical Amortized GAN for 3D High Resolution Medical Image
Synthesis", IEEE JBHI 2022 (Fig. 1 shows the parts named here), and the published code
(batmanlab/HA-GAN, ``models/Model_HA_GAN_{128,256}.py``), whose layers, shapes and parameter counts
``Config(size=128|256, width=1)`` reproduces exactly. ``hagan.official`` maps its weight names.

One size rule covers every cube S = 32 ... 256:
  * the trunk goes from a 4^3 grid to the (S/4)^3 feature volume with log2(S/16) nearest-neighbour
    upsamplings, placed before its first convolutions;
  * D^H, D^L and E^G shrink their inputs with as many stride-2 convolutions as needed, taking the
    *last* channel counts of the published 256^3 layer list (this is exactly how the published
    128^3 networks differ from the 256^3 ones).
Dimensions are written (B, C, D, H, W); D is the axial (slab) axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config

NORM_GROUPS = 8  # every GroupNorm of G, E and E^G uses 8 groups (official code)
LEAK = 0.2  # LeakyReLU slope of the discriminator


# ---------------------------------------------------------------------------------------------
# Shared layers
# ---------------------------------------------------------------------------------------------
class SpectralNorm(nn.Module):
    """Mixin-free spectral normalisation in the BigGAN style used by the published code.

    The weight is divided by its largest singular value, estimated with one power iteration per
    forward pass (Miyato et al., ICLR 2018). The estimate ``u0`` is a (1, out) buffer updated only
    in training mode and ``sv0`` records the last sigma, so state dicts carry ``weight``, ``bias``,
    ``u0`` and ``sv0`` like the published ``SNConv3d``/``SNLinear``.
    """

    eps = 1e-12

    def _init_sn(self, out_features: int) -> None:
        self.register_buffer("u0", torch.randn(1, out_features))
        self.register_buffer("sv0", torch.ones(1))

    def normalised_weight(self) -> torch.Tensor:
        weight: torch.Tensor = self.weight  # type: ignore[attr-defined]
        w = weight.reshape(weight.size(0), -1)  # (out, in * k^3); a copy if channels-last
        with torch.no_grad():
            v = F.normalize(self.u0 @ w, eps=self.eps)  # (1, in * k^3)
            u = F.normalize(v @ w.t(), eps=self.eps)  # (1, out)
            if self.training:
                self.u0.copy_(u)
        sigma = ((v @ w.t()) @ u.t()).squeeze()  # differentiable w.r.t. the weight
        if self.training:
            with torch.no_grad():
                self.sv0.copy_(sigma.detach())
        return weight / sigma


class SNConv3d(nn.Conv3d, SpectralNorm):
    """Conv3d with spectral normalisation (discriminator layers)."""

    def __init__(self, *args, **kwargs) -> None:
        nn.Conv3d.__init__(self, *args, **kwargs)
        self._init_sn(self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.normalised_weight(), self.bias)


class SNLinear(nn.Linear, SpectralNorm):
    """Linear layer with spectral normalisation (discriminator head)."""

    def __init__(self, *args, **kwargs) -> None:
        nn.Linear.__init__(self, *args, **kwargs)
        self._init_sn(self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.normalised_weight(), self.bias)


# Nearest x2 upsampling followed by a 3-tap convolution, per axis and output phase p in {0, 1}:
# output 2i+p reads upsampled inputs 2i+p-1 .. 2i+p+1, i.e. original inputs (i-1, i, i) for p = 0
# and (i, i, i+1) for p = 1. So each phase is a 2-tap convolution of the ORIGINAL input whose taps
# are sums of the 3 original taps: _PHASE_TAPS[p] @ (w0, w1, w2).
_PHASE_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],  # p = 0: taps on (i-1, i)
                            [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])  # p = 1: taps on (i, i+1)
# The same map is a stride-2 transposed convolution with 4 taps (padding 1): input i reaches
# outputs 2i-1+k, k = 0..3, so output 2i gets x[i-1] through tap 3 and x[i] through tap 1, and
# output 2i+1 gets x[i] through tap 2 and x[i+1] through tap 0. Tap k = _TRANSPOSED_TAPS[k] @ w.
_TRANSPOSED_TAPS = torch.tensor([[0.0, 0.0, 1.0],   # tap 0: w2        (output 2i+1, input i+1)
                                 [0.0, 1.0, 1.0],   # tap 1: w1 + w2   (output 2i,   input i)
                                 [1.0, 1.0, 0.0],   # tap 2: w0 + w1   (output 2i+1, input i)
                                 [1.0, 0.0, 0.0]])  # tap 3: w0        (output 2i,   input i-1)
# Below this many output channels the transposed form is slower on CPU (paper G^H's last conv,
# 32 -> 1 channel: 23 ms vs 6 ms forward), so those layers keep the sub-pixel form.
MIN_TRANSPOSED_CHANNELS = 8


def phase_weights(weight: torch.Tensor) -> torch.Tensor:
    """The 8 sub-pixel kernels of a 3^3 kernel: (C_out, C_in, 3, 3, 3) -> (8 C_out, C_in, 2, 2, 2),
    output channel ``8 o + 4 p + 2 q + r`` holding phase (p, q, r) of channel o."""
    taps = _PHASE_TAPS.to(weight)
    # (C_out, C_in, 3, 3, 3) -> (C_out, p, q, r, C_in, 2, 2, 2) -> (8 C_out, C_in, 2, 2, 2)
    w = torch.einsum("pad,qbe,rcf,oidef->opqriabc", taps, taps, taps, weight)
    return w.reshape(weight.shape[0] * 8, weight.shape[1], 2, 2, 2)


def _phase_weights_adjoint(grad: torch.Tensor) -> torch.Tensor:
    taps = _PHASE_TAPS.to(grad)
    c_out, c_in = grad.shape[0] // 8, grad.shape[1]
    g = grad.reshape(c_out, 2, 2, 2, c_in, 2, 2, 2)
    return torch.einsum("pad,qbe,rcf,opqriabc->oidef", taps, taps, taps, g)


def transposed_weights(weight: torch.Tensor) -> torch.Tensor:
    """A 3^3 kernel as the kernel of a stride-2 transposed conv that includes the x2 nearest
    upsampling: (C_out, C_in, 3, 3, 3) -> (C_in, C_out, 4, 4, 4)."""
    taps = _TRANSPOSED_TAPS.to(weight)
    return torch.einsum("kd,le,mf,oidef->ioklm", taps, taps, taps, weight).contiguous()


def _transposed_weights_adjoint(grad: torch.Tensor) -> torch.Tensor:
    taps = _TRANSPOSED_TAPS.to(grad)
    return torch.einsum("kd,le,mf,ioklm->oidef", taps, taps, taps, grad)


# form -> (transform of the 3^3 weight, adjoint of that linear transform)
_WEIGHT_FORMS = {"phase": (phase_weights, _phase_weights_adjoint),
                 "transposed": (transposed_weights, _transposed_weights_adjoint)}


class _AttachWeightGrad(torch.autograd.Function):
    """Passes precomputed transformed kernels through; backward maps their gradient to the 3^3
    weight with the adjoint of the (linear) transform."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, transformed: torch.Tensor,  # noqa: ARG004
                form: str) -> torch.Tensor:
        ctx.form = form
        return transformed.view_as(transformed)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return _WEIGHT_FORMS[ctx.form][1](grad), None, None


class UpsampleKernelCache:
    """Keeps the transformed kernels of each 3^3 weight (see :func:`upsample_conv3d`) until that
    weight changes.

    The generator's training passes see the same weights several times: the D step's fake, the
    G step, and after G's update the E^H and E^G steps. Transforming a 512x512 trunk kernel
    costs about 50 ms on 2 CPU cores, so the trainer transforms each weight once per update
    instead of once per pass. An entry is dropped when its weight's storage or version counter
    changes (``load_state_dict``, foreach/for-loop optimizers, any in-place op), but fused
    optimizer steps and writes through ``.data`` leave the version counter alone in torch 2.13:
    whoever updates weights that way must call :meth:`clear` afterwards (the trainer does, after
    every G update). Entries carry no autograd graph: with gradients on,
    :class:`_AttachWeightGrad` routes them to the weight. Transforms run in the weight's own
    precision, outside autocast.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[int, str], tuple[tuple, torch.Tensor]] = {}

    def get(self, weight: torch.Tensor, form: str) -> torch.Tensor:
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, weight.shape)
        entry = self._entries.get((id(weight), form))
        if entry is None or entry[0] != key:
            with torch.no_grad(), torch.autocast(weight.device.type, enabled=False):
                entry = (key, _WEIGHT_FORMS[form][0](weight))
            self._entries[(id(weight), form)] = entry
        if torch.is_grad_enabled() and weight.requires_grad:
            return _AttachWeightGrad.apply(weight, entry[1], form)
        return entry[1]

    def clear(self) -> None:
        self._entries.clear()


def upsample_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    depth_halo: bool = False, out: torch.Tensor | None = None,
                    cache: UpsampleKernelCache | None = None) -> torch.Tensor:
    """``conv3d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)``, exactly
    (to rounding), with 27/8 = 3.4x fewer multiply-adds and without building the upsampled input.

    Per axis, each output phase (even or odd voxel) reads only two original inputs, with taps that
    are sums of the three 3^3 taps. Two equivalent ways to run that:

    * ``C_out >= MIN_TRANSPOSED_CHANNELS``: one stride-2 transposed convolution with a 4^3 kernel
      (:func:`transposed_weights`), which writes the interleaved (2D, 2H, 2W) grid directly.
    * fewer output channels (G^H's last conv): one 2^3 convolution with 8x the output channels,
      one per phase (:func:`phase_weights`), whose outputs are interleaved into the grid.

    Differentiable (used in training too).

    Args:
        x: (B, C_in, D, H, W). With ``depth_halo=True``, its first and last depth slices are the
            neighbours of the wanted block (zeros at the volume boundary) and the result covers
            only the D - 2 inner slices: (B, C_out, 2(D-2), 2H, 2W). This is how G^H runs slab-wise.
        weight: (C_out, C_in, 3, 3, 3); bias: (C_out,) or None.
        out: Optional destination (inference only), e.g. a depth range of a larger volume.
        cache: Optional :class:`UpsampleKernelCache` to reuse the transformed weight.
    """
    c_out = weight.shape[0]
    form = "transposed" if c_out >= MIN_TRANSPOSED_CHANNELS else "phase"
    if cache is None or torch.compiler.is_compiling():
        w = _WEIGHT_FORMS[form][0](weight)
    else:
        w = cache.get(weight, form)
    if form == "transposed":
        # depth_halo: padding 3 drops the two halo slices' own outputs (2 voxels each side)
        y = F.conv_transpose3d(x, w, bias, stride=2, padding=(3 if depth_halo else 1, 1, 1))
        return y if out is None else out.copy_(y)
    b = bias.repeat_interleave(8) if bias is not None else None
    depth_pad = 0 if depth_halo else 1
    if depth_pad and x.shape[2] == 1:
        # torch 2.13's CPU conv3d returns garbage bf16 weight gradients (1e34, NaN) for a depth-1
        # input with depth padding 1 (tiny32's slab features); zero-padding by hand avoids it.
        x, depth_pad = F.pad(x, (0, 0, 0, 0, 1, 1)), 0
    y = F.conv3d(x, w, b, padding=(depth_pad, 1, 1))  # (B, 8 C_out, D'+1, H+1, W+1)
    B, _, d1, h1, w1 = y.shape
    d, h, wd = d1 - 1, h1 - 1, w1 - 1
    if torch.compiler.is_compiling():
        # torch.compile cannot trace the strided view below: 8 slice copies instead (measured on
        # an H100, paper256 batch 4 eager training: 0.179 s/iteration this way, 0.144 s strided).
        y = y.view(B, c_out, 2, 2, 2, d1, h1, w1)
        phases = y.new_empty(B, c_out, d, 2, h, 2, wd, 2)
        for p in (0, 1):
            for q in (0, 1):
                for r in (0, 1):  # phase (p, q, r) of output voxel i reads conv output i + phase
                    phases[:, :, :, p, :, q, :, r] = y[:, :, p, q, r, p:p + d, q:q + h, r:r + wd]
    else:
        # Phase p of output voxel i is conv output i + p of channel block p, so one strided view
        # reads all 8 phases at once (phase stride = channel-block stride + spatial stride).
        y = y.contiguous()
        sb, sc, sd, sh, sw = y.stride()
        phases = y.as_strided((B, c_out, d, 2, h, 2, wd, 2),
                              (sb, 8 * sc, sd, 4 * sc + sd, sh, 2 * sc + sh, sw, sc + sw),
                              y.storage_offset())
    if out is None:
        return phases.reshape(B, c_out, 2 * d, 2 * h, 2 * wd)
    out.view(B, c_out, d, 2, h, 2, wd, 2).copy_(phases)
    return out


def _depth_window(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Depth slices start-1 .. stop of x (B, C, D, H, W), zeros outside the volume."""
    lo, hi = max(start - 1, 0), min(stop + 1, x.shape[2])
    window = x[:, :, lo:hi]
    return F.pad(window, (0, 0, 0, 0, lo - (start - 1), (stop + 1) - hi))


class ConvBlock(nn.Module):
    """Conv3d -> GroupNorm(8) -> ReLU, optionally preceded by a x2 nearest upsampling.

    The upsampling + 3^3 convolution pair runs as one stride-2 transposed convolution
    (:func:`upsample_conv3d`): the same function of the same weights, 3.4x cheaper.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, padding: int = 1,
                 upsample: bool = False) -> None:
        super().__init__()
        self.upsample = upsample
        self.conv = nn.Conv3d(c_in, c_out, kernel, stride, padding)
        self.norm = nn.GroupNorm(NORM_GROUPS, c_out)
        self.kernel_cache: UpsampleKernelCache | None = None  # see Generator.cache_upsample_kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample and self.conv.kernel_size == (3, 3, 3):
            x = upsample_conv3d(x, self.conv.weight, self.conv.bias, cache=self.kernel_cache)
        else:
            if self.upsample:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = self.conv(x)
        # In place: GroupNorm's backward needs its input, not its output, so the output buffer
        # can hold the ReLU (one activation-sized allocation less per block and pass).
        return F.relu(self.norm(x), inplace=True)


def _one_hot(labels: torch.Tensor | None, num_classes: int, batch: int) -> torch.Tensor | None:
    if num_classes == 0:
        return None
    if labels is None:
        raise ValueError(
            f"this is a conditional model with {num_classes} classes: pass labels=<(B,) class "
            "indices> (e.g. torch.zeros(B, dtype=torch.long))"
        )
    labels = torch.as_tensor(labels).long().reshape(-1)
    if labels.numel() != batch:
        raise ValueError(f"expected {batch} labels (one per latent vector), got {labels.numel()}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must be class indices in [0, {num_classes - 1}], got {labels.tolist()}"
        )
    return F.one_hot(labels, num_classes).float()


# ---------------------------------------------------------------------------------------------
# Generator: trunk G^A, low-res head G^L, high-res head G^H
# ---------------------------------------------------------------------------------------------
# Output channels of the five trunk convolutions at width 1 (official tp_conv1..5).
TRUNK_CHANNELS = (512, 512, 256, 128, 64)


class Trunk(nn.Module):
    """G^A: z (+ one-hot label) -> feature volume (B, 64, S/4, S/4, S/4).

    Official: ``Generator.fc1`` and ``tp_conv1..5``/``bn1..5``.
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        ch = [cfg.channels(c) for c in TRUNK_CHANNELS]
        self.start_channels = ch[0]
        self.fc = nn.Linear(cfg.latent_dim + cfg.num_classes, ch[0] * 4**3)
        n_up = cfg.num_upsamplings
        # Upsample before convs 2 .. n_up+1: 256^3 -> 4 upsamplings, 128^3 -> 3, 64^3 -> 2,
        # 32^3 -> 1.
        self.blocks = nn.ModuleList(
            ConvBlock(c_in, c_out, upsample=1 <= i <= n_up)
            for i, (c_in, c_out) in enumerate(zip([ch[0]] + ch[:-1], ch))
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        B = z.shape[0]
        h = self.fc(z).view(B, self.start_channels, 4, 4, 4)  # (B, 512, 4, 4, 4), no activation
        for block in self.blocks:
            h = block(h)
        return h  # (B, 64, S/4, S/4, S/4)


class LowResHead(nn.Module):
    """G^L: features -> the whole image at 1/4 resolution, (B, 1, S/4, S/4, S/4), in [-1, 1].

    Official: ``Generator.sub_G`` (``Sub_Generator``), no upsampling.
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        c_feat, c1, c2 = cfg.channels(64), cfg.channels(32), cfg.channels(16)
        self.blocks = nn.ModuleList([ConvBlock(c_feat, c1), ConvBlock(c1, c2)])
        self.out = nn.Conv3d(c2, 1, 3, 1, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h)
        return torch.tanh(self.out(h))


class HighResHead(nn.Module):
    """G^H: feature slab (B, 64, d, S/4, S/4) -> image slab (B, 1, 4d, S, S), in [-1, 1].

    Two x2 upsamplings, each followed by a 3^3 conv. Official: ``tp_conv6``/``bn6``, ``tp_conv7``.
    Fully convolutional, so it also maps the whole feature volume to the whole image.
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        c_feat, c_mid = cfg.channels(64), cfg.channels(32)
        self.block = ConvBlock(c_feat, c_mid, upsample=True)
        self.out = nn.Conv3d(c_mid, 1, 3, 1, 1)
        self.kernel_cache: UpsampleKernelCache | None = None  # see Generator.cache_upsample_kernels

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.block(h)  # (B, 32, 2d, S/2, S/2)
        # x2 nearest upsampling + conv as one sub-pixel conv:
        # (B, 32, 2d, S/2, S/2) -> (B, 1, 4d, S, S)
        return torch.tanh(upsample_conv3d(h, self.out.weight, self.out.bias,
                                          cache=self.kernel_cache))

    @torch.no_grad()
    def forward_chunked(self, h: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """The same as ``forward`` (inference only), ``chunk`` feature slices at a time.

        Peak memory drops from ~5.7 GiB to well under 1 GiB for a 256^3 volume: the
        (B, 32, S/2, S/2, S/2) intermediate is kept (it is needed whole for its GroupNorm
        statistics, which are computed exactly over the full volume), but the upsampled inputs
        and the (B, 32, S, S, S) tensor before the last conv never exist.
        """
        conv, norm = self.block.conv, self.block.norm
        B, _, D, H, W = h.shape
        mid = h.new_empty(B, conv.out_channels, 2 * D, 2 * H, 2 * W)  # (B, 32, 2D, 2H, 2W)
        G, steps = norm.num_groups, range(0, 2 * D, 2 * chunk)
        total = torch.zeros(B, G, dtype=torch.float64, device=h.device)
        for a in range(0, D, chunk):  # 1) upsample + conv, slab-wise with a one-slice halo
            b = min(a + chunk, D)
            piece = upsample_conv3d(_depth_window(h, a, b), conv.weight, conv.bias,
                                    depth_halo=True, out=mid[:, :, 2 * a:2 * b])
            total += piece.reshape(B, G, -1).sum(dim=2, dtype=torch.float64)
        # 2) GroupNorm with exact statistics of the whole volume (two passes), ReLU, in place
        per_channel = conv.out_channels // G
        count = mid[0, 0].numel() * per_channel  # voxels per group
        mean = (total / count).to(mid.dtype)  # (B, G)
        var = torch.zeros_like(total)
        for a in steps:
            piece = mid[:, :, a:a + 2 * chunk].reshape(B, G, -1)
            var += ((piece - mean[:, :, None]) ** 2).sum(dim=2, dtype=torch.float64)
        var = (var / count).to(mid.dtype)
        scale = (var + norm.eps).rsqrt().repeat_interleave(per_channel, dim=1)  # (B, C)
        shift = norm.bias - mean.repeat_interleave(per_channel, dim=1) * scale * norm.weight
        scale = (scale * norm.weight)[:, :, None, None, None]
        shift = shift[:, :, None, None, None]
        for a in steps:
            mid[:, :, a:a + 2 * chunk].mul_(scale).add_(shift).clamp_(min=0)
        # 3) upsample + last conv + tanh, slab-wise
        out = h.new_empty(B, 1, 4 * D, 4 * H, 4 * W)
        for a in range(0, 2 * D, 2 * chunk):
            b = min(a + 2 * chunk, 2 * D)
            upsample_conv3d(_depth_window(mid, a, b), self.out.weight, self.out.bias,
                            depth_halo=True, out=out[:, :, 2 * a:2 * b]).tanh_()
        return out


class Generator(nn.Module):
    """The HA-GAN generator: G^A (trunk) shared by G^L (low-res head) and G^H (high-res head).

    * Training: ``slab, low = G(z, crop=c)`` runs the trunk, G^L on all features and G^H on the
      feature slab starting at depth ``c // 4`` (S/32 deep) -> slab (B, 1, S/8, S, S) and
      low (B, 1, S/4, S/4, S/4). No full-resolution volume is ever built.
    * Inference: ``G.generate(z)`` runs G^H on the whole feature volume -> (B, 1, S, S, S).
    * ``G.decode_slab(features)`` runs G^H alone (how the encoder E^H is trained).
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.size = cfg.size
        self.latent_dim = cfg.latent_dim
        self.num_classes = cfg.num_classes
        self.feature_slab_depth = cfg.feature_slab_depth
        self.trunk = Trunk(cfg)
        self.low_res_head = LowResHead(cfg)
        self.high_res_head = HighResHead(cfg)
        self.kernel_cache: UpsampleKernelCache | None = None  # see cache_upsample_kernels

    def features(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Trunk only: z (B, latent_dim) -> features (B, 64, S/4, S/4, S/4)."""
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        onehot = _one_hot(labels, self.num_classes, z.shape[0])
        if onehot is not None:
            z = torch.cat([z, onehot.to(z)], dim=1)  # (B, latent_dim + num_classes)
        return self.trunk(z)

    def forward(self, z: torch.Tensor, crop: int | torch.Tensor,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass: (slab (B, 1, S/8, S, S), low (B, 1, S/4, S/4, S/4)) for slab start c."""
        h = self.features(z, labels)  # (B, 64, S/4, S/4, S/4)
        low = self.low_res_head(h)  # (B, 1, S/4, S/4, S/4)
        start = int(crop) // 4
        h_slab = h[:, :, start:start + self.feature_slab_depth]  # (B, 64, S/32, S/4, S/4)
        return self.high_res_head(h_slab), low

    def cache_upsample_kernels(self, enabled: bool = True) -> None:
        """Transform each upsampling conv's weight once per change instead of once per pass (see
        :class:`UpsampleKernelCache`). Results are unchanged, but whoever updates the weights with
        a fused optimizer must call ``G.kernel_cache.clear()`` after each step, as the trainer
        does."""
        cache = UpsampleKernelCache() if enabled else None
        self.kernel_cache = cache
        for m in self.modules():
            if isinstance(m, (ConvBlock, HighResHead)):
                m.kernel_cache = cache

    def decode_slab(self, features: torch.Tensor) -> torch.Tensor:
        """G^H alone: features (B, 64, d, S/4, S/4) -> image (B, 1, 4d, S, S)."""
        return self.high_res_head(features)

    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None,
                 chunk: int | None = None) -> torch.Tensor:
        """Full-resolution volume (B, 1, S, S, S) in [-1, 1].

        ``chunk=None`` runs G^H on the whole feature volume in one pass, like the paper;
        ``chunk=k`` (inference only) runs it k feature slices at a time with exact GroupNorm
        statistics: the same volume with far less memory (see ``HighResHead.forward_chunked``).
        """
        h = self.features(z, labels)  # (B, 64, S/4, S/4, S/4)
        if chunk is None:
            return self.high_res_head(h)
        if chunk < 1:
            raise ValueError(f"chunk must be a positive number of feature slices, got {chunk}")
        return self.high_res_head.forward_chunked(h, chunk)


# ---------------------------------------------------------------------------------------------
# Discriminator: D^H (slab + position) and D^L (low-res whole image)
# ---------------------------------------------------------------------------------------------
HIGH_HEAD_CHANNELS = (16, 32, 64)  # isotropic k4s2p1 convs of D^H at width 1 (official conv1..3)
LOW_CHANNELS = (32, 64, 128, 256)  # stride-2 convs of D^L and E^G at width 1


class HighResDiscriminator(nn.Module):
    """D^H: slab (B, 1, S/8, S, S) and its normalised start c/(7S/8) -> (logit, class logits).

    Official: ``Discriminator.conv1..7``, ``fc1``, ``fc2``, ``fc2_class`` (128^3 drops conv1).
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        ch = cfg.channels
        # k4s2p1 convs until the slab is (S/32... ) -> (4, 32, 32): log2(S/32) of them.
        n_head = cfg.num_upsamplings - 1
        head = [ch(c) for c in HIGH_HEAD_CHANNELS[len(HIGH_HEAD_CHANNELS) - n_head:]]
        c_in = [1] + head
        layers: list[nn.Module] = [SNConv3d(a, b, 4, 2, 1) for a, b in zip(c_in, head)]
        c = c_in[-1]  # 64 at width 1 (1 for S=32, whose slab is already 4 x 32 x 32)
        layers += [
            SNConv3d(c, ch(128), (2, 4, 4), 2, (0, 1, 1)),  # (B, 128, 2, 16, 16)
            SNConv3d(ch(128), ch(256), (2, 4, 4), 2, (0, 1, 1)),  # (B, 256, 1, 8, 8)
            SNConv3d(ch(256), ch(512), (1, 4, 4), (1, 2, 2), (0, 1, 1)),  # (B, 512, 1, 4, 4)
            SNConv3d(ch(512), ch(128), (1, 4, 4), 1, 0),  # (B, 128, 1, 1, 1)
        ]
        self.convs = nn.ModuleList(layers)
        self.fc1 = SNLinear(ch(128) + 1, ch(64))
        self.fc2 = SNLinear(ch(64), 1)
        self.fc2_class = SNLinear(ch(64), cfg.num_classes) if cfg.num_classes else None

    def forward(self, slab: torch.Tensor, position: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = slab
        for conv in self.convs:
            h = F.leaky_relu(conv(h), LEAK, inplace=True)  # conv outputs are not saved
        h = h.flatten(1)  # (B, 128); flatten, not squeeze, so batch size 1 works
        h = torch.cat([h, position.to(h).view(-1, 1)], dim=1)  # (B, 129)
        h = F.leaky_relu(self.fc1(h), LEAK, inplace=True)  # (B, 64)
        cls = self.fc2_class(h) if self.fc2_class is not None else None
        return self.fc2(h), cls  # (B, 1), (B, num_classes)


class LowResDiscriminator(nn.Module):
    """D^L: low-res whole image (B, 1, S/4, S/4, S/4) -> (logit, class logits).

    Official: ``Discriminator.sub_D`` (``Sub_Discriminator``), ``conv1..5`` (128^3 drops conv1).
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        n = cfg.num_upsamplings  # stride-2 convs from (S/4)^3 to 4^3
        chans = [cfg.channels(c) for c in LOW_CHANNELS[len(LOW_CHANNELS) - n:]]
        c_in = [1] + chans
        layers: list[nn.Module] = [SNConv3d(a, b, 4, 2, 1) for a, b in zip(c_in, chans)]
        layers.append(SNConv3d(chans[-1], 1 + cfg.num_classes, 4, 1, 0))  # (B, 1 + nc, 1, 1, 1)
        self.convs = nn.ModuleList(layers)
        self.num_classes = cfg.num_classes

    def forward(self, low: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = low
        for conv in self.convs[:-1]:
            h = F.leaky_relu(conv(h), LEAK, inplace=True)  # conv outputs are not saved
        h = self.convs[-1](h).flatten(1)  # (B, 1 + num_classes)
        return h[:, :1], (h[:, 1:] if self.num_classes else None)


class Discriminator(nn.Module):
    """D = (D^H + D^L) / 2, judging (slab, low-res image, slab position) together.

    ``D(slab, low, crop)`` returns ``(logit (B, 1), class_logits (B, nc) or None)``; both are the
    mean of the D^H and D^L outputs, as in the published code.
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.max_slab_start = cfg.max_slab_start
        self.high_res = HighResDiscriminator(cfg)
        self.low_res = LowResDiscriminator(cfg)

    def forward(self, slab: torch.Tensor, low: torch.Tensor, crop: int | torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B = slab.shape[0]
        position = torch.as_tensor(crop, dtype=torch.float32, device=slab.device)
        position = position.expand(B) / self.max_slab_start  # c / (7S/8) in [0, 1]
        logit_h, cls_h = self.high_res(slab, position)
        logit_l, cls_l = self.low_res(low)
        cls = None if cls_h is None or cls_l is None else (cls_h + cls_l) / 2
        return (logit_h + logit_l) / 2, cls


# ---------------------------------------------------------------------------------------------
# Encoders: E^H (slab -> feature slab) and E^G (feature volume -> z)
# ---------------------------------------------------------------------------------------------
class Encoder(nn.Module):
    """E^H: image (B, 1, d, S, S) -> features (B, 64, d/4, S/4, S/4); the inverse of G^H.

    Fully convolutional: it encodes a slab or a whole volume. Official: ``Encoder``.
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        c_half, c_feat = cfg.channels(32), cfg.channels(64)
        self.blocks = nn.ModuleList([
            ConvBlock(1, c_half, 4, 2, 1),  # (B, 32, d/2, S/2, S/2)
            ConvBlock(c_half, c_half, 3, 1, 1),  # (B, 32, d/2, S/2, S/2)
            ConvBlock(c_half, c_feat, 4, 2, 1),  # (B, 64, d/4, S/4, S/4)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class SubEncoder(nn.Module):
    """E^G: feature volume (B, 64, S/4, S/4, S/4) -> z (B, latent_dim); the inverse of G^A.

    Official: ``Sub_Encoder`` (conv1..4 + GN + ReLU, conv5 k4 to 1^3; 128^3 drops conv1).
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        n = cfg.num_upsamplings
        chans = [cfg.channels(c) for c in LOW_CHANNELS[len(LOW_CHANNELS) - n:]]
        c_in = [cfg.channels(64)] + chans
        self.blocks = nn.ModuleList(ConvBlock(a, b, 4, 2, 1) for a, b in zip(c_in, chans))
        self.out = nn.Conv3d(chans[-1], cfg.latent_dim, 4, 1, 0)  # (B, latent, 1, 1, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h)  # ... -> (B, 256, 4, 4, 4)
        return self.out(h).flatten(1)  # (B, latent_dim); flatten so batch size 1 works


def build_models(cfg: Config) -> dict[str, nn.Module]:
    """All four networks of a config: ``{"G", "D", "E", "SubE"}``."""
    return {
        "G": Generator(cfg),
        "D": Discriminator(cfg),
        "E": Encoder(cfg),
        "SubE": SubEncoder(cfg),
    }


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (buffers such as the SN vectors excluded)."""
    return sum(p.numel() for p in module.parameters())
