"""ISANet for segmentation: mmseg's ``ISAHead`` on a dilated ResNet, with an auxiliary FCN head.

Paper: Huang, Yuan, Guo, Zhang, Chen, Wang, "Interlaced Sparse Self-Attention for Semantic
Segmentation", 2019, https://arxiv.org/abs/1907.12273 ; the segmentation network is
mmsegmentation's (https://github.com/open-mmlab/mmsegmentation, ``mmseg/models/decode_heads/isa_head.py``,
``configs/_base_/models/isanet_r50-d8.py``).

``ISAHead``: ``in_conv`` (3x3 conv + BN + ReLU, C_in -> 512) -> ``isa``
(:class:`~visattn.attention.isa.InterlacedSparseAttention` on 512 channels: query/key width 256,
local groups 8 x 8, long-range then short-range self-attention, ``out_conv`` on the concatenation
with its input) -> Dropout2d(0.1) -> ``conv_seg``. The recipe adds an auxiliary ``FCNHead`` on
stage 3 (1024 -> 256, loss weight 0.4) and upsamples with ``align_corners=False``; the encoder is
mmseg's ResNetV1c (timm's ``resnet50c`` / ``resnet101c``) at output stride 8.

Module names are mmseg's except the attention's: mmseg's ``global_relation``, ``local_relation``
and ``out_conv`` are ``isa.global_relation``, ``isa.local_relation`` and ``isa.out_conv`` here;
:meth:`ISAHead.convert_official_state_dict` renames a whole ``isanet_r*-d8`` checkpoint (what
``visattn.load_official`` calls).

Differences from the official code: mmseg's SyncBN is ``nn.BatchNorm2d``; the ImageNet weights of
``encoder_weights="imagenet"`` are timm's ``resnet*c`` ones, not mmseg's ``open-mmlab://resnet50_v1c``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

from torch import Tensor, nn

from ...attention.isa import InterlacedSparseAttention
from ..registry import Weights, register_model
from ._mmseg import conv_module, convert_mmseg_state_dict, init_conv_seg
from .base import FCNHead, Segmentor, build_segmentor, build_variant, head_width

__all__ = ["ISAHead", "isanet", "isanet_r50_d8", "isanet_r101_d8"]

# mmseg publishes the checkpoints of its isanet_r*-d8 recipes (Cityscapes, ADE20K, VOC)
_MMSEG = Weights("https://github.com/open-mmlab/mmsegmentation/tree/main/configs/isanet (links in its README)")
# mmseg's ISAHead names of the attention -> ours
_HEAD_KEYS = {"global_relation.": "isa.global_relation.", "local_relation.": "isa.local_relation.",
              "out_conv.": "isa.out_conv."}


class ISAHead(nn.Module):
    """mmseg's ISANet head on ``features[in_index]``: logits ``(B, num_classes, h, w)``.

    Args:
        in_channels: channels of the input feature map (2048 for ResNet-50/101).
        num_classes: output channels.
        channels: width of ``in_conv`` and of the attention (512).
        isa_channels: query/key width of the attention (256).
        down_factor: the local group size ``(rows, columns)`` ((8, 8)).
        dropout: Dropout2d probability before ``conv_seg`` (0.1).
        in_index: which feature map of the encoder's list to use (the last).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        isa_channels: int = 256,
        down_factor: Sequence[int] = (8, 8),
        dropout: float = 0.1,
        in_index: int = -1,
    ) -> None:
        super().__init__()
        channels = head_width(channels, 512, "ISAHead")
        self.in_index = in_index
        self.in_conv = conv_module(in_channels, channels)
        self.isa = InterlacedSparseAttention(channels, isa_channels, down_factor)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = init_conv_seg(nn.Conv2d(channels, num_classes, 1))

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        out = self.isa(self.in_conv(features[self.in_index]))
        return self.conv_seg(self.dropout(out))

    def convert_official_state_dict(self, state_dict: Mapping[str, Tensor], segmentor: nn.Module) -> dict[str, Tensor]:
        """Rename an mmseg ``isanet_r*-d8`` checkpoint to the keys of :func:`isanet_r50_d8` / ``_r101_d8``
        (``decode_head.{global_relation,local_relation,out_conv}.*`` -> ``head.isa.*``, the rest as
        :func:`convert_mmseg_state_dict`)."""
        return convert_mmseg_state_dict(state_dict, _HEAD_KEYS)


@register_model
def isanet(num_classes: int = 19, **kwargs) -> Segmentor:
    """ISANet: ``ISAHead`` and mmseg's auxiliary head on stage 3 (256 wide, weight 0.4).

    Logits are upsampled with ``align_corners=False`` as mmseg. Head arguments: ``channels``,
    ``isa_channels``, ``down_factor``, ``dropout`` (:class:`ISAHead`); the others are
    :func:`build_segmentor`'s (``encoder="resnet50c"``, ``output_stride=8``, ``aux=True``, ...).
    """
    kwargs.setdefault("encoder", "resnet50c")
    kwargs.setdefault("aux", True)
    model = build_segmentor(
        lambda widths, k, **head_kwargs: ISAHead(widths[-1], k, **head_kwargs),
        num_classes=num_classes, aux_head=partial(FCNHead, channels=256, in_index=-2), **kwargs,
    )
    model.align_corners = False
    return model


@register_model(weights=_MMSEG)
def isanet_r50_d8(num_classes: int = 19, **kwargs) -> Segmentor:
    """ISANet, ResNet-50-C (mmseg's ResNetV1c layout, timm ``resnet50c``), output stride 8."""
    return build_variant(isanet, "resnet50c", {}, num_classes=num_classes, **kwargs)


@register_model(weights=_MMSEG)
def isanet_r101_d8(num_classes: int = 19, **kwargs) -> Segmentor:
    """ISANet, ResNet-101-C (mmseg's ResNetV1c layout, timm ``resnet101c``), output stride 8."""
    return build_variant(isanet, "resnet101c", {}, num_classes=num_classes, **kwargs)
