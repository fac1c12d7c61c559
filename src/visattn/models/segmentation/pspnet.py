"""Pyramid Scene Parsing Network: mmseg's ``PSPHead`` on a dilated ResNet, with an auxiliary FCN head.

Paper: Zhao, Shi, Qi, Wang, Jia, "Pyramid Scene Parsing Network", CVPR 2017,
https://arxiv.org/abs/1612.01105 ; the network is mmsegmentation's
(``mmseg/models/decode_heads/psp_head.py``, ``configs/_base_/models/pspnet_r50-d8.py``).

``PSPHead``: the pyramid pooling module ``psp_modules`` (for each scale s in (1, 2, 3, 6):
adaptive average pooling to s x s -> 1x1 ConvModule to 512 -> bilinear upsampling back,
``align_corners=False``), concatenated with the input -> ``bottleneck`` (3x3 ConvModule to 512) ->
Dropout2d(0.1) -> ``conv_seg``.

The recipe, the module names and the differences from the official code: :mod:`._mmseg`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...attention._common import conv_module
from ._mmseg import DecodeHead, ExportableAdaptiveAvgPool2d, register_mmseg_builders
from .base import head_width

__all__ = ["PPM", "PSPHead", "pspnet", "pspnet_r50_d8", "pspnet_r101_d8"]


class PPM(nn.ModuleList):
    """Pyramid pooling: one ``(B, channels, H, W)`` map per pooling scale, upsampled back to ``H x W``.

    Module ``i`` is adaptive average pooling to ``pool_scales[i]`` squared (``.0``, exportable to
    ONNX at any input size) then a 1x1 ConvModule (``.1``).
    """

    def __init__(self, pool_scales: Sequence[int], in_channels: int, channels: int, align_corners: bool = False):
        if not pool_scales or any(s < 1 for s in pool_scales):
            raise ValueError(f"PPM: pool_scales must be positive sizes, got {tuple(pool_scales)}")
        super().__init__(
            nn.Sequential(ExportableAdaptiveAvgPool2d(s), conv_module(in_channels, channels, 1, norm=True, act=True))
            for s in pool_scales
        )
        self.pool_scales = tuple(pool_scales)
        self.align_corners = align_corners

    def forward(self, x: Tensor) -> list[Tensor]:
        size = x.shape[-2:]
        return [F.interpolate(ppm(x), size=size, mode="bilinear", align_corners=self.align_corners) for ppm in self]


class PSPHead(DecodeHead):
    """mmseg's PSP head on ``features[in_index]``: logits ``(B, num_classes, h, w)``.

    Args:
        channels: width of the pooled branches and of the bottleneck (512).
        pool_scales: output sizes of the pyramid's poolings ((1, 2, 3, 6)).
        in_channels, num_classes, dropout, in_index: as :class:`~._mmseg.DecodeHead`'s.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), **kwargs) -> None:
        super().__init__(**kwargs)
        channels = head_width(channels, 512, "PSPHead")
        self.psp_modules = PPM(pool_scales, in_channels, channels)
        self.bottleneck = conv_module(in_channels + len(pool_scales) * channels, channels, 3, norm=True, act=True)
        self.add_conv_seg(channels, num_classes)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        x = features[self.in_index]
        return self.cls_seg(self.bottleneck(torch.cat([x, *self.psp_modules(x)], 1)))


pspnet, pspnet_r50_d8, pspnet_r101_d8 = register_mmseg_builders("pspnet", PSPHead, title="PSPNet", config="pspnet")
