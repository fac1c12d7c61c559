"""Jongchan/attention-module, transcribed: ``MODELS/bam.py`` (``BAM``), ``MODELS/cbam.py``
(``CBAM``) and ``MODELS/model_resnet.py`` (``Bottleneck``, ``ResNet``, ``ResidualNet``).

Papers: Park et al., "BAM: Bottleneck Attention Module", BMVC 2018,
https://arxiv.org/abs/1807.06514; Woo et al., "CBAM: Convolutional Block Attention Module",
ECCV 2018, https://arxiv.org/abs/1807.06521.

``BAM`` multiplies the channel and spatial gates (the paper adds them): its visattn counterpart is
``BAM(combine="product")``. Its channel gate average-pools an ``H x H`` window, so it agrees with
visattn only on square maps.

Changes: both ``bam.py`` and ``cbam.py`` define ``ChannelGate`` and ``SpatialGate``; here bam.py's
are ``BAMChannelGate`` and ``BAMSpatialGate`` (the attribute names, hence the state-dict keys, are
the published ones). The deprecated ``F.sigmoid`` and ``init.kaiming_normal`` are
``torch.sigmoid`` and ``init.kaiming_normal_``; list default arguments are tuples. Left out: the
``BasicBlock`` variants (ResNet-18/34), CBAM's ``lp`` and ``lse`` pool types, and the line
``self.gate_activation = gate_activation`` of one revision of bam.py's ``ChannelGate`` (an
undefined name there).

Shared: the torchvision-style ResNet skeleton of model_resnet.py (stem, ``_make_layer``, forward,
and the bottleneck's conv1/bn1 .. conv3/bn3 and residual) is the one of the other classification
repositories, :mod:`._imagenet_resnet`: ``Bottleneck`` is its bottleneck with ``cbam`` applied
after ``bn3``, ``ResNet`` its ResNet with the CIFAR stem, ``AvgPool2d(7)``, the ``bam1`` .. ``bam3``
stage modules and this repository's initialisation. The computation, the parameter names and the
initialisation are the upstream ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import init

from . import Counterpart, load_from, require
from ._imagenet_resnet import Bottleneck as _Bottleneck
from ._imagenet_resnet import ResNet as _ResNet

__all__ = [
    "BAM", "BAMChannelGate", "BAMSpatialGate", "CBAM", "ChannelGate", "SpatialGate", "Bottleneck", "ResNet",
    "ResidualNet", "COUNTERPARTS",
]


class Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


# ---------------------------------------------------------------- MODELS/bam.py
class BAMChannelGate(nn.Module):
    def __init__(self, gate_channel, reduction_ratio=16, num_layers=1):
        super().__init__()
        self.gate_c = nn.Sequential()
        self.gate_c.add_module("flatten", Flatten())
        gate_channels = [gate_channel]
        gate_channels += [gate_channel // reduction_ratio] * num_layers
        gate_channels += [gate_channel]
        for i in range(len(gate_channels) - 2):
            self.gate_c.add_module("gate_c_fc_%d" % i, nn.Linear(gate_channels[i], gate_channels[i + 1]))
            self.gate_c.add_module("gate_c_bn_%d" % (i + 1), nn.BatchNorm1d(gate_channels[i + 1]))
            self.gate_c.add_module("gate_c_relu_%d" % (i + 1), nn.ReLU())
        self.gate_c.add_module("gate_c_fc_final", nn.Linear(gate_channels[-2], gate_channels[-1]))

    def forward(self, in_tensor):
        avg_pool = F.avg_pool2d(in_tensor, in_tensor.size(2), stride=in_tensor.size(2))
        return self.gate_c(avg_pool).unsqueeze(2).unsqueeze(3).expand_as(in_tensor)


class BAMSpatialGate(nn.Module):
    def __init__(self, gate_channel, reduction_ratio=16, dilation_conv_num=2, dilation_val=4):
        super().__init__()
        self.gate_s = nn.Sequential()
        self.gate_s.add_module("gate_s_conv_reduce0", nn.Conv2d(gate_channel, gate_channel // reduction_ratio, kernel_size=1))
        self.gate_s.add_module("gate_s_bn_reduce0", nn.BatchNorm2d(gate_channel // reduction_ratio))
        self.gate_s.add_module("gate_s_relu_reduce0", nn.ReLU())
        for i in range(dilation_conv_num):
            self.gate_s.add_module("gate_s_conv_di_%d" % i, nn.Conv2d(gate_channel // reduction_ratio, gate_channel // reduction_ratio,
                                                                     kernel_size=3, padding=dilation_val, dilation=dilation_val))
            self.gate_s.add_module("gate_s_bn_di_%d" % i, nn.BatchNorm2d(gate_channel // reduction_ratio))
            self.gate_s.add_module("gate_s_relu_di_%d" % i, nn.ReLU())
        self.gate_s.add_module("gate_s_conv_final", nn.Conv2d(gate_channel // reduction_ratio, 1, kernel_size=1))

    def forward(self, in_tensor):
        return self.gate_s(in_tensor).expand_as(in_tensor)


class BAM(nn.Module):
    def __init__(self, gate_channel):
        super().__init__()
        self.channel_att = BAMChannelGate(gate_channel)
        self.spatial_att = BAMSpatialGate(gate_channel)

    def forward(self, in_tensor):
        att = 1 + torch.sigmoid(self.channel_att(in_tensor) * self.spatial_att(in_tensor))
        return att * in_tensor


# ---------------------------------------------------------------- MODELS/cbam.py
class BasicConv(nn.Module):
    def __init__(self, in_planes, out_planes, kernel_size, stride=1, padding=0, dilation=1, groups=1, relu=True, bn=True,
                 bias=False):
        super().__init__()
        self.out_channels = out_planes
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=kernel_size, stride=stride, padding=padding,
                              dilation=dilation, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_planes, eps=1e-5, momentum=0.01, affine=True) if bn else None
        self.relu = nn.ReLU() if relu else None

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.relu is not None:
            x = self.relu(x)
        return x


class ChannelGate(nn.Module):
    def __init__(self, gate_channels, reduction_ratio=16, pool_types=("avg", "max")):
        super().__init__()
        self.gate_channels = gate_channels
        self.mlp = nn.Sequential(
            Flatten(),
            nn.Linear(gate_channels, gate_channels // reduction_ratio),
            nn.ReLU(),
            nn.Linear(gate_channels // reduction_ratio, gate_channels),
        )
        self.pool_types = pool_types

    def forward(self, x):
        channel_att_sum = None
        for pool_type in self.pool_types:
            if pool_type == "avg":
                avg_pool = F.avg_pool2d(x, (x.size(2), x.size(3)), stride=(x.size(2), x.size(3)))
                channel_att_raw = self.mlp(avg_pool)
            elif pool_type == "max":
                max_pool = F.max_pool2d(x, (x.size(2), x.size(3)), stride=(x.size(2), x.size(3)))
                channel_att_raw = self.mlp(max_pool)
            if channel_att_sum is None:
                channel_att_sum = channel_att_raw
            else:
                channel_att_sum = channel_att_sum + channel_att_raw
        scale = torch.sigmoid(channel_att_sum).unsqueeze(2).unsqueeze(3).expand_as(x)
        return x * scale


class ChannelPool(nn.Module):
    def forward(self, x):
        return torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)


class SpatialGate(nn.Module):
    def __init__(self):
        super().__init__()
        kernel_size = 7
        self.compress = ChannelPool()
        self.spatial = BasicConv(2, 1, kernel_size, stride=1, padding=(kernel_size - 1) // 2, relu=False)

    def forward(self, x):
        x_compress = self.compress(x)
        x_out = self.spatial(x_compress)
        scale = torch.sigmoid(x_out)  # broadcasting
        return x * scale


class CBAM(nn.Module):
    def __init__(self, gate_channels, reduction_ratio=16, pool_types=("avg", "max"), no_spatial=False):
        super().__init__()
        self.ChannelGate = ChannelGate(gate_channels, reduction_ratio, pool_types)
        self.no_spatial = no_spatial
        if not no_spatial:
            self.SpatialGate = SpatialGate()

    def forward(self, x):
        x_out = self.ChannelGate(x)
        if not self.no_spatial:
            x_out = self.SpatialGate(x_out)
        return x_out


# ---------------------------------------------------------------- MODELS/model_resnet.py
class Bottleneck(_Bottleneck):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, use_cbam=False):
        super().__init__(inplanes, planes, stride, downsample)
        if use_cbam:
            self.cbam = CBAM(planes * 4, 16)
        else:
            self.cbam = None

    def attend(self, out):
        if self.cbam is not None:
            out = self.cbam(out)
        return out


class ResNet(_ResNet):
    def __init__(self, block, layers, network_type, num_classes, att_type=None):
        # different model config between ImageNet and CIFAR
        super().__init__(
            block, layers, num_classes,
            stem="imagenet" if network_type == "ImageNet" else "cifar",
            avgpool=nn.AvgPool2d(7),
            stage_attention=BAM if att_type == "BAM" else None,
            use_cbam=att_type == "CBAM",
        )
        self.network_type = network_type

        init.kaiming_normal_(self.fc.weight)
        for key in self.state_dict():
            if key.split(".")[-1] == "weight":
                if "conv" in key:
                    init.kaiming_normal_(self.state_dict()[key], mode="fan_out")
                if "bn" in key:
                    if "SpatialGate" in key:
                        self.state_dict()[key][...] = 0
                    else:
                        self.state_dict()[key][...] = 1
            elif key.split(".")[-1] == "bias":
                self.state_dict()[key][...] = 0


def ResidualNet(network_type, depth, num_classes, att_type):
    assert depth in [50, 101], "network depth should be 50 or 101 (the BasicBlock depths are left out)"
    layers = [3, 4, 6, 3] if depth == 50 else [3, 4, 23, 3]
    return ResNet(Bottleneck, layers, network_type, num_classes, att_type)


def _bam(m: nn.Module) -> nn.Module:
    require(m, "BAM", reduction=16, dilation=4, combine="product")
    return load_from(BAM(m.channels), m)


def _cbam(m: nn.Module) -> nn.Module:
    require(m, "CBAM", kernel_size=7)
    return load_from(CBAM(m.channels, m.reduction), m)


COUNTERPARTS = {
    "bam": Counterpart(build=_bam, visattn_kwargs={"combine": "product"}, square_only=True),
    "cbam": Counterpart(build=_cbam),
}
