"""DNLNet for segmentation: mmseg's ``DNLHead`` on a dilated ResNet, with an auxiliary FCN head.

Paper: Yin, Yao, Cao, Li, Zhang, Lin, Hu, "Disentangled Non-Local Neural Networks", ECCV 2020,
https://arxiv.org/abs/2006.06668 ; the segmentation network is mmsegmentation's
(https://github.com/open-mmlab/mmsegmentation, ``mmseg/models/decode_heads/dnl_head.py``,
``configs/_base_/models/dnl_r50-d8.py``).

``DNLHead`` (an mmseg ``FCNHead`` with two convs and ``concat_input``): ``convs.0`` (3x3 conv + BN
+ ReLU, C_in -> 512) -> ``dnl_block`` (:class:`~visattn.attention.dnl.DisentangledNonLocal2d` on
512 channels, reduction 2, scaled, temperature 0.05, BN after ``conv_out``) -> ``convs.1`` (3x3 conv + BN + ReLU)
-> ``conv_cat`` (concat(input, ``convs.1`` output) -> 3x3 conv + BN + ReLU to 512) ->
Dropout2d(0.1) -> ``conv_seg``. The recipe adds an auxiliary ``FCNHead`` on stage 3 (1024 -> 256,
loss weight 0.4) and upsamples with ``align_corners=False``; the encoder is mmseg's ResNetV1c
(timm's ``resnet50c`` / ``resnet101c``) at output stride 8.

Module names are mmseg's, so a checkpoint's ``decode_head.*`` loads into the head as it is;
:meth:`DNLHead.convert_official_state_dict` renames a whole ``dnl_r*-d8`` checkpoint (what
``visattn.load_official`` calls).

Differences from the official code: mmseg's SyncBN is ``nn.BatchNorm2d``; the ImageNet weights of
``encoder_weights="imagenet"`` are timm's ``resnet*c`` ones, not mmseg's ``open-mmlab://resnet50_v1c``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

import torch
from torch import Tensor, nn

from ...attention.dnl import DisentangledNonLocal2d
from ..registry import Weights, register_model
from ._mmseg import conv_module, convert_mmseg_state_dict, init_conv_seg
from .base import FCNHead, Segmentor, build_segmentor, build_variant, head_width

__all__ = ["DNLHead", "dnlnet", "dnlnet_r50_d8", "dnlnet_r101_d8"]

# mmseg publishes the checkpoints of its dnl_r*-d8 recipes (Cityscapes, ADE20K)
_MMSEG = Weights("https://github.com/open-mmlab/mmsegmentation/tree/main/configs/dnlnet (links in its README)")


class DNLHead(nn.Module):
    """mmseg's DNLNet head on ``features[in_index]``: logits ``(B, num_classes, h, w)``.

    Args:
        in_channels: channels of the input feature map (2048 for ResNet-50/101).
        num_classes: output channels.
        channels: width of the convs and of the DNL block (512).
        reduction: the DNL block's embedding reduction (2).
        use_scale: scale the pairwise scores by ``1 / sqrt(channels // reduction)`` (True).
        temperature: divides the pairwise scores (0.05).
        dropout: Dropout2d probability before ``conv_seg`` (0.1).
        in_index: which feature map of the encoder's list to use (the last).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        reduction: int = 2,
        use_scale: bool = True,
        temperature: float = 0.05,
        dropout: float = 0.1,
        in_index: int = -1,
    ) -> None:
        super().__init__()
        channels = head_width(channels, 512, "DNLHead")
        self.in_index = in_index
        self.convs = nn.Sequential(conv_module(in_channels, channels), conv_module(channels, channels))
        self.dnl_block = DisentangledNonLocal2d(channels, reduction, use_scale, temperature, norm_layer=nn.BatchNorm2d)
        self.conv_cat = conv_module(in_channels + channels, channels)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = init_conv_seg(nn.Conv2d(channels, num_classes, 1))

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        x = features[self.in_index]
        out = self.convs[1](self.dnl_block(self.convs[0](x)))
        out = self.conv_cat(torch.cat([x, out], 1))
        return self.conv_seg(self.dropout(out))

    def convert_official_state_dict(self, state_dict: Mapping[str, Tensor], segmentor: nn.Module) -> dict[str, Tensor]:
        """Rename an mmseg ``dnl_r*-d8`` checkpoint to the keys of :func:`dnlnet_r50_d8` / ``_r101_d8``
        (``decode_head.*`` -> ``head.*``, same names; see :func:`convert_mmseg_state_dict`)."""
        return convert_mmseg_state_dict(state_dict)


@register_model
def dnlnet(num_classes: int = 19, **kwargs) -> Segmentor:
    """DNLNet: ``DNLHead`` and mmseg's auxiliary head on stage 3 (256 wide, weight 0.4).

    Logits are upsampled with ``align_corners=False`` as mmseg. Head arguments: ``channels``,
    ``reduction``, ``use_scale``, ``temperature``, ``dropout`` (:class:`DNLHead`); the others are
    :func:`build_segmentor`'s (``encoder="resnet50c"``, ``output_stride=8``, ``aux=True``, ...).
    """
    kwargs.setdefault("encoder", "resnet50c")
    kwargs.setdefault("aux", True)
    model = build_segmentor(
        lambda widths, k, **head_kwargs: DNLHead(widths[-1], k, **head_kwargs),
        num_classes=num_classes, aux_head=partial(FCNHead, channels=256, in_index=-2), **kwargs,
    )
    model.align_corners = False
    return model


@register_model(weights=_MMSEG)
def dnlnet_r50_d8(num_classes: int = 19, **kwargs) -> Segmentor:
    """DNLNet, ResNet-50-C (mmseg's ResNetV1c layout, timm ``resnet50c``), output stride 8."""
    return build_variant(dnlnet, "resnet50c", {}, num_classes=num_classes, **kwargs)


@register_model(weights=_MMSEG)
def dnlnet_r101_d8(num_classes: int = 19, **kwargs) -> Segmentor:
    """DNLNet, ResNet-101-C (mmseg's ResNetV1c layout, timm ``resnet101c``), output stride 8."""
    return build_variant(dnlnet, "resnet101c", {}, num_classes=num_classes, **kwargs)
