"""Dilated FCN: the baseline of the attention papers, ``FCNHead`` on the last feature map.

Paper: Long et al., "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015,
https://arxiv.org/abs/1411.4038; here the dilated-FCN baseline of the DANet and CCNet papers
(dilated ResNet, output stride 8, one 3x3 conv + classifier). The head is :class:`FCNHead`
(``base.py``), which also serves every segmentor as its auxiliary head.
"""
from __future__ import annotations

from ..registry import register_model
from .base import FCNHead, Segmentor, build_segmentor, build_variant, on_last_map

__all__ = ["fcn", "fcn_r50_d8", "fcn_r101_d8"]


@register_model
def fcn(num_classes: int = 19, **kwargs) -> Segmentor:
    """Dilated FCN: ``FCNHead`` on the last feature map.

    Head arguments: ``channels``, ``dropout`` (:class:`FCNHead`); the others are
    :func:`build_segmentor`'s (``encoder="resnet50"``, ``output_stride=8``, ``aux=False``, ...).
    """
    return build_segmentor(on_last_map(FCNHead), num_classes=num_classes, **kwargs)


@register_model
def fcn_r50_d8(num_classes: int = 19, **kwargs) -> Segmentor:
    """Dilated FCN, ResNet-50 (timm ``resnet50``, torchvision layout), output stride 8."""
    return build_variant(fcn, "resnet50", {}, num_classes=num_classes, **kwargs)


@register_model
def fcn_r101_d8(num_classes: int = 19, **kwargs) -> Segmentor:
    """Dilated FCN, ResNet-101 (timm ``resnet101``, torchvision layout), output stride 8."""
    return build_variant(fcn, "resnet101", {}, num_classes=num_classes, **kwargs)
