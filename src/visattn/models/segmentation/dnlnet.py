"""DNLNet for segmentation: mmseg's ``DNLHead`` on a dilated ResNet, with an auxiliary FCN head.

Paper: Yin, Yao, Cao, Li, Zhang, Lin, Hu, "Disentangled Non-Local Neural Networks", ECCV 2020,
https://arxiv.org/abs/2006.06668 ; the segmentation network is mmsegmentation's
(https://github.com/open-mmlab/mmsegmentation, ``mmseg/models/decode_heads/dnl_head.py``,
``configs/_base_/models/dnl_r50-d8.py``).

``DNLHead``: mmseg's concat-input head (:class:`~._mmseg.ConcatInputBlockHead`, 512 wide) around
``dnl_block`` (:class:`~visattn.attention.dnl.DisentangledNonLocal2d` on 512 channels, reduction 2,
scaled, temperature 0.05, BN after ``conv_out``).

The recipe, the module names and the differences from the official code: :mod:`._mmseg`.
"""
from __future__ import annotations

from functools import partial
from torch import nn

from ...attention.dnl import DisentangledNonLocal2d
from ._mmseg import ConcatInputBlockHead, register_mmseg_builders

__all__ = ["DNLHead", "dnlnet", "dnlnet_r50_d8", "dnlnet_r101_d8"]


class DNLHead(ConcatInputBlockHead):
    """mmseg's DNLNet head on ``features[in_index]``: logits ``(B, num_classes, h, w)``.

    Args:
        reduction: the DNL block's embedding reduction (2).
        use_scale: scale the pairwise scores by ``1 / sqrt(channels // reduction)`` (True).
        temperature: divides the pairwise scores (0.05).
        in_channels, num_classes, channels (512), dropout, in_index: as
            :class:`~._mmseg.ConcatInputBlockHead`'s.
    """

    def __init__(
        self, in_channels: int, num_classes: int, reduction: int = 2, use_scale: bool = True,
        temperature: float = 0.05, **kwargs,
    ) -> None:
        block = partial(DisentangledNonLocal2d, reduction=reduction, use_scale=use_scale, temperature=temperature,
                        norm_layer=nn.BatchNorm2d)
        super().__init__(in_channels, num_classes, "dnl_block", block, **kwargs)


# mmseg publishes the checkpoints of its dnl_r*-d8 recipes (Cityscapes, ADE20K)
dnlnet, dnlnet_r50_d8, dnlnet_r101_d8 = register_mmseg_builders("dnlnet", DNLHead, title="DNLNet", config="dnlnet")
