"""Non-local network for segmentation: mmseg's ``NLHead`` on a dilated ResNet, with an auxiliary FCN head.

Paper: Wang, Girshick, Gupta, He, "Non-local Neural Networks", CVPR 2018,
https://arxiv.org/abs/1711.07971 ; the segmentation network is mmsegmentation's
(https://github.com/open-mmlab/mmsegmentation, ``mmseg/models/decode_heads/nl_head.py``,
``configs/_base_/models/nonlocal_r50-d8.py``), the Non-local baseline the DANet, CCNet and
FLANet papers compare against.

``NLHead``: mmseg's concat-input head (:class:`~._mmseg.ConcatInputBlockHead`, 512 wide) around
``nl_block`` (:class:`~visattn.attention.non_local.NonLocal2d` on 512 channels, reduction 2,
scaled, BN after ``conv_out``).

The recipe, the module names and the differences from the official code: :mod:`._mmseg`.
"""
from __future__ import annotations

from functools import partial
from torch import nn

from ...attention.non_local import NonLocal2d
from ._mmseg import ConcatInputBlockHead, register_mmseg_builders

__all__ = ["NLHead", "nlnet", "nlnet_r50_d8", "nlnet_r101_d8"]


class NLHead(ConcatInputBlockHead):
    """mmseg's Non-local head on ``features[in_index]``: logits ``(B, num_classes, h, w)``.

    Args:
        reduction: the Non-local block's embedding reduction (2).
        use_scale: scale the Non-local scores by ``1 / sqrt(channels // reduction)`` (True).
        in_channels, num_classes, channels (512), dropout, in_index: as
            :class:`~._mmseg.ConcatInputBlockHead`'s.
    """

    def __init__(
        self, in_channels: int, num_classes: int, reduction: int = 2, use_scale: bool = True, **kwargs
    ) -> None:
        block = partial(NonLocal2d, reduction=reduction, use_scale=use_scale, norm_layer=nn.BatchNorm2d)
        super().__init__(in_channels, num_classes, "nl_block", block, **kwargs)


# mmseg publishes the checkpoints of its nonlocal_r*-d8 recipes (Cityscapes, ADE20K, VOC)
nlnet, nlnet_r50_d8, nlnet_r101_d8 = register_mmseg_builders(
    "nlnet", NLHead, title="Non-local network", config="nonlocal_net",
)
