"""EMANet for segmentation: mmseg's ``EMAHead`` on a dilated ResNet, with an auxiliary FCN head.

Paper: Li, Zhong, Wu, Yang, Lin, Liu, "Expectation-Maximization Attention Networks for Semantic
Segmentation", ICCV 2019, https://arxiv.org/abs/1907.13426 ; the segmentation network is
mmsegmentation's (https://github.com/open-mmlab/mmsegmentation, ``mmseg/models/decode_heads/ema_head.py``,
``configs/_base_/models/emanet_r50-d8.py``).

``EMAHead``: ``ema_in_conv`` (3x3 conv + BN + ReLU, C_in -> 512) -> ``ema``
(:class:`~visattn.attention.ema.EMAUnit` on 512 channels: 64 bases, 3 EM iterations, bases
updated as a moving average with momentum 0.1 in training) -> ``bottleneck`` (3x3 conv + BN + ReLU,
512 -> 256) -> ``conv_cat`` (concat(input, ``bottleneck`` output) -> 3x3 conv + BN + ReLU to 256)
-> Dropout2d(0.1) -> ``conv_seg``.

The recipe, the module names and the differences from the official code: :mod:`._mmseg`.

Module names are mmseg's except the unit's: mmseg's ``ema_mid_conv``, ``ema_module.bases`` and
``ema_out_conv`` are ``ema.ema_mid_conv``, ``ema.bases`` and ``ema.ema_out_conv`` here
(``EMAHead.head_keys``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ...attention._common import conv_module
from ...attention.ema import EMAUnit
from ._mmseg import DecodeHead, register_mmseg_builders
from .base import head_width

__all__ = ["EMAHead", "emanet", "emanet_r50_d8", "emanet_r101_d8"]


class EMAHead(DecodeHead):
    """mmseg's EMANet head on ``features[in_index]``: logits ``(B, num_classes, h, w)``.

    Args:
        channels: width of ``bottleneck`` and ``conv_cat`` (256).
        ema_channels: width of the EM attention unit (512).
        num_bases: the unit's bases (64).
        num_stages: the unit's EM iterations (3).
        momentum: the moving average of the bases in training (0.1).
        in_channels, num_classes, dropout, in_index: as :class:`~._mmseg.DecodeHead`'s.
    """

    # mmseg's EMAHead names of the unit -> ours
    head_keys = {
        "ema_module.bases": "ema.bases", "ema_mid_conv.": "ema.ema_mid_conv.", "ema_out_conv.": "ema.ema_out_conv.",
    }

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, ema_channels: int = 512,
                 num_bases: int = 64, num_stages: int = 3, momentum: float = 0.1, **kwargs) -> None:
        super().__init__(**kwargs)
        channels = head_width(channels, 256, "EMAHead")
        ema_channels = head_width(ema_channels, 512, "EMAHead")
        self.ema_in_conv = conv_module(in_channels, ema_channels, 3, norm=True, act=True)
        self.ema = EMAUnit(ema_channels, num_bases, num_stages, momentum)
        self.bottleneck = conv_module(ema_channels, channels, 3, norm=True, act=True)
        self.conv_cat = conv_module(in_channels + channels, channels, 3, norm=True, act=True)
        self.add_conv_seg(channels, num_classes)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        x = features[self.in_index]
        out = self.bottleneck(self.ema(self.ema_in_conv(x)))
        return self.cls_seg(self.conv_cat(torch.cat([x, out], 1)))


# mmseg publishes the checkpoints of its emanet_r*-d8 recipes (Cityscapes)
emanet, emanet_r50_d8, emanet_r101_d8 = register_mmseg_builders("emanet", EMAHead, title="EMANet", config="emanet")
