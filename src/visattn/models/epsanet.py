"""EPSANet: ResNet with the bottleneck's 3×3 conv replaced by pyramid squeeze attention (PSA).

Paper: Zhang et al., "EPSANet: An Efficient Pyramid Squeeze Attention Block on Convolutional
Neural Network", ACCV 2022, https://arxiv.org/abs/2105.14447; official code: murufeng/EPSANet
``models/epsanet.py``.

The layout, parameter names and initialisation are the official code's: a torchvision ResNet with
``layerX.Y.conv2`` a :class:`~visattn.attention.psa.PyramidSqueezeAttention` (keys
``conv2.conv_1..4`` and ``conv2.se.fc1/fc2``), kernels (3, 5, 7, 9) with groups (1, 4, 8, 16) in
every stage, so the released checkpoints load with :func:`visattn.load_official` as they are. These
are the "Small" models; the "Large" ones of the paper were never released and cannot be built from
the released code (groups 32 at its widths is invalid), so they are not offered.

The authors' weights have no direct-download link, so ``pretrained=True`` raises; download them
from murufeng/EPSANet and pass the path (or use ``load_official``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..attention.psa import PyramidSqueezeAttention
from .registry import Weights, register_model
from .resnet import Bottleneck, ResNet

__all__ = ["EPSANet", "epsanet50", "epsanet101"]

_RELEASE = Weights("https://github.com/murufeng/EPSANet")


class EPSANet(ResNet):
    """EPSANet: :class:`~visattn.models.resnet.ResNet` of EPSA blocks, each a
    :class:`~visattn.models.resnet.Bottleneck` whose 3×3 ``conv2`` is PSA (which carries the stride).

    ``(B, 3, H, W) -> (B, num_classes)``.

    Args:
        layers: blocks per stage, ``(3, 4, 6, 3)`` (EPSANet-50) or ``(3, 4, 23, 3)`` (EPSANet-101).
        num_classes: classifier outputs.
        kernel_sizes, conv_groups, reduction: PSA configuration of every block (official:
            ``(3, 5, 7, 9)``, ``(1, 4, 8, 16)``, 16).
        zero_init_residual: zero the last BN of each block (not in the official code).

    Initialisation as the official code: every conv weight (PSA's SE convs included) normal with
    std ``sqrt(2 / (k*k*out_channels))``, conv biases left at PyTorch's default, BatchNorm 1 and 0.
    """

    def __init__(
        self,
        layers: Sequence[int],
        num_classes: int = 1000,
        kernel_sizes: Sequence[int] = (3, 5, 7, 9),
        conv_groups: Sequence[int] = (1, 4, 8, 16),
        reduction: int = 16,
        zero_init_residual: bool = False,
    ) -> None:
        kernel_sizes, conv_groups = tuple(kernel_sizes), tuple(conv_groups)

        def psa(planes: int, stride: int) -> PyramidSqueezeAttention:
            return PyramidSqueezeAttention(
                planes, planes, stride=stride, kernel_sizes=kernel_sizes, conv_groups=conv_groups, reduction=reduction
            )

        super().__init__(layers, num_classes, block_kwargs={"conv2": psa}, zero_init_residual=zero_init_residual)

    @torch.no_grad()
    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.normal_(0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)


@register_model(weights=_RELEASE)
def epsanet50(num_classes: int = 1000, **kwargs) -> EPSANet:
    """EPSANet-50 (Small): 22,561,715 parameters at 1000 classes, as the official code
    (paper: 22.56M, 3.62 GFLOPs, 77.49 top-1)."""
    return EPSANet((3, 4, 6, 3), num_classes, **kwargs)


@register_model(weights=_RELEASE)
def epsanet101(num_classes: int = 1000, **kwargs) -> EPSANet:
    """EPSANet-101 (Small): 38,900,279 parameters at 1000 classes, as the official code
    (paper: 38.90M, 6.82 GFLOPs, 78.43 top-1)."""
    return EPSANet((3, 4, 23, 3), num_classes, **kwargs)
