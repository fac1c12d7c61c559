"""implus/PytorchInsight, transcribed: ``classification/models/imagenet/resnet_sge.py``
(``SpatialGroupEnhance``, ``Bottleneck``, ``ResNet``, ``sge_resnet50``, ``sge_resnet101``).

Paper: Li, Hu, Yang, "Spatial Group-wise Enhance: Improving Semantic Feature Learning in
Convolutional Networks", 2019, https://arxiv.org/abs/1905.09646.

As published (no device-specific code to change); the ``BasicBlock`` variants (SGE-ResNet-18/34)
are left out. The torchvision-style ResNet skeleton (stem, ``_make_layer``, forward, and the
bottleneck's conv1/bn1 .. conv3/bn3 and residual) is the one shared with the other classification
repositories, :mod:`._imagenet_resnet`: ``Bottleneck`` is its bottleneck with ``sge`` applied
after ``bn3``, ``ResNet`` its ResNet with this repository's initialisation. The computation, the
parameter names and the initialisation are the upstream ones.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import Parameter

from . import Counterpart, load_from
from ._imagenet_resnet import Bottleneck as _Bottleneck
from ._imagenet_resnet import ResNet as _ResNet

__all__ = ["SpatialGroupEnhance", "Bottleneck", "ResNet", "sge_resnet50", "sge_resnet101", "COUNTERPARTS"]


class SpatialGroupEnhance(nn.Module):
    def __init__(self, groups=64):
        super().__init__()
        self.groups = groups
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.weight = Parameter(torch.zeros(1, groups, 1, 1))
        self.bias = Parameter(torch.ones(1, groups, 1, 1))
        self.sig = nn.Sigmoid()

    def forward(self, x):  # (b, c, h, w)
        b, c, h, w = x.size()
        x = x.view(b * self.groups, -1, h, w)
        xn = x * self.avg_pool(x)
        xn = xn.sum(dim=1, keepdim=True)
        t = xn.view(b * self.groups, -1)
        t = t - t.mean(dim=1, keepdim=True)
        std = t.std(dim=1, keepdim=True) + 1e-5
        t = t / std
        t = t.view(b, self.groups, h, w)
        t = t * self.weight + self.bias
        t = t.view(b * self.groups, 1, h, w)
        x = x * self.sig(t)
        x = x.view(b, c, h, w)
        return x


class Bottleneck(_Bottleneck):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__(inplanes, planes, stride, downsample)
        self.sge = SpatialGroupEnhance(64)

    def attend(self, out):
        return self.sge(out)


class ResNet(_ResNet):
    def __init__(self, block, layers, num_classes=1000, zero_init_residual=False):
        super().__init__(block, layers, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)


def sge_resnet50(pretrained=False, **kwargs):
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)


def sge_resnet101(pretrained=False, **kwargs):
    return ResNet(Bottleneck, [3, 4, 23, 3], **kwargs)


COUNTERPARTS = {"sge": Counterpart(build=lambda m: load_from(SpatialGroupEnhance(m.groups), m))}
