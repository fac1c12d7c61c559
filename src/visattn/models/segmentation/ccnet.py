"""CCNet: recurrent criss-cross attention (RCCA) head on CCNet's own dilated ResNet.

Paper: Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019,
https://arxiv.org/abs/1811.11721; official code: speedinghzl/CCNet (``networks/ccnet.py``).

Variants: the authors' backbone is timm's deep-stem ``resnet50s``/``resnet101s`` with
``full_first_dilation=True`` and ``ceil_maxpool=True`` (see ``encoders.py``); the auxiliary ``dsn``
head sits on stage 3 with loss weight 0.4.

Differences from the official code: every BN there is InPlace-ABN (BN + LeakyReLU(0.01), scale
``|weight| + 1e-5``); here a BatchNorm (+ LeakyReLU where the official applies one), and the
checkpoint import converts the weights to that scale.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ...attention import create_attention
from ..registry import Weights, register_model
from .base import (
    BatchNormAct2d, FCNHead, LeakyReLU, Segmentor, build_segmentor, build_variant, head_width, on_last_map,
)

__all__ = ["CCNetHead", "ccnet", "ccnet_r50_d8", "ccnet_r101_d8"]

# InPlace-ABN normalises with |weight| + eps (mapillary/inplace_abn, all versions)
_INPLACE_ABN_EPS = 1e-5
# the official backbone's stem modules -> timm's deep stem
_STEM = {"conv1": "conv1.0", "bn1": "conv1.1", "conv2": "conv1.3", "bn2": "conv1.4", "conv3": "conv1.6", "bn3": "bn1"}
_ENCODER = {"full_first_dilation": True, "ceil_maxpool": True}


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
    ``[..., (B, in_channels, h, w)] -> (B, num_classes, h, w)``.

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
        channels = head_width(channels, inter, "CCNetHead")
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

    def convert_official_state_dict(self, state_dict: Mapping[str, Tensor], segmentor: nn.Module) -> dict[str, Tensor]:
        """speedinghzl/CCNet's ``ResNet`` checkpoint to the segmentor's keys.

        Stem ``conv1/bn1/conv2/bn2/conv3/bn3`` -> ``encoder.conv1.{0,1,3,4,6}`` / ``encoder.bn1``;
        ``layerN.*`` -> ``encoder.layerN.*``; ``head.cca.*`` -> ``head.rcca.cca.*``; ``dsn.*`` ->
        ``aux.*``; loss-module buffers (``criterion.*``) dropped. Every BN weight becomes
        ``|weight| + 1e-5``, the scale InPlace-ABN applies.
        """
        batch_norms = {name for name, m in segmentor.named_modules() if isinstance(m, nn.BatchNorm2d)}
        out = {}
        for key, value in state_dict.items():
            first, rest = key.split(".", 1)
            if first == "criterion":
                continue
            if first in _STEM:
                key = f"encoder.{_STEM[first]}.{rest}"
            elif first.startswith("layer"):
                key = f"encoder.{key}"
            elif first == "dsn":
                key = f"aux.{rest}"
            elif key.startswith("head.cca."):
                key = f"head.rcca.{key.removeprefix('head.')}"
            module, param = key.rsplit(".", 1)
            if param == "weight" and module in batch_norms:
                value = value.abs() + _INPLACE_ABN_EPS
            out[key] = value
        return out


def _ccnet_aux(in_channels: int, num_classes: int) -> FCNHead:
    # official ``dsn``: 3x3 conv with bias to in // 2 (1024 -> 512), InPlace-ABN (BN + LeakyReLU)
    return FCNHead(in_channels, num_classes, channels=in_channels // 2, in_index=-2, conv_bias=True, act_layer=LeakyReLU)


@register_model
def ccnet(num_classes: int = 19, *, aux: bool = True, **kwargs) -> Segmentor:
    """CCNet: ``CCNetHead`` (``recurrence=2``) and CCNet's auxiliary head on stage 3 (weight 0.4).

    Head arguments: ``recurrence``, ``channels``, ``reduction``, ``dropout`` (:class:`CCNetHead`);
    the others are :func:`build_segmentor`'s (``encoder="resnet50"``, ``output_stride=8``, ...),
    except that ``aux`` defaults to ``True``.
    """
    return build_segmentor(on_last_map(CCNetHead), num_classes=num_classes, aux=aux, aux_head=_ccnet_aux, **kwargs)


@register_model
def ccnet_r50_d8(num_classes: int = 19, **kwargs) -> Segmentor:
    """CCNet (R=2, aux 0.4), CCNet's deep-stem ResNet-50, output stride 8."""
    return build_variant(ccnet, "resnet50s", _ENCODER, num_classes=num_classes, **kwargs)


@register_model(weights=Weights("https://github.com/speedinghzl/CCNet (ResNet-101 on Cityscapes, link in its README)"))
def ccnet_r101_d8(num_classes: int = 19, **kwargs) -> Segmentor:
    """CCNet (R=2, aux 0.4), CCNet's deep-stem ResNet-101 (the released models' layout), output stride 8."""
    return build_variant(ccnet, "resnet101s", _ENCODER, num_classes=num_classes, **kwargs)
