"""GCNet for segmentation: mmseg's ``GCHead`` on a dilated ResNet, with an auxiliary FCN head.

Paper: Cao, Xu, Lin, Wei, Hu, "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and
Beyond", ICCV Workshops 2019, https://arxiv.org/abs/1904.11492 ; the segmentation network is
mmsegmentation's (https://github.com/open-mmlab/mmsegmentation, ``mmseg/models/decode_heads/gc_head.py``,
``configs/_base_/models/gcnet_r50-d8.py``).

``GCHead``: mmseg's concat-input head (:class:`~._mmseg.ConcatInputBlockHead`, 512 wide) around
``gc_block`` (:class:`~visattn.attention.gc.GlobalContextBlock` on 512 channels, ratio 1/4,
attention pooling, channel-add fusion).

The recipe, the module names and the differences from the official code: :mod:`._mmseg`.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from ...attention.gc import GlobalContextBlock
from ._mmseg import ConcatInputBlockHead, register_mmseg_builders

__all__ = ["GCHead", "gcnet", "gcnet_r50_d8", "gcnet_r101_d8"]


class GCHead(ConcatInputBlockHead):
    """mmseg's GCNet head on ``features[in_index]``: logits ``(B, num_classes, h, w)``.

    Args:
        ratio: the context block's bottleneck ratio (1/4).
        pooling_type: the context block's pooling, ``"att"`` or ``"avg"`` (``"att"``).
        fusion_types: the context block's fusions (``("channel_add",)``).
        in_channels, num_classes, channels (512), dropout, in_index: as
            :class:`~._mmseg.ConcatInputBlockHead`'s.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        ratio: float = 1 / 4,
        pooling_type: str = "att",
        fusion_types: Sequence[str] = ("channel_add",),
        **kwargs,
    ) -> None:
        block = partial(GlobalContextBlock, ratio=ratio, pooling_type=pooling_type, fusion_types=fusion_types)
        super().__init__(in_channels, num_classes, "gc_block", block, **kwargs)


# mmseg publishes the checkpoints of its gcnet_r*-d8 recipes (Cityscapes, ADE20K, VOC)
gcnet, gcnet_r50_d8, gcnet_r101_d8 = register_mmseg_builders("gcnet", GCHead, title="GCNet", config="gcnet")
