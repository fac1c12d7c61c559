"""murufeng/EPSANet, transcribed: ``models/SE_weight_module.py`` (``SEWeightModule``) and
``models/epsanet.py`` (``PSAModule``, ``EPSABlock``, ``EPSANet``, ``epsanet50``, ``epsanet101``).

Paper: Zhang et al., "EPSANet: An Efficient Pyramid Squeeze Attention Block on Convolutional
Neural Network", ACCV 2022, https://arxiv.org/abs/2105.14447.

``PSAModule`` concatenates the weighted branches in reverse order (its loop prepends each branch):
branch 4 first, branch 1 last. As published (there is no device-specific code to change), except
that the list default arguments are tuples and that the torchvision-style ResNet skeleton (stem,
``_make_layers``, forward, and the bottleneck's conv1/bn1 .. conv3/bn3 and residual) is the one
shared with the other classification repositories, :mod:`._imagenet_resnet`: ``EPSABlock`` is its
bottleneck with ``PSAModule`` as ``conv2``, ``EPSANet`` its ResNet with EPSANet's initialisation.
The computation, the parameter names and the initialisation are the upstream ones.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import Counterpart, load_from, require
from ._imagenet_resnet import Bottleneck, ResNet

__all__ = ["SEWeightModule", "PSAModule", "EPSABlock", "EPSANet", "epsanet50", "epsanet101", "COUNTERPARTS"]


class SEWeightModule(nn.Module):
    def __init__(self, channels, reduction=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        out = self.avg_pool(x)
        out = self.fc1(out)
        out = self.relu(out)
        out = self.fc2(out)
        weight = self.sigmoid(out)
        return weight


def conv(in_planes, out_planes, kernel_size=3, stride=1, padding=1, dilation=1, groups=1):
    """standard convolution with padding"""
    return nn.Conv2d(in_planes, out_planes, kernel_size=kernel_size, stride=stride,
                     padding=padding, dilation=dilation, groups=groups, bias=False)


class PSAModule(nn.Module):
    def __init__(self, inplans, planes, conv_kernels=(3, 5, 7, 9), stride=1, conv_groups=(1, 4, 8, 16)):
        super().__init__()
        self.conv_1 = conv(inplans, planes // 4, kernel_size=conv_kernels[0], padding=conv_kernels[0] // 2,
                           stride=stride, groups=conv_groups[0])
        self.conv_2 = conv(inplans, planes // 4, kernel_size=conv_kernels[1], padding=conv_kernels[1] // 2,
                           stride=stride, groups=conv_groups[1])
        self.conv_3 = conv(inplans, planes // 4, kernel_size=conv_kernels[2], padding=conv_kernels[2] // 2,
                           stride=stride, groups=conv_groups[2])
        self.conv_4 = conv(inplans, planes // 4, kernel_size=conv_kernels[3], padding=conv_kernels[3] // 2,
                           stride=stride, groups=conv_groups[3])
        self.se = SEWeightModule(planes // 4)
        self.split_channel = planes // 4
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        batch_size = x.shape[0]
        x1 = self.conv_1(x)
        x2 = self.conv_2(x)
        x3 = self.conv_3(x)
        x4 = self.conv_4(x)

        feats = torch.cat((x1, x2, x3, x4), dim=1)
        feats = feats.view(batch_size, 4, self.split_channel, feats.shape[2], feats.shape[3])

        x1_se = self.se(x1)
        x2_se = self.se(x2)
        x3_se = self.se(x3)
        x4_se = self.se(x4)

        x_se = torch.cat((x1_se, x2_se, x3_se, x4_se), dim=1)
        attention_vectors = x_se.view(batch_size, 4, self.split_channel, 1, 1)
        attention_vectors = self.softmax(attention_vectors)
        feats_weight = feats * attention_vectors
        for i in range(4):
            x_se_weight_fp = feats_weight[:, i, :, :]
            if i == 0:
                out = x_se_weight_fp
            else:
                out = torch.cat((x_se_weight_fp, out), 1)
        return out


class EPSABlock(Bottleneck):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, norm_layer=None, conv_kernels=(3, 5, 7, 9),
                 conv_groups=(1, 4, 8, 16)):
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d

        def psa(planes, stride):
            return PSAModule(planes, planes, stride=stride, conv_kernels=conv_kernels, conv_groups=conv_groups)

        super().__init__(inplanes, planes, stride, downsample, conv2=psa, norm_layer=norm_layer)


class EPSANet(ResNet):
    def __init__(self, block, layers, num_classes=1000):
        super().__init__(block, layers, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2. / n))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()


def epsanet50():
    model = EPSANet(EPSABlock, [3, 4, 6, 3], num_classes=1000)
    return model


def epsanet101():
    model = EPSANet(EPSABlock, [3, 4, 23, 3], num_classes=1000)
    return model


def _psa(m: nn.Module) -> nn.Module:
    require(m, "PSAModule", reduction=16)
    if len(m.kernel_sizes) != 4:
        raise ValueError(f"the official PSAModule has 4 branches; this module has {len(m.kernel_sizes)}")
    official = PSAModule(m.channels, m.out_channels, m.kernel_sizes, m.stride, m.conv_groups)
    return load_from(official, m)


COUNTERPARTS = {"psa": Counterpart(build=_psa)}
