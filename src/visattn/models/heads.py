"""Segmentation heads: FCN (the baseline), DANet, CCNet, FLANet, and any attention module as a head.

Papers:
- Long et al., "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015,
  https://arxiv.org/abs/1411.4038 (here the dilated-FCN baseline of the DANet/CCNet papers)
- Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019, https://arxiv.org/abs/1809.02983
- Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019, https://arxiv.org/abs/1811.11721
- Song et al., "Fully Attentional Network for Semantic Segmentation", AAAI 2022, https://arxiv.org/abs/2112.04108

Every head takes the encoder's feature list ``[stage2, stage3, stage4]`` and returns logits at
feature resolution: in eval mode the main logits tensor, in training mode (heads with auxiliary
outputs) a dict ``name -> logits`` with ``"out"`` first and ``loss_weights`` naming a weight for
each key. Module names follow the official code so authors' checkpoints map by prefix only
(see ``Segmentor.convert_official_state_dict``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import Tensor, nn

from ..attention import create_attention

__all__ = ["BatchNormAct2d", "FCNHead", "DANetHead", "CCNetHead", "FLANetHead", "FLANetOutput", "AttentionHead"]

LeakyReLU = partial(nn.LeakyReLU, 0.01)


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm then an activation, with BatchNorm's parameter names.

    The layout of InPlace-ABN (CCNet's ``InPlaceABNSync``: BN + LeakyReLU(0.01)), whose checkpoints
    keep ``weight``/``bias``/``running_mean``/``running_var`` on the module itself.
    """

    def __init__(self, num_features: int, act_layer: Callable[[], nn.Module] = nn.ReLU) -> None:
        super().__init__(num_features)
        self.act = act_layer()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(super().forward(x))


def conv_bn_act(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    """``conv (no bias) -> BN -> ReLU`` with keys ``0`` (conv) and ``1`` (BN), as DANet's."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def classifier(in_channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """``Dropout2d -> 1x1 conv (bias)``: keys ``1.weight``/``1.bias`` as DANet's ``conv6/7/8``."""
    return nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(in_channels, num_classes, 1))


def _width(channels: int | None, default: int, name: str) -> int:
    channels = default if channels is None else channels
    if channels < 1:
        raise ValueError(f"{name}: head width must be positive, got {channels}")
    return channels


class FCNHead(nn.Sequential):
    """Dilated-FCN head: ``3x3 conv -> BN -> act -> Dropout2d -> 1x1 conv`` on ``features[in_index]``.

    The baseline head (``in_index=-1``) and the auxiliary head on stage 3 (``in_index=-2``).

    Args:
        in_channels: channels of the input feature map.
        num_classes: output channels.
        channels: hidden width (``in_channels // 4`` by default).
        in_index: which feature map of the encoder's list to use.
        conv_bias: bias on the 3x3 conv (CCNet's auxiliary ``dsn`` head has one).
        act_layer: activation after BN (``LeakyReLU`` for CCNet's InPlace-ABN).
        dropout: Dropout2d probability.

    Keys: ``0`` (3x3 conv), ``1`` (BN), ``3`` (classifier): CCNet's ``dsn`` layout.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int | None = None,
        in_index: int = -1,
        conv_bias: bool = False,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
        dropout: float = 0.1,
    ) -> None:
        channels = _width(channels, in_channels // 4, "FCNHead")
        super().__init__(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=conv_bias),
            BatchNormAct2d(channels, act_layer),
            nn.Dropout2d(dropout),
            nn.Conv2d(channels, num_classes, 1),
        )
        self.in_index = in_index

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return super().forward(features[self.in_index])


class DANetHead(nn.Module):
    """DANet head: position and channel attention branches, three outputs.

    ``conv5a -> PAM (sa) -> conv51``, ``conv5c -> CAM (sc) -> conv52`` (3x3 conv + BN + ReLU to
    ``in // 4``); ``conv6``/``conv7`` classify each branch (``"pam"``/``"cam"``, training only),
    ``conv8`` their sum (``"out"``). Official keys (``junfu1115/DANet`` ``DANetHead``) exactly.
    Official training sums the three cross-entropies with weight 1.

    Args:
        in_channels: channels of the last feature map (2048 for ResNet-50/101).
        num_classes: output channels.
        channels: branch width (``in_channels // 4``).
        reduction: PAM's query/key reduction (8).
        dropout: Dropout2d before each classifier (0.1).
    """

    def __init__(
        self, in_channels: int, num_classes: int, channels: int | None = None, reduction: int = 8, dropout: float = 0.1
    ) -> None:
        super().__init__()
        inter = _width(channels, in_channels // 4, "DANetHead")
        self.conv5a = conv_bn_act(in_channels, inter)
        self.conv5c = conv_bn_act(in_channels, inter)
        self.sa = create_attention("pam", inter, reduction=reduction)
        self.sc = create_attention("cam", inter)
        self.conv51 = conv_bn_act(inter, inter)
        self.conv52 = conv_bn_act(inter, inter)
        self.conv6 = classifier(inter, num_classes, dropout)
        self.conv7 = classifier(inter, num_classes, dropout)
        self.conv8 = classifier(inter, num_classes, dropout)
        self.loss_weights = {"out": 1.0, "pam": 1.0, "cam": 1.0}

    def forward(self, features: Sequence[Tensor]) -> Tensor | dict[str, Tensor]:
        x = features[-1]
        sa = self.conv51(self.sa(self.conv5a(x)))
        sc = self.conv52(self.sc(self.conv5c(x)))
        out = self.conv8(sa + sc)
        if not self.training:
            return out
        return {"out": out, "pam": self.conv6(sa), "cam": self.conv7(sc)}


def _conv_abn(in_channels: int, out_channels: int) -> nn.Sequential:
    """CCNet's ``3x3 conv (no bias) -> InPlaceABNSync``: keys ``0`` (conv) and ``1`` (BN)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), BatchNormAct2d(out_channels, LeakyReLU)
    )


class CCNetHead(nn.Module):
    """CCNet head (official ``RCCAModule``): ``conva -> RCCA x recurrence -> convb -> bottleneck``.

    ``conva``/``convb``: 3x3 conv (no bias) + BN + LeakyReLU(0.01) to ``in // 4`` (InPlace-ABN in
    the official code). ``bottleneck``: concat(input, convb) -> 3x3 conv to ``channels`` + BN +
    LeakyReLU -> Dropout2d(0.1) -> 1x1 conv. The released R=2 models need ``recurrence=2`` (the
    official scripts default to fewer passes). Official keys except ``cca`` -> ``rcca.cca``.

    Args:
        in_channels: channels of the last feature map.
        num_classes: output channels.
        channels: bottleneck width (``in_channels // 4``, 512 for ResNets as official).
        recurrence: criss-cross passes with shared weights (2).
        reduction: CCA's query/key reduction (8).
        dropout: Dropout2d probability (0.1).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int | None = None,
        recurrence: int = 2,
        reduction: int = 8,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        inter = in_channels // 4
        channels = _width(channels, inter, "CCNetHead")
        self.conva = _conv_abn(in_channels, inter)
        self.rcca = create_attention("rcca", inter, reduction=reduction, recurrence=recurrence)
        self.convb = _conv_abn(inter, inter)
        self.bottleneck = nn.Sequential(
            nn.Conv2d(in_channels + inter, channels, 3, padding=1, bias=False),
            BatchNormAct2d(channels, LeakyReLU),
            nn.Dropout2d(dropout),
            nn.Conv2d(channels, num_classes, 1),
        )

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        x = features[-1]
        y = self.convb(self.rcca(self.conva(x)))
        return self.bottleneck(torch.cat([x, y], 1))


class FLANetOutput(nn.Module):
    """FLANet's output head: nearest x2 upsampling -> 3x3 conv + BN + ReLU -> Dropout2d -> 1x1 conv.

    The x2 is the official ``nn.Upsample(scale_factor=2)`` (nearest). Keys ``conv.1`` (3x3 conv),
    ``conv.2`` (BN), ``conv.5`` (classifier) as official.
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(channels, num_classes, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class FLANetHead(nn.Module):
    """FLANet head: ``conv`` (two 3x3 conv + BN + ReLU) -> FLA (``fully``) -> concat with stage 4 -> output.

    ``conv_out1`` gives ``"out"`` from concat(stage 4, FLA output); ``conv_out2``/``conv_out3``
    (width 64) give the auxiliary ``"aux2"``/``"aux3"`` from stages 2 and 3 (training only). The
    outputs are at twice the feature resolution. Official keys (``maggiesong7/FullyAttentional``).

    The repository releases no training code or weights; the three losses are weighted 1, as in
    the authors' AttaNet/BiSeNet code the head is taken from (not stated for FLANet itself).

    Args:
        in_channels: the encoder's three widths (stages 2, 3, 4).
        num_classes: output channels.
        channels: width of ``conv``, FLA and ``conv_out1`` (``in_channels[-1] // 4``, 512 official).
        aux_channels: width of the auxiliary outputs (64).
        dropout: Dropout2d probability (0.1).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int | None = None,
        aux_channels: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        c2, c3, c4 = in_channels
        channels = _width(channels, c4 // 4, "FLANetHead")
        self.conv = nn.Sequential(*conv_bn_act(c4, channels), *conv_bn_act(channels, channels))
        self.fully = create_attention("fla", channels)
        self.conv_out1 = FLANetOutput(c4 + channels, channels, num_classes, dropout)
        self.conv_out2 = FLANetOutput(c2, aux_channels, num_classes, dropout)
        self.conv_out3 = FLANetOutput(c3, aux_channels, num_classes, dropout)
        self.loss_weights = {"out": 1.0, "aux2": 1.0, "aux3": 1.0}

    def forward(self, features: Sequence[Tensor]) -> Tensor | dict[str, Tensor]:
        x2, x3, x4 = features[-3:]
        out = self.conv_out1(torch.cat([x4, self.fully(self.conv(x4))], 1))
        if not self.training:
            return out
        return {"out": out, "aux2": self.conv_out2(x2), "aux3": self.conv_out3(x3)}


class AttentionHead(nn.Module):
    """Any registered attention module as a head: ``reduce -> attention -> classifier``.

    ``reduce``: 3x3 conv + BN + ReLU to ``in // 4``; ``attention``: ``create_attention(name, in // 4,
    **attention_kwargs)``; ``classifier``: Dropout2d(0.1) + 1x1 conv. Lets BAM, PSA, SGE, CBAM, ...
    be compared as heads against FCN (the same head without attention).

    Args:
        in_channels: channels of the last feature map.
        num_classes: output channels.
        attention: a name from ``visattn.list_attentions()``.
        channels: width around the attention module (``in_channels // 4``).
        dropout: Dropout2d probability (0.1).
        **attention_kwargs: passed to the attention module.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        attention: str = "pam",
        channels: int | None = None,
        dropout: float = 0.1,
        **attention_kwargs,
    ) -> None:
        super().__init__()
        channels = _width(channels, in_channels // 4, "AttentionHead")
        self.attention_name = attention
        self.reduce = conv_bn_act(in_channels, channels)
        self.attention = create_attention(attention, channels, **attention_kwargs)
        self.classifier = classifier(channels, num_classes, dropout)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return self.classifier(self.attention(self.reduce(features[-1])))

    def extra_repr(self) -> str:
        return f"attention={self.attention_name!r}"
