"""The ImageNet ResNet of the classification repositories, in one parametrised form.

murufeng/EPSANet (``models/epsanet.py``), implus/PytorchInsight (``resnet_sge.py``) and
Jongchan/attention-module (``MODELS/model_resnet.py``) each ship the torchvision-style ResNet:
the same bottleneck (conv1/bn1, conv2/bn2, conv3/bn3, ``downsample``), the same ``_make_layer``
and the same stem, stages and classifier. They differ in the bottleneck's 3x3 conv (EPSANet's is
``PSAModule``), in where the attention module sits (SGE and CBAM: on the bottleneck's output
before the residual addition; BAM: after stages 1-3), in CBAM/BAM-ResNet's CIFAR stem and fixed
7x7 pooling, and in the initialisation. The first four are the arguments and hooks here; each
repository file keeps its own block classes (attribute names, hence state-dict keys), its
initialisation and its builders. No ``COUNTERPARTS``: the attention modules live in the
repository files.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

__all__ = ["Bottleneck", "ResNet"]


def conv3x3(planes, stride):
    """The plain bottleneck's 3x3 convolution with padding."""
    return nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


class Bottleneck(nn.Module):
    """The ResNet bottleneck; ``attend`` runs on its output before the residual addition.

    Args:
        conv2: builds the middle conv from ``(planes, stride)`` (a 3x3 conv by default).
        norm_layer: the norm layer.
    """

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, conv2=conv3x3, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv2(planes, stride)
        self.bn2 = norm_layer(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def attend(self, out):
        return out

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.attend(self.bn3(self.conv3(out)))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """Stem, four stages of ``block`` (widths 64-512, strides 1, 2, 2, 2), pooling and ``fc``.

    The initialisation is left to the repository files.

    Args:
        block: the block class (``expansion``, called as ``block(inplanes, planes, stride,
            downsample, **block_kwargs)`` and ``block(inplanes, planes, **block_kwargs)``).
        layers: blocks per stage.
        num_classes: outputs of ``fc``.
        stem: ``"imagenet"`` (7x7 stride-2 ``conv1``, ``bn1``, ``maxpool``) or ``"cifar"`` (3x3
            stride-1 ``conv1``, ``bn1``, no max pool, and a 4x4 average pool before ``fc``).
        avgpool: the pooling module before ``fc`` of the ImageNet stem (default: global average).
        stage_attention: builds a module from a channel count; if given, ``bam1`` .. ``bam3``
            run on the outputs of stages 1-3 (BAM-ResNet).
        block_kwargs: passed to every block.
    """

    def __init__(self, block, layers, num_classes=1000, stem="imagenet", avgpool=None, stage_attention=None,
                 **block_kwargs):
        super().__init__()
        self.inplanes = 64
        self.stem = stem
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        if stem == "imagenet":
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        if stage_attention is not None:
            for i, width in enumerate((64, 128, 256), 1):
                setattr(self, f"bam{i}", stage_attention(width * block.expansion))
        for i, (planes, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2)), 1):
            setattr(self, f"layer{i}", self._make_layer(block, planes, layers[i - 1], stride, **block_kwargs))
        if stem == "imagenet":
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1)) if avgpool is None else avgpool
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1, **block_kwargs):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, **block_kwargs)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **block_kwargs) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        if self.stem == "imagenet":
            x = self.maxpool(x)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            gate = getattr(self, f"bam{i}", None)
            if gate is not None:
                x = gate(x)
        x = self.avgpool(x) if self.stem == "imagenet" else F.avg_pool2d(x, 4)
        return self.fc(x.view(x.size(0), -1))
