"""DeepLabV3+: mmseg's ``DepthwiseSeparableASPPHead`` (separable ASPP + a decoder on stage-1 features).

Paper: Chen, Zhu, Papandreou, Schroff, Adam, "Encoder-Decoder with Atrous Separable Convolution
for Semantic Image Segmentation", ECCV 2018, https://arxiv.org/abs/1802.02611 ; the network is
mmsegmentation's (``mmseg/models/decode_heads/sep_aspp_head.py``,
``configs/_base_/models/deeplabv3plus_r50-d8.py``).

The head is DeepLabV3's :class:`~.deeplabv3.ASPPHead` with each dilated branch a depthwise-separable
ConvModule (``depthwise_conv``: dilated 3x3 depthwise conv + BN + ReLU, ``pointwise_conv``: 1x1
conv + BN + ReLU), then the decoder: the ASPP output upsampled (``align_corners=False``) to the
stage-1 map (stride 4), concatenated with ``c1_bottleneck`` (1x1 ConvModule, 256 -> 48) of it ->
``sep_bottleneck`` (two separable 3x3 ConvModules to 512) -> Dropout2d(0.1) -> ``conv_seg``. The
encoder returns four maps (``stages=4``: stage 1 first).

The recipe, the module names and the differences from the official code: :mod:`._mmseg`.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...attention._common import conv_module
from ._mmseg import register_mmseg_builders
from .deeplabv3 import ASPPHead

__all__ = ["depthwise_separable_conv_module", "DepthwiseSeparableASPPHead", "deeplabv3plus",
           "deeplabv3plus_r50_d8", "deeplabv3plus_r101_d8"]


def depthwise_separable_conv_module(in_channels: int, out_channels: int, dilation: int = 1) -> nn.Sequential:
    """mmcv's ``DepthwiseSeparableConvModule`` (3x3, BN and ReLU after both convs):
    ``depthwise_conv`` then ``pointwise_conv``, each a ConvModule."""
    return nn.Sequential(OrderedDict(
        depthwise_conv=conv_module(
            in_channels, in_channels, 3, dilation=dilation, groups=in_channels, norm=True, act=True
        ),
        pointwise_conv=conv_module(in_channels, out_channels, 1, norm=True, act=True),
    ))


class DepthwiseSeparableASPPHead(ASPPHead):
    """mmseg's DeepLabV3+ head: logits ``(B, num_classes, h1, w1)`` at the resolution of ``features[0]``.

    Args:
        in_channels: channels of the last feature map (2048 for ResNet-50/101).
        num_classes: output channels.
        c1_in_channels: channels of ``features[0]`` (stage 1: 256 for ResNet-50/101).
        c1_channels: width of the stage-1 projection (48).
        channels, dilations, dropout, in_index: as :class:`~.deeplabv3.ASPPHead`'s.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        c1_in_channels: int,
        c1_channels: int = 48,
        channels: int = 512,
        dilations: Sequence[int] = (1, 12, 24, 36),
        **kwargs,
    ) -> None:
        super().__init__(in_channels, num_classes, channels, dilations, **kwargs)
        if c1_channels < 1:
            raise ValueError(f"DepthwiseSeparableASPPHead: c1_channels must be positive, got {c1_channels}")
        for i, d in enumerate(self.dilations):
            if d > 1:
                self.aspp_modules[i] = depthwise_separable_conv_module(in_channels, channels, dilation=d)
        self.c1_bottleneck = conv_module(c1_in_channels, c1_channels, 1, norm=True, act=True)
        self.sep_bottleneck = nn.Sequential(
            depthwise_separable_conv_module(channels + c1_channels, channels),
            depthwise_separable_conv_module(channels, channels),
        )

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        c1 = self.c1_bottleneck(features[0])
        out = self.aspp(features[self.in_index])
        out = F.interpolate(out, size=c1.shape[-2:], mode="bilinear", align_corners=False)
        out = self.sep_bottleneck(torch.cat([out, c1], 1))
        return self.cls_seg(out)


deeplabv3plus, deeplabv3plus_r50_d8, deeplabv3plus_r101_d8 = register_mmseg_builders(
    "deeplabv3plus", DepthwiseSeparableASPPHead, title="DeepLabV3+", config="deeplabv3plus",
    summary="``DepthwiseSeparableASPPHead`` on stages 1 and 4 (the encoder returns stage 1's map too)",
    build_head=lambda widths, k, **head_kwargs: DepthwiseSeparableASPPHead(widths[-1], k, widths[0], **head_kwargs),
    encoder_kwargs={"stages": 4},
)
