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

from collections.abc import Mapping, Sequence
from functools import partial

import torch
from torch import Tensor, nn

from ...attention.gc import GlobalContextBlock
from ..registry import Weights, register_model
from ._mmseg import conv_module, convert_mmseg_state_dict, init_conv_seg
from .base import FCNHead, Segmentor, build_segmentor, build_variant, head_width

__all__ = ["GCHead", "gcnet", "gcnet_r50_d8", "gcnet_r101_d8"]

# mmseg publishes the checkpoints of its gcnet_r*-d8 recipes (Cityscapes, ADE20K, VOC)
_MMSEG = Weights("https://github.com/open-mmlab/mmsegmentation/tree/main/configs/gcnet (links in its README)")


class GCHead(nn.Module):
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
        super().__init__()
        channels = head_width(channels, 512, "GCHead")
        self.in_index = in_index
        self.convs = nn.Sequential(conv_module(in_channels, channels), conv_module(channels, channels))
        self.gc_block = GlobalContextBlock(channels, ratio, pooling_type, fusion_types)
        self.conv_cat = conv_module(in_channels + channels, channels)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = init_conv_seg(nn.Conv2d(channels, num_classes, 1))

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        x = features[self.in_index]
        out = self.convs[1](self.gc_block(self.convs[0](x)))
        out = self.conv_cat(torch.cat([x, out], 1))
        return self.conv_seg(self.dropout(out))

    def convert_official_state_dict(self, state_dict: Mapping[str, Tensor], segmentor: nn.Module) -> dict[str, Tensor]:
        """Rename an mmseg ``gcnet_r*-d8`` checkpoint to the keys of :func:`gcnet_r50_d8` / ``_r101_d8``
        (``decode_head.*`` -> ``head.*``, same names; see :func:`convert_mmseg_state_dict`)."""
        return convert_mmseg_state_dict(state_dict)


@register_model
def gcnet(num_classes: int = 19, **kwargs) -> Segmentor:
    """GCNet: ``GCHead`` and mmseg's auxiliary head on stage 3 (256 wide, weight 0.4).

    Logits are upsampled with ``align_corners=False`` as mmseg. Head arguments: ``channels``,
    ``ratio``, ``pooling_type``, ``fusion_types``, ``dropout`` (:class:`GCHead`); the others are
    :func:`build_segmentor`'s (``encoder="resnet50c"``, ``output_stride=8``, ``aux=True``, ...).
    """
    kwargs.setdefault("encoder", "resnet50c")
    kwargs.setdefault("aux", True)
    model = build_segmentor(
        lambda widths, k, **head_kwargs: GCHead(widths[-1], k, **head_kwargs),
        num_classes=num_classes, aux_head=partial(FCNHead, channels=256, in_index=-2), **kwargs,
    )
    model.align_corners = False
    return model


@register_model(weights=_MMSEG)
def gcnet_r50_d8(num_classes: int = 19, **kwargs) -> Segmentor:
    """GCNet, ResNet-50-C (mmseg's ResNetV1c layout, timm ``resnet50c``), output stride 8."""
    return build_variant(gcnet, "resnet50c", {}, num_classes=num_classes, **kwargs)


@register_model(weights=_MMSEG)
def gcnet_r101_d8(num_classes: int = 19, **kwargs) -> Segmentor:
    """GCNet, ResNet-101-C (mmseg's ResNetV1c layout, timm ``resnet101c``), output stride 8."""
    return build_variant(gcnet, "resnet101c", {}, num_classes=num_classes, **kwargs)
