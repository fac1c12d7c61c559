"""DeepLabV3: mmseg's ``ASPPHead`` (atrous spatial pyramid pooling with image pooling) on a dilated ResNet.

Paper: Chen, Papandreou, Schroff, Adam, "Rethinking Atrous Convolution for Semantic Image
Segmentation", 2017, https://arxiv.org/abs/1706.05587 ; the network is mmsegmentation's
(``mmseg/models/decode_heads/aspp_head.py``, ``configs/_base_/models/deeplabv3_r50-d8.py``).

``ASPPHead``: ``image_pool`` (global average pooling -> 1x1 ConvModule to 512, upsampled back with
``align_corners=False``) and ``aspp_modules`` (a 1x1 ConvModule for dilation 1, 3x3 ConvModules
dilated 12, 24, 36), concatenated -> ``bottleneck`` (3x3 ConvModule to 512) -> Dropout2d(0.1) ->
``conv_seg``.

The recipe, the module names and the differences from the official code: :mod:`._mmseg`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...attention._common import conv_module
from ._mmseg import DecodeHead, register_mmseg_builders
from .base import head_width

__all__ = ["ASPPHead", "deeplabv3", "deeplabv3_r50_d8", "deeplabv3_r101_d8"]


class ASPPHead(DecodeHead):
    """mmseg's ASPP head on ``features[in_index]``: logits ``(B, num_classes, h, w)``.

    Args:
        channels: width of each branch and of the bottleneck (512).
        dilations: one branch per rate: 1 is a 1x1 conv, others dilated 3x3 convs ((1, 12, 24, 36)).
        in_channels, num_classes, dropout, in_index: as :class:`~._mmseg.DecodeHead`'s.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 512,
                 dilations: Sequence[int] = (1, 12, 24, 36), **kwargs) -> None:
        super().__init__(**kwargs)
        channels = head_width(channels, 512, type(self).__name__)
        if not dilations or any(d < 1 for d in dilations):
            raise ValueError(f"{type(self).__name__}: dilations must be positive rates, got {tuple(dilations)}")
        self.dilations = tuple(dilations)
        self.image_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), conv_module(in_channels, channels, 1, norm=True, act=True)
        )
        self.aspp_modules = nn.ModuleList(
            conv_module(in_channels, channels, 1 if d == 1 else 3, dilation=d, norm=True, act=True) for d in dilations
        )
        self.bottleneck = conv_module((len(dilations) + 1) * channels, channels, 3, norm=True, act=True)
        self.add_conv_seg(channels, num_classes)

    def aspp(self, x: Tensor) -> Tensor:
        """The bottleneck's output on the concatenated image-pooling and atrous branches."""
        pooled = F.interpolate(self.image_pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.bottleneck(torch.cat([pooled, *(branch(x) for branch in self.aspp_modules)], 1))

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return self.cls_seg(self.aspp(features[self.in_index]))


deeplabv3, deeplabv3_r50_d8, deeplabv3_r101_d8 = register_mmseg_builders(
    "deeplabv3", ASPPHead, title="DeepLabV3", config="deeplabv3",
)
