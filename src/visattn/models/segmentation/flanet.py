"""FLANet: fully attentional (FLA) head on FLANet's dilated ResNet, with two auxiliary outputs.

Paper: Song et al., "Fully Attentional Network for Semantic Segmentation", AAAI 2022,
https://arxiv.org/abs/2112.04108; official code: maggiesong7/FullyAttentional.

Variants: the authors' backbone is timm's deep-stem ``resnet50s``/``resnet101s`` with
``full_first_dilation=True`` (see ``encoders.py``). The repository releases no training code or
weights.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ...attention import create_attention
from ..registry import register_model
from .base import Segmentor, build_segmentor, build_variant, conv_bn_act, head_width

__all__ = ["FLANetHead", "FLANetOutput", "flanet", "flanet_r50_d8", "flanet_r101_d8"]

_ENCODER = {"full_first_dilation": True}


class FLANetOutput(nn.Module):
    """FLANet's output head: nearest x2 upsampling -> 3x3 conv + BN + ReLU -> Dropout2d -> 1x1 conv.

    The x2 is the official ``nn.Upsample(scale_factor=2)`` (nearest). Keys ``conv.1`` (3x3 conv),
    ``conv.2`` (BN), ``conv.5`` (classifier) as official.
    ``(B, in_channels, h, w) -> (B, num_classes, 2h, 2w)``.
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
    outputs are at twice the feature resolution: ``[stage2, stage3, stage4]`` of ``(B, C_i, h, w)``
    -> ``(B, num_classes, 2h, 2w)``. Official keys (``maggiesong7/FullyAttentional``).

    The three losses are weighted 1, as in the authors' AttaNet/BiSeNet code the head is taken
    from (not stated for FLANet itself).

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
        channels = head_width(channels, c4 // 4, "FLANetHead")
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

    def convert_official_state_dict(self, state_dict: Mapping[str, Tensor], segmentor: nn.Module) -> dict[str, Tensor]:
        """maggiesong7/FullyAttentional's network to the segmentor's keys: ``backbone.*`` ->
        ``encoder.*``, the rest -> ``head.*``."""
        return {
            (f"encoder.{k.removeprefix('backbone.')}" if k.startswith("backbone.") else f"head.{k}"): v
            for k, v in state_dict.items()
        }


@register_model
def flanet(num_classes: int = 19, **kwargs) -> Segmentor:
    """FLANet: ``FLANetHead`` with its own auxiliary outputs aux2/aux3 on stages 2 and 3 (weights 1).

    Head arguments: ``channels``, ``aux_channels``, ``dropout`` (:class:`FLANetHead`); the others
    are :func:`build_segmentor`'s (``encoder="resnet50"``, ``output_stride=8``, ``aux=False``, ...).
    """
    return build_segmentor(FLANetHead, num_classes=num_classes, **kwargs)


@register_model
def flanet_r50_d8(num_classes: int = 19, **kwargs) -> Segmentor:
    """FLANet, FLANet's deep-stem ResNet-50, output stride 8."""
    return build_variant(flanet, "resnet50s", _ENCODER, num_classes=num_classes, **kwargs)


@register_model
def flanet_r101_d8(num_classes: int = 19, **kwargs) -> Segmentor:
    """FLANet, FLANet's deep-stem ResNet-101 (the official ``compile_model``), output stride 8."""
    return build_variant(flanet, "resnet101s", _ENCODER, num_classes=num_classes, **kwargs)
