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

from torch import nn

from ...attention.dnl import DisentangledNonLocal2d
from ._mmseg import ConcatInputBlockHead, register_mmseg_builders

__all__ = ["DNLHead", "dnlnet", "dnlnet_r50_d8", "dnlnet_r101_d8"]


class DNLHead(ConcatInputBlockHead):
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
        super().__init__(
            in_channels, num_classes, "dnl_block",
            lambda width: DisentangledNonLocal2d(width, reduction, use_scale, temperature, norm_layer=nn.BatchNorm2d),
            channels, dropout, in_index,
        )


# mmseg publishes the checkpoints of its dnl_r*-d8 recipes (Cityscapes, ADE20K)
dnlnet, dnlnet_r50_d8, dnlnet_r101_d8 = register_mmseg_builders("dnlnet", DNLHead, title="DNLNet", config="dnlnet")
