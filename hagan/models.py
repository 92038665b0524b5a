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

from typing import TYPE_CHECKING, Literal, overload

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config
from .slab import crop_feature_slab, slab_position
from .upsample import UpsampleConv3d, chunked_upsample_norm_upsample

NORM_GROUPS = 8  # every GroupNorm of G, E and E^G uses 8 groups (official code)
LEAK = 0.2  # LeakyReLU slope of the discriminator


def minibatch_std(h: torch.Tensor) -> torch.Tensor:
    """Append one channel: the standard deviation of ``h`` (B, C, ...) across the batch,
    averaged over channels and positions, broadcast to every sample -> (B, C + 1, ...).

    Not in HA-GAN: the minibatch standard deviation of Karras et al., "Progressive Growing of
    GANs", ICLR 2018, section 3. D sees how varied a batch is, so a generator that answers every
    z with the same volume is easy to tell apart: a cure for mode collapse on small cohorts.
    The whole batch is one group; the trainer passes real and generated volumes in separate D
    calls (the published D step), so each batch is of one kind. A batch of one gives 0.
    """
    std = h.float().var(dim=0, unbiased=False).add(1e-8).sqrt().mean()  # a scalar
    return torch.cat([h, std.to(h.dtype).expand(h.shape[0], 1, *h.shape[2:])], dim=1)


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
    weight: torch.Tensor  # of the layer it is mixed into
    u0: torch.Tensor
    sv0: torch.Tensor

    def _init_sn(self, out_features: int) -> None:
        self.register_buffer("u0", torch.randn(1, out_features))
        self.register_buffer("sv0", torch.ones(1))

    def normalised_weight(self) -> torch.Tensor:
        weight = self.weight
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


class ConvBlock(nn.Module):
    """Conv3d -> GroupNorm(8) -> ReLU, optionally preceded by a x2 nearest upsampling.

    With ``upsample=True`` the upsampling and the 3^3 convolution are one layer,
    :class:`~hagan.upsample.UpsampleConv3d` (the same function of the same ``conv.weight``).
    """

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, padding: int = 1,
                 upsample: bool = False) -> None:
        super().__init__()
        self.upsample = upsample
        if upsample and (kernel, stride, padding) != (3, 1, 1):
            raise ValueError("an upsampling ConvBlock has a 3^3 conv with stride 1, padding 1")
        self.conv = UpsampleConv3d(c_in, c_out) if upsample else nn.Conv3d(
            c_in, c_out, kernel, stride, padding)
        self.norm = nn.GroupNorm(NORM_GROUPS, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
        self.out = UpsampleConv3d(c_mid, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.block(h)  # (B, 32, 2d, S/2, S/2)
        return torch.tanh(self.out(h))  # x2 upsampling + conv: (B, 1, 4d, S, S)

    @torch.no_grad()
    def forward_chunked(self, h: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """The same as ``forward`` (inference only), ``chunk`` feature slices at a time, with the
        GroupNorm statistics of the whole volume: far less memory for a 256^3 volume (see
        :func:`hagan.upsample.chunked_upsample_norm_upsample`)."""
        block = self.block
        assert isinstance(block.conv, UpsampleConv3d)
        return chunked_upsample_norm_upsample(h, block.conv, block.norm, self.out, chunk).tanh_()


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
        h_slab = crop_feature_slab(h, int(crop))  # (B, 64, S/32, S/4, S/4) at c // 4
        return self.high_res_head(h_slab), low

    def cache_upsample_kernels(self, enabled: bool = True) -> None:
        """Let each upsampling conv keep its transformed weight until the weight changes, instead
        of transforming it in every pass (see :class:`~hagan.upsample.UpsampleConv3d`). Results
        are unchanged; the trainer turns it on (four G passes per update)."""
        for m in self.modules():
            if isinstance(m, UpsampleConv3d):
                m.cache_kernels = enabled  # (re)starts with an empty cache

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
        self.extra = int(cfg.d_minibatch_std)  # the minibatch-std channel before the last conv
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
            # + 1 input channel with cfg.d_minibatch_std (not in the paper)
            SNConv3d(ch(512) + self.extra, ch(128), (1, 4, 4), 1, 0),  # (B, 128, 1, 1, 1)
        ]
        self.convs = nn.ModuleList(layers)
        self.fc1 = SNLinear(ch(128) + 1, ch(64))
        self.fc2 = SNLinear(ch(64), 1)
        self.fc2_class = SNLinear(ch(64), cfg.num_classes) if cfg.num_classes else None

    def forward(self, slab: torch.Tensor, position: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = slab
        for conv in self.convs[:-1]:
            h = F.leaky_relu(conv(h), LEAK, inplace=True)  # conv outputs are not saved
        if self.extra:
            h = minibatch_std(h)  # (B, 513, 1, 4, 4)
        h = F.leaky_relu(self.convs[-1](h), LEAK, inplace=True)
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
        self.extra = int(cfg.d_minibatch_std)  # the minibatch-std channel before the last conv
        layers.append(SNConv3d(chans[-1] + self.extra, 1 + cfg.num_classes, 4, 1, 0))
        self.convs = nn.ModuleList(layers)  # last: (B, 1 + nc, 1, 1, 1)
        self.num_classes = cfg.num_classes

    def forward(self, low: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = low
        for conv in self.convs[:-1]:
            h = F.leaky_relu(conv(h), LEAK, inplace=True)  # conv outputs are not saved
        if self.extra:
            h = minibatch_std(h)  # (B, 257, 4, 4, 4)
        h = self.convs[-1](h).flatten(1)  # (B, 1 + num_classes)
        return h[:, :1], (h[:, 1:] if self.num_classes else None)


class Discriminator(nn.Module):
    """D = (D^H + D^L) / 2, judging (slab, low-res image, slab position) together.

    ``D(slab, low, crop)`` returns ``(logit (B, 1), class_logits (B, nc) or None)``; both are the
    mean of the D^H and D^L outputs, as in the published code. ``cfg.low_res_critic=False``
    (an ablation, not the paper) leaves D^L out: its place answers 0, so D = D^H / 2.
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.size = cfg.size
        self.high_res = HighResDiscriminator(cfg)
        self.low_res = LowResDiscriminator(cfg) if cfg.low_res_critic else None

    def forward(self, slab: torch.Tensor, low: torch.Tensor, crop: int | torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B = slab.shape[0]
        start = torch.as_tensor(crop, dtype=torch.float32, device=slab.device).expand(B)
        position = torch.as_tensor(slab_position(start, self.size))  # c / (7S/8) in [0, 1]
        logit_h, cls_h = self.high_res(slab, position)
        if self.low_res is not None:
            logit_l, cls_l = self.low_res(low)
        else:  # the ablation without D^L
            logit_l = torch.zeros_like(logit_h)
            cls_l = None if cls_h is None else torch.zeros_like(cls_h)
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


class Networks(dict[str, nn.Module]):
    """The kit's networks by name: ``G``, ``D``, ``E`` (E^H), ``SubE`` (E^G), or a subset.

    At run time a dict with nothing added; for type checkers ``nets["G"]`` is a :class:`Generator`,
    ``nets["D"]`` a :class:`Discriminator`, and so on (any other key: ``nn.Module``).
    """

    if TYPE_CHECKING:  # typed lookups only; no code of its own
        @overload
        def __getitem__(self, key: Literal["G"], /) -> Generator: ...
        @overload
        def __getitem__(self, key: Literal["D"], /) -> Discriminator: ...
        @overload
        def __getitem__(self, key: Literal["E"], /) -> Encoder: ...
        @overload
        def __getitem__(self, key: Literal["SubE"], /) -> SubEncoder: ...
        @overload
        def __getitem__(self, key: str, /) -> nn.Module: ...
        def __getitem__(self, key: str, /) -> nn.Module: ...


def build_models(cfg: Config) -> Networks:
    """All four networks of a config: ``{"G", "D", "E", "SubE"}``."""
    return Networks({
        "G": Generator(cfg),
        "D": Discriminator(cfg),
        "E": Encoder(cfg),
        "SubE": SubEncoder(cfg),
    })


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (buffers such as the SN vectors excluded)."""
    return sum(p.numel() for p in module.parameters())
