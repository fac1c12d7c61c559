"""OCRNet: object-contextual representations, mmseg's cascade of an FCN head and ``OCRHead`` on a dilated ResNet.

Paper: Yuan, Chen, Wang, "Object-Contextual Representations for Semantic Segmentation", ECCV 2020,
https://arxiv.org/abs/1909.11065 ; the network is mmsegmentation's
(``mmseg/models/decode_heads/ocr_head.py``, ``configs/_base_/models/ocrnet_r50-d8.py``).

The cascade: ``regions``, an FCN head on stage 3 (3x3 conv 1024 -> 256 + BN + ReLU,
Dropout2d(0.1), 1x1 conv to the K classes, loss weight 0.4), gives the soft object regions; then
on stage 4:

- ``bottleneck``: 3x3 ConvModule 2048 -> 512 (the pixel representations ``x``);
- spatial gather: each region's representation ``f_k = sum_i softmax_i(regions_k)_i x_i``;
- ``object_context_block``: every pixel attends to the K region representations,
  ``y_i = sum_k softmax_k(q_i . k_k / sqrt(256)) v_k`` with ``q = query_project(x)``, ``k =
  key_project(f)`` (two 1x1 ConvModules each, to 256), ``v = value_project(f)``, then
  ``out_project`` (1x1 ConvModule to 512) and ``bottleneck`` (1x1 ConvModule on concat(y, x));
- Dropout2d(0.1) -> ``conv_seg``.

In training the head returns ``{"out": ..., "regions": ...}`` (loss weights 1 and 0.4); logits are
upsampled with ``align_corners=False``. Module names are mmseg's; ``convert_official_state_dict``
renames a whole ``ocrnet_r*-d8`` checkpoint (``decode_head.0`` -> ``head.regions``,
``decode_head.1.*`` -> ``head.*``). The pictures of OCR are its object regions
(:class:`ObjectRegions`, ``head.object_regions``: each class's softmax over the positions, the
weights of the gather; ``visattn explain`` draws the region of the class likeliest at the query).

Differences from the official code: the pixel-region attention is
:func:`~visattn.attention._functional.softmax_attention` (exact), the ``1/sqrt(c)`` scale applied
to the queries rather than to the scores (equal up to rounding); mmseg's ``scale`` is fixed at its
default 1 (its ``scale > 1`` path resizes without a size and fails); the regions head is
:class:`~.base.FCNHead` (keys ``0``, ``1``, ``3``); mmseg's SyncBN is ``nn.BatchNorm2d``.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn

from ...attention._common import AttentionMap, conv_module, query_cells, to_numpy
from ...attention._functional import softmax_attention
from ._mmseg import AUX_KEYS, DecodeHead, register_mmseg_builders
from .base import FCNHead

__all__ = ["ObjectRegions", "ObjectAttentionBlock", "OCRHead", "ocrnet", "ocrnet_r50_d8", "ocrnet_r101_d8"]


class ObjectRegions(nn.Module):
    """Soft object regions: region logits ``(B, K, H, W)`` -> each region's softmax over the positions ``(B, K, H*W)``.

    The weights of OCR's spatial gather (mmseg's ``SpatialGatherModule``), and its pictures.
    """

    def forward(self, regions: Tensor) -> Tensor:
        return regions.flatten(2).softmax(2)

    def attention_weights(self, x: Tensor) -> dict[str, Tensor]:
        """``{"region": (B, K, H, W)}``: each class's soft object region (summing to 1 over positions)."""
        return {"region": self(x).view_as(x)}

    def attention_maps(self, x: Tensor, points: Sequence[tuple[int, int]] = ()) -> list[AttentionMap]:
        """One ``(H, W)`` map per query cell of the region logits ``x`` ``(1, K, H, W)``: the soft region
        of the class most likely there (default cell: the centre)."""
        points = query_cells("ObjectRegions", x, points)
        regions = self.attention_weights(x)["region"][0]
        maps = []
        for i, p in enumerate(points):
            k = int(x[0, :, p[0], p[1]].argmax())
            maps.append(AttentionMap(f"region_q{i}", f"OCR: object region of class {k}, the likeliest at {p}",
                                     to_numpy(regions[k]), point=p))
        return maps


class ObjectAttentionBlock(nn.Module):
    """Pixels ``(B, C, H, W)`` attend to region representations ``(B, C, K, 1)``: ``(B, C, H, W)`` out."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.channels = channels
        conv = partial(conv_module, kernel_size=1, norm=True, act=True)  # mmseg's 1x1 ConvModules
        self.query_project = nn.Sequential(conv(in_channels, channels), conv(channels, channels))
        self.key_project = nn.Sequential(conv(in_channels, channels), conv(channels, channels))
        self.value_project = conv(in_channels, channels)
        self.out_project = conv(channels, in_channels)
        self.bottleneck = conv(2 * in_channels, in_channels)

    def forward(self, query_feats: Tensor, key_feats: Tensor) -> Tensor:
        b, _, h, w = query_feats.shape
        query = self.query_project(query_feats).flatten(2).transpose(1, 2) * self.channels**-0.5  # (B, N, c)
        key = self.key_project(key_feats).flatten(2).transpose(1, 2)  # (B, K, c)
        value = self.value_project(key_feats).flatten(2)  # (B, c, K)
        context = self.out_project(softmax_attention(query, key, value).view(b, -1, h, w))
        return self.bottleneck(torch.cat([context, query_feats], 1))


class OCRHead(DecodeHead):
    """mmseg's OCRNet cascade on ``features[-2]`` (regions) and ``features[-1]``: logits ``(B, num_classes, h, w)``.

    Args:
        in_channels: channels of stage 4 (2048 for ResNet-50/101).
        region_in_channels: channels of stage 3, the regions head's input (1024).
        num_classes: output channels (and the number of object regions).
        channels: width of the pixel representations (512).
        ocr_channels: width of the pixel-region attention (256).
        region_channels: hidden width of the regions head (256).
        dropout: Dropout2d probability before both classifiers (0.1).
        region_weight: loss weight of the regions' logits (0.4).
    """

    # mmseg's cascade: decode_head.0 is the regions' FCNHead, decode_head.1 the OCRHead
    head_keys = {**{f"0.{old}": f"regions.{new}" for old, new in AUX_KEYS.items()}, "1.": ""}

    def __init__(
        self,
        in_channels: int,
        region_in_channels: int,
        num_classes: int,
        channels: int = 512,
        ocr_channels: int = 256,
        region_channels: int = 256,
        dropout: float = 0.1,
        region_weight: float = 0.4,
    ) -> None:
        super().__init__(dropout)
        if channels < 1 or ocr_channels < 1:
            raise ValueError(f"OCRHead: widths must be positive, got channels={channels}, ocr_channels={ocr_channels}")
        self.regions = FCNHead(region_in_channels, num_classes, region_channels, in_index=-2, dropout=dropout)
        self.object_regions = ObjectRegions()
        self.bottleneck = conv_module(in_channels, channels, 3, norm=True, act=True)
        self.object_context_block = ObjectAttentionBlock(channels, ocr_channels)
        self.add_conv_seg(channels, num_classes)
        self.loss_weights = {"out": 1.0, "regions": float(region_weight)}

    def forward(self, features: Sequence[Tensor]) -> Tensor | dict[str, Tensor]:
        regions = self.regions(features)
        feats = self.bottleneck(features[self.in_index])
        gathered = torch.bmm(self.object_regions(regions), feats.flatten(2).transpose(1, 2))  # (B, K, C)
        out = self.object_context_block(feats, gathered.transpose(1, 2).unsqueeze(3))
        out = self.cls_seg(out)
        return {"out": out, "regions": regions} if self.training else out


ocrnet, ocrnet_r50_d8, ocrnet_r101_d8 = register_mmseg_builders(
    "ocrnet", OCRHead, title="OCRNet", config="ocrnet", aux=False,
    summary="the regions' FCN head on stage 3 (weight 0.4), then ``OCRHead`` on stage 4",
    build_head=lambda widths, k, **head_kwargs: OCRHead(widths[-1], widths[-2], k, **head_kwargs),
)
