"""The dilated ResNet backbones of the segmentation repositories, in one parametrised form.

DANet (the ``encoding`` package's dilated ResNet), CCNet (``networks/ccnet.py``) and FLANet
(``model.py``) each ship a ResNet with the same bottleneck (conv1/bn1, conv2/bn2, conv3/bn3,
``downsample``) and differ only in the stem, the norm layer and the per-block dilations of stages
3 and 4; those are the arguments here. The widths are arguments too, so that the tests can run
the networks small. No ``COUNTERPARTS``: the attention modules live in the repository files.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Bottleneck", "DilatedResNet"]


class Bottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride, dilation, downsample, bn):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn2 = bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = bn(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class DilatedResNet(nn.Module):
    """Output stride 8; ``forward`` returns the outputs of stages 2, 3 and 4.

    Args:
        layers: blocks per stage.
        widths: bottleneck widths ``planes`` per stage (outputs ``4 * planes``).
        stem: ``"7x7"`` (DANet's 2018 backbone: ``conv1``, ``bn1``), ``"ccnet"`` (three 3x3 convs
            ``conv1/bn1 .. conv3/bn3``) or ``"seq"`` (FLANet: the three convs in a Sequential
            ``conv1``, then ``bn1``).
        stem_width: width of the stem's first convs (the deep stems end at twice that).
        dilations: per-block dilations of stages 3 and 4.
        ceil: ``ceil_mode`` of the stem's max pool (CCNet).
        bn: the norm layer.
    """

    def __init__(self, layers, widths, stem, stem_width, dilations, ceil=False, bn=nn.BatchNorm2d):
        super().__init__()
        self.stem = stem
        sw = stem_width
        if stem == "7x7":
            self.conv1, self.bn1, self.inplanes = nn.Conv2d(3, sw, 7, 2, 3, bias=False), bn(sw), sw
        elif stem == "ccnet":
            self.conv1, self.bn1 = nn.Conv2d(3, sw, 3, 2, 1, bias=False), bn(sw)
            self.conv2, self.bn2 = nn.Conv2d(sw, sw, 3, 1, 1, bias=False), bn(sw)
            self.conv3, self.bn3 = nn.Conv2d(sw, 2 * sw, 3, 1, 1, bias=False), bn(2 * sw)
            self.inplanes = 2 * sw
        else:
            self.conv1 = nn.Sequential(
                nn.Conv2d(3, sw, 3, 2, 1, bias=False), bn(sw), nn.ReLU(),
                nn.Conv2d(sw, sw, 3, 1, 1, bias=False), bn(sw), nn.ReLU(),
                nn.Conv2d(sw, 2 * sw, 3, 1, 1, bias=False),
            )
            self.bn1, self.inplanes = bn(2 * sw), 2 * sw
        self.maxpool = nn.MaxPool2d(3, 2, 1, ceil_mode=ceil)
        dils = [[1] * layers[0], [1] * layers[1], *dilations]
        for i, (planes, n, stride) in enumerate(zip(widths, layers, (1, 2, 1, 1))):
            down = None
            if stride != 1 or self.inplanes != planes * 4:
                down = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False), bn(planes * 4))
            blocks = [Bottleneck(self.inplanes, planes, stride, dils[i][0], down, bn)]
            self.inplanes = planes * 4
            blocks += [Bottleneck(self.inplanes, planes, 1, dils[i][j], None, bn) for j in range(1, n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.stem == "ccnet":
            x = F.relu(self.bn1(self.conv1(x)))
            x = F.relu(self.bn2(self.conv2(x)))
            x = F.relu(self.bn3(self.conv3(x)))
        else:
            x = F.relu(self.bn1(self.conv1(x)))
        c2 = self.layer2(self.layer1(self.maxpool(x)))
        c3 = self.layer3(c2)
        return c2, c3, self.layer4(c3)
