"""ISANet for segmentation: mmseg's ``ISAHead`` on a dilated ResNet, with an auxiliary FCN head.

Paper: Huang, Yuan, Guo, Zhang, Chen, Wang, "Interlaced Sparse Self-Attention for Semantic
Segmentation", 2019, https://arxiv.org/abs/1907.12273 ; the segmentation network is
mmsegmentation's (https://github.com/open-mmlab/mmsegmentation, ``mmseg/models/decode_heads/isa_head.py``,
``configs/_base_/models/isanet_r50-d8.py``).

``ISAHead``: ``in_conv`` (3x3 conv + BN + ReLU, C_in -> 512) -> ``isa``
(:class:`~visattn.attention.isa.InterlacedSparseAttention` on 512 channels: query/key width 256,
local groups 8 x 8, long-range then short-range self-attention, ``out_conv`` on the concatenation
with its input) -> Dropout2d(0.1) -> ``conv_seg``.

The recipe, the module names and the differences from the official code: :mod:`._mmseg`.

Module names are mmseg's except the attention's: mmseg's ``global_relation``, ``local_relation``
and ``out_conv`` are ``isa.global_relation``, ``isa.local_relation`` and ``isa.out_conv`` here
(``ISAHead.head_keys``).
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ...attention._common import conv_module
from ...attention.isa import InterlacedSparseAttention
from ._mmseg import DecodeHead, register_mmseg_builders
from .base import head_width

__all__ = ["ISAHead", "isanet", "isanet_r50_d8", "isanet_r101_d8"]


class ISAHead(DecodeHead):
    """mmseg's ISANet head on ``features[in_index]``: logits ``(B, num_classes, h, w)``.

    Args:
        channels: width of ``in_conv`` and of the attention (512).
        isa_channels: query/key width of the attention (256).
        down_factor: the local group size ``(rows, columns)`` ((8, 8)).
        in_channels, num_classes, dropout, in_index: as :class:`~._mmseg.DecodeHead`'s.
    """

    # mmseg's ISAHead names of the attention -> ours
    head_keys = {"global_relation.": "isa.global_relation.", "local_relation.": "isa.local_relation.",
                 "out_conv.": "isa.out_conv."}

    def __init__(self, in_channels: int, num_classes: int, channels: int = 512, isa_channels: int = 256,
                 down_factor: Sequence[int] = (8, 8), **kwargs) -> None:
        super().__init__(**kwargs)
        channels = head_width(channels, 512, "ISAHead")
        self.in_conv = conv_module(in_channels, channels, 3, norm=True, act=True)
        self.isa = InterlacedSparseAttention(channels, isa_channels, down_factor)
        self.add_conv_seg(channels, num_classes)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return self.cls_seg(self.isa(self.in_conv(features[self.in_index])))


# mmseg publishes the checkpoints of its isanet_r*-d8 recipes (Cityscapes, ADE20K, VOC)
isanet, isanet_r50_d8, isanet_r101_d8 = register_mmseg_builders("isanet", ISAHead, title="ISANet", config="isanet")
