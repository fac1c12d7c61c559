"""GCNet for segmentation: mmseg's ``GCHead`` on a dilated ResNet, with an auxiliary FCN head.

Paper: Cao, Xu, Lin, Wei, Hu, "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and
Beyond", ICCV Workshops 2019, https://arxiv.org/abs/1904.11492 ; the segmentation network is
mmsegmentation's (https://github.com/open-mmlab/mmsegmentation, ``mmseg/models/decode_heads/gc_head.py``,
``configs/_base_/models/gcnet_r50-d8.py``).

``GCHead`` (an mmseg ``FCNHead`` with two convs and ``concat_input``): ``convs.0`` (3x3 conv + BN
+ ReLU, C_in -> 512) -> ``gc_block`` (:class:`~visattn.attention.gc.GlobalContextBlock` on 512
channels, ratio 1/4, attention pooling, channel-add fusion) -> ``convs.1`` (3x3 conv + BN + ReLU)
-> ``conv_cat`` (concat(input, ``convs.1`` output) -> 3x3 conv + BN + ReLU to 512) ->
Dropout2d(0.1) -> ``conv_seg``. The recipe adds an auxiliary ``FCNHead`` on stage 3 (1024 -> 256,
loss weight 0.4) and upsamples with ``align_corners=False``; the encoder is mmseg's ResNetV1c
(timm's ``resnet50c`` / ``resnet101c``) at output stride 8.

Module names are mmseg's, so a checkpoint's ``decode_head.*`` loads into the head as it is;
:meth:`GCHead.convert_official_state_dict` renames a whole ``gcnet_r*-d8`` checkpoint (what
``visattn.load_official`` calls).

Differences from the official code: mmseg's SyncBN is ``nn.BatchNorm2d``; the ImageNet weights of
``encoder_weights="imagenet"`` are timm's ``resnet*c`` ones, not mmseg's ``open-mmlab://resnet50_v1c``.
"""
from __future__ import annotations

from collections.abc import Sequence

from ...attention.gc import GlobalContextBlock
from ._mmseg import ConcatInputBlockHead, register_mmseg_builders

__all__ = ["GCHead", "gcnet", "gcnet_r50_d8", "gcnet_r101_d8"]


class GCHead(ConcatInputBlockHead):
    """mmseg's GCNet head on ``features[in_index]``: logits ``(B, num_classes, h, w)``.

    Args:
        in_channels: channels of the input feature map (2048 for ResNet-50/101).
        num_classes: output channels.
        channels: width of the convs and of the context block (512).
        ratio: the context block's bottleneck ratio (1/4).
        pooling_type: the context block's pooling, ``"att"`` or ``"avg"`` (``"att"``).
        fusion_types: the context block's fusions (``("channel_add",)``).
        dropout: Dropout2d probability before ``conv_seg`` (0.1).
        in_index: which feature map of the encoder's list to use (the last).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        ratio: float = 1 / 4,
        pooling_type: str = "att",
        fusion_types: Sequence[str] = ("channel_add",),
        dropout: float = 0.1,
        in_index: int = -1,
    ) -> None:
        super().__init__(
            in_channels, num_classes, "gc_block",
            lambda width: GlobalContextBlock(width, ratio, pooling_type, fusion_types),
            channels, dropout, in_index,
        )


# mmseg publishes the checkpoints of its gcnet_r*-d8 recipes (Cityscapes, ADE20K, VOC)
gcnet, gcnet_r50_d8, gcnet_r101_d8 = register_mmseg_builders("gcnet", GCHead, title="GCNet", config="gcnet")
