"""x2 nearest upsampling followed by a 3^3 convolution as one cheaper layer: UpsampleConv3d.

The generator upsamples before most of its convolutions (trunk G^A and high-res head G^H). Per
axis, ``conv3d(interpolate(x, scale_factor=2, mode="nearest"), w, padding=1)`` reads each original
input twice with summed taps, so the pair is exactly a smaller computation on the original input:

* output phase p in {0, 1} (even or odd voxel) is a 2-tap convolution of the original input, whose
  taps are sums of the three 3^3 taps (``_PHASE_TAPS``); all 8 phases of a 3-D voxel run as one
  2^3 convolution with 8x the output channels, then interleave into the (2D, 2H, 2W) grid
  ("sub-pixel" form, :func:`phase_weights`);
* or the same map is one stride-2 transposed convolution with a 4^3 kernel (``_TRANSPOSED_TAPS``),
  which writes the interleaved grid directly ("transposed" form, :func:`transposed_weights`).

Both are the paper's upsample + conv to rounding, with 27/8 = 3.4x fewer multiply-adds and without
building the upsampled input. Nothing here changes what the networks compute; ``hagan.models``
uses the layer where the paper upsamples then convolves. Dimensions are (B, C, D, H, W).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

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
# Below this many output channels the transposed form is slower on CPU (G^H's last conv,
# 32 -> 1 channel; see benchmarks/RESULTS.md), so those layers keep the sub-pixel form.
MIN_TRANSPOSED_CHANNELS = 8


def phase_weights(weight: torch.Tensor) -> torch.Tensor:
    """The 8 sub-pixel kernels of a 3^3 kernel: (C_out, C_in, 3, 3, 3) -> (8 C_out, C_in, 2, 2, 2),
    output channel ``8 o + 4 p + 2 q + r`` holding phase (p, q, r) of channel o."""
    taps = _PHASE_TAPS.to(weight)
    # (C_out, C_in, 3, 3, 3) -> (C_out, p, q, r, C_in, 2, 2, 2) -> (8 C_out, C_in, 2, 2, 2)
    w = torch.einsum("pad,qbe,rcf,oidef->opqriabc", taps, taps, taps, weight)
    return w.reshape(weight.shape[0] * 8, weight.shape[1], 2, 2, 2)


def phase_weights_adjoint(grad: torch.Tensor) -> torch.Tensor:
    """Adjoint of the linear map :func:`phase_weights`: (8 C_out, C_in, 2, 2, 2) -> (C_out, C_in,
    3, 3, 3); turns a gradient w.r.t. the sub-pixel kernels into one w.r.t. the 3^3 weight."""
    taps = _PHASE_TAPS.to(grad)
    c_out, c_in = grad.shape[0] // 8, grad.shape[1]
    g = grad.reshape(c_out, 2, 2, 2, c_in, 2, 2, 2)
    return torch.einsum("pad,qbe,rcf,opqriabc->oidef", taps, taps, taps, g)


def transposed_weights(weight: torch.Tensor) -> torch.Tensor:
    """A 3^3 kernel as the kernel of a stride-2 transposed conv that includes the x2 nearest
    upsampling: (C_out, C_in, 3, 3, 3) -> (C_in, C_out, 4, 4, 4)."""
    taps = _TRANSPOSED_TAPS.to(weight)
    return torch.einsum("kd,le,mf,oidef->ioklm", taps, taps, taps, weight).contiguous()


def transposed_weights_adjoint(grad: torch.Tensor) -> torch.Tensor:
    """Adjoint of the linear map :func:`transposed_weights`: (C_in, C_out, 4, 4, 4) ->
    (C_out, C_in, 3, 3, 3)."""
    taps = _TRANSPOSED_TAPS.to(grad)
    return torch.einsum("kd,le,mf,ioklm->oidef", taps, taps, taps, grad)


Transform = Callable[[torch.Tensor], torch.Tensor]
# form -> (transform of the 3^3 weight, adjoint of that linear transform)
WEIGHT_FORMS: dict[str, tuple[Transform, Transform]] = {
    "phase": (phase_weights, phase_weights_adjoint),
    "transposed": (transposed_weights, transposed_weights_adjoint),
}


def weight_form(out_channels: int) -> str:
    """The faster form for a layer with this many output channels: "transposed" or "phase"."""
    return "transposed" if out_channels >= MIN_TRANSPOSED_CHANNELS else "phase"


class _AttachWeightGrad(torch.autograd.Function):
    """Passes precomputed transformed kernels through; backward maps their gradient to the 3^3
    weight with the adjoint of the (linear) transform."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, transformed: torch.Tensor,  # noqa: ARG004
                form: str) -> torch.Tensor:
        ctx.form = form
        return transformed.view_as(transformed)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return WEIGHT_FORMS[ctx.form][1](grad), None, None


def upsample_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    depth_halo: bool = False, out: torch.Tensor | None = None,
                    transformed: torch.Tensor | None = None) -> torch.Tensor:
    """``conv3d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)``, exactly
    (to rounding), with 27/8 = 3.4x fewer multiply-adds and without building the upsampled input.

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
        transformed: ``weight`` already in its form (see :class:`UpsampleConv3d`'s cache), with
            its gradient routed to ``weight``; None transforms it here.

    Returns:
        (B, C_out, 2D, 2H, 2W), or ``out`` filled with it.
    """
    c_out = weight.shape[0]
    form = weight_form(c_out)
    w = WEIGHT_FORMS[form][0](weight) if transformed is None else transformed
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
    return _interleave(y, c_out, out)


def _interleave(y: torch.Tensor, c_out: int, out: torch.Tensor | None) -> torch.Tensor:
    """Sub-pixel conv output (B, 8 C_out, D+1, H+1, W+1) -> the grid (B, C_out, 2D, 2H, 2W)."""
    B, _, d1, h1, w1 = y.shape
    d, h, wd = d1 - 1, h1 - 1, w1 - 1
    if torch.compiler.is_compiling():
        # torch.compile cannot trace the strided view below: 8 slice copies instead (slower
        # in eager mode, see benchmarks/RESULTS.md).
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


class UpsampleConv3d(nn.Conv3d):
    """x2 nearest upsampling, then a 3^3 convolution with padding 1: (B, C_in, D, H, W) ->
    (B, C_out, 2D, 2H, 2W), computed by :func:`upsample_conv3d`.

    A plain ``nn.Conv3d(C_in, C_out, 3, 1, 1)`` as far as its parameters go (``weight``, ``bias``,
    the same state-dict keys), so checkpoints and the official weight import are unaffected.

    ``cache_kernels = True`` keeps the transformed weight between passes until the weight changes:
    the trainer's four G passes per iteration see the same weights, and transforming a 512x512
    trunk kernel costs tens of ms on a CPU. The layer checks for a change itself on every pass:
    a new storage, dtype, device or version counter, and otherwise an exact comparison with a
    copy of the weight it transformed. The comparison is needed because fused optimizer steps
    (torch 2.13's fused Adam) and writes through ``.data`` leave the version counter alone; it
    reads the weight once, far cheaper than the transform. The cached kernels carry no autograd
    graph: with gradients on, the backward of the transform's adjoint routes their gradient to
    ``weight``. Transforms run in the weight's own precision, outside autocast and outside
    inference mode (so that an inference-mode pass cannot leave kernels that a later training
    pass cannot use); under ``torch.compile`` the cache is bypassed.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, 1, 1)
        self.form = weight_form(out_channels)
        self._cached: tuple[tuple[Any, ...], torch.Tensor, torch.Tensor] | None = None
        self._cache_kernels = False

    @property
    def cache_kernels(self) -> bool:
        """Whether the transformed weight is kept between passes; setting it empties the cache."""
        return self._cache_kernels

    @cache_kernels.setter
    def cache_kernels(self, enabled: bool) -> None:
        self._cache_kernels = enabled
        self._cached = None

    def transformed_weight(self) -> torch.Tensor | None:
        """The weight in this layer's form from the cache (refreshed if the weight changed), or
        None when the cache is off or being compiled (then :func:`upsample_conv3d` transforms)."""
        if not self._cache_kernels or torch.compiler.is_compiling():
            return None
        weight = self.weight
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, weight.shape)
        cached = self._cached
        if cached is None or cached[0] != key or not torch.equal(cached[1], weight):
            # inference_mode(False): kernels cached during an inference-mode pass (e.g. samples
            # drawn between training steps) must stay usable by the next training pass
            with torch.inference_mode(False), torch.no_grad(), \
                    torch.autocast(weight.device.type, enabled=False):
                cached = (key, weight.detach().clone(), WEIGHT_FORMS[self.form][0](weight))
            self._cached = cached
        if torch.is_grad_enabled() and weight.requires_grad:
            return _AttachWeightGrad.apply(weight, cached[2], self.form)
        return cached[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, D, H, W) -> (B, C_out, 2D, 2H, 2W)."""
        return upsample_conv3d(x, self.weight, self.bias, transformed=self.transformed_weight())


def _depth_window(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Depth slices start-1 .. stop of x (B, C, D, H, W), zeros outside the volume."""
    lo, hi = max(start - 1, 0), min(stop + 1, x.shape[2])
    window = x[:, :, lo:hi]
    return F.pad(window, (0, 0, 0, 0, lo - (start - 1), (stop + 1) - hi))


@torch.no_grad()
def chunked_upsample_norm_upsample(h: torch.Tensor, first: UpsampleConv3d, norm: nn.GroupNorm,
                                   last: UpsampleConv3d, chunk: int) -> torch.Tensor:
    """``last(relu(norm(first(h))))`` (inference only), ``chunk`` depth slices of h at a time.

    This is G^H run slab-wise: h (B, C, D, H, W) -> (B, C_last, 4D, 4H, 4W). Peak memory drops
    from ~5.7 GiB to well under 1 GiB for a 256^3 volume: the (B, C_mid, 2D, 2H, 2W) intermediate
    is kept (it is needed whole for its GroupNorm statistics, which are computed exactly over the
    full volume, in float64), but the upsampled inputs and the tensor before the last conv never
    exist. Each convolution reads its block with a one-slice halo (:func:`upsample_conv3d`) and
    transforms its weight itself (no cache, as in one-pass inference).
    """
    B, _, D, H, W = h.shape
    mid = h.new_empty(B, first.out_channels, 2 * D, 2 * H, 2 * W)  # (B, C_mid, 2D, 2H, 2W)
    G, steps = norm.num_groups, range(0, 2 * D, 2 * chunk)
    total = torch.zeros(B, G, dtype=torch.float64, device=h.device)
    for a in range(0, D, chunk):  # 1) upsample + conv, slab-wise with a one-slice halo
        b = min(a + chunk, D)
        piece = upsample_conv3d(_depth_window(h, a, b), first.weight, first.bias,
                                depth_halo=True, out=mid[:, :, 2 * a:2 * b])
        total += piece.reshape(B, G, -1).sum(dim=2, dtype=torch.float64)
    # 2) GroupNorm with exact statistics of the whole volume (two passes), ReLU, in place
    per_channel = first.out_channels // G
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
    # 3) upsample + last conv, slab-wise
    out = h.new_empty(B, last.out_channels, 4 * D, 4 * H, 4 * W)
    for a in range(0, 2 * D, 2 * chunk):
        b = min(a + 2 * chunk, 2 * D)
        upsample_conv3d(_depth_window(mid, a, b), last.weight, last.bias,
                        depth_halo=True, out=out[:, :, 2 * a:2 * b])
    return out
