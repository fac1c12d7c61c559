"""Non-local network for segmentation: mmseg's ``NLHead`` on a dilated ResNet, with an auxiliary FCN head.

Paper: Wang, Girshick, Gupta, He, "Non-local Neural Networks", CVPR 2018,
https://arxiv.org/abs/1711.07971 ; the segmentation network is mmsegmentation's
(https://github.com/open-mmlab/mmsegmentation, ``mmseg/models/decode_heads/nl_head.py``,
``configs/_base_/models/nonlocal_r50-d8.py``), the Non-local baseline the DANet, CCNet and
FLANet papers compare against.

``NLHead`` (an mmseg ``FCNHead`` with two convs and ``concat_input``): ``convs.0`` (3x3 conv + BN
+ ReLU, C_in -> 512) -> ``nl_block`` (:class:`~visattn.attention.non_local.NonLocal2d` on 512
channels, reduction 2, scaled, BN after ``conv_out``) -> ``convs.1`` (3x3 conv + BN + ReLU) ->
``conv_cat`` (concat(input, ``convs.1`` output) -> 3x3 conv + BN + ReLU to 512) -> Dropout2d(0.1)
-> ``conv_seg`` (1x1 conv to the classes). The recipe adds an auxiliary ``FCNHead`` on stage 3
(1024 -> 256, one conv, no concat, loss weight 0.4) and upsamples with ``align_corners=False``.

The backbone of the released checkpoints is mmseg's ``ResNetV1c`` (deep stem 3->32->32->64,
stride on the 3x3 conv, stages 3 and 4 dilated 2 and 4 with the first block at half the rate):
timm's ``resnet50c`` / ``resnet101c`` at output stride 8 have that layout.

Module names are mmseg's (``convs.0.conv``, ``convs.0.bn``, ``nl_block.g.conv``, ``conv_cat``,
``conv_seg``, ...), so a checkpoint's ``decode_head.*`` loads into the head as it is;
:meth:`NLHead.convert_official_state_dict` (:class:`~._mmseg.DecodeHead`'s) renames a whole ``nonlocal_r*-d8`` checkpoint (what
``visattn.load_official`` calls).

Differences from the official code: mmseg's SyncBN is ``nn.BatchNorm2d`` (convert the model with
``nn.SyncBatchNorm.convert_sync_batchnorm`` for multi-GPU training); the ImageNet weights of
``encoder_weights="imagenet"`` are timm's ``resnet*c`` ones, not mmseg's ``open-mmlab://resnet50_v1c``.
"""
from __future__ import annotations

from torch import nn

from ...attention.non_local import NonLocal2d
from ._mmseg import ConcatInputBlockHead, register_mmseg_builders

__all__ = ["NLHead", "nlnet", "nlnet_r50_d8", "nlnet_r101_d8"]


class NLHead(ConcatInputBlockHead):
    """mmseg's Non-local head on ``features[in_index]``: logits ``(B, num_classes, h, w)``.

    Args:
        in_channels: channels of the input feature map (2048 for ResNet-50/101).
        num_classes: output channels.
        channels: width of the convs and of the Non-local block (512).
        reduction: the Non-local block's embedding reduction (2).
        use_scale: scale the Non-local scores by ``1 / sqrt(channels // reduction)`` (True).
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
        dropout: float = 0.1,
        in_index: int = -1,
    ) -> None:
        super().__init__(
            in_channels, num_classes, "nl_block",
            lambda width: NonLocal2d(width, reduction, use_scale, norm_layer=nn.BatchNorm2d),
            channels, dropout, in_index,
        )


# mmseg publishes the checkpoints of its nonlocal_r*-d8 recipes (Cityscapes, ADE20K, VOC)
nlnet, nlnet_r50_d8, nlnet_r101_d8 = register_mmseg_builders(
    "nlnet", NLHead, title="Non-local network", config="nonlocal_net",
)
