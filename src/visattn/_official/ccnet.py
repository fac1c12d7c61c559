"""speedinghzl/CCNet, transcribed: ``cc_attention/functions.py`` (the pure-PyTorch
``CrissCrossAttention`` with ``INF``) and ``networks/ccnet.py`` (``RCCAModule``, ``ResNet``).

Paper: Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019 /
TPAMI 2020, https://arxiv.org/abs/1811.11721.

Changes: ``INF`` builds its ``-inf`` diagonal on the input's device and dtype instead of calling
``.cuda()``. ``InPlaceABNSync`` (the ``inplace_abn`` extension) is given by its inference
computation: batch norm with scale ``|weight| + eps``, then LeakyReLU(0.01) or nothing.
``RCCAModule``'s last conv takes ``out_channels`` inputs (the published file writes 512, which is
``out_channels`` in its only configuration). ``ResNet`` (the network: backbone, ``head`` and
``dsn`` at the top level, as published) uses :mod:`._dilated_resnet`'s parametrised backbone;
``width_divisor`` divides its widths (1: the published network) so that tests can run it small.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import Counterpart, load_from, require
from ._dilated_resnet import DilatedResNet

__all__ = ["INF", "CrissCrossAttention", "InPlaceABNSync", "RCCAModule", "ResNet", "COUNTERPARTS"]


def INF(B, H, W, x):
    return -torch.diag(torch.tensor(float("inf"), dtype=x.dtype, device=x.device).repeat(H), 0).unsqueeze(0).repeat(B * W, 1, 1)


class CrissCrossAttention(nn.Module):
    """Criss-Cross Attention Module"""

    def __init__(self, in_dim):
        super().__init__()
        self.query_conv = nn.Conv2d(in_channels=in_dim, out_channels=in_dim // 8, kernel_size=1)
        self.key_conv = nn.Conv2d(in_channels=in_dim, out_channels=in_dim // 8, kernel_size=1)
        self.value_conv = nn.Conv2d(in_channels=in_dim, out_channels=in_dim, kernel_size=1)
        self.softmax = nn.Softmax(dim=3)
        self.INF = INF
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        m_batchsize, _, height, width = x.size()
        proj_query = self.query_conv(x)
        proj_query_H = proj_query.permute(0, 3, 1, 2).contiguous().view(m_batchsize * width, -1, height).permute(0, 2, 1)
        proj_query_W = proj_query.permute(0, 2, 1, 3).contiguous().view(m_batchsize * height, -1, width).permute(0, 2, 1)
        proj_key = self.key_conv(x)
        proj_key_H = proj_key.permute(0, 3, 1, 2).contiguous().view(m_batchsize * width, -1, height)
        proj_key_W = proj_key.permute(0, 2, 1, 3).contiguous().view(m_batchsize * height, -1, width)
        proj_value = self.value_conv(x)
        proj_value_H = proj_value.permute(0, 3, 1, 2).contiguous().view(m_batchsize * width, -1, height)
        proj_value_W = proj_value.permute(0, 2, 1, 3).contiguous().view(m_batchsize * height, -1, width)
        energy_H = (torch.bmm(proj_query_H, proj_key_H) + self.INF(m_batchsize, height, width, x)).view(
            m_batchsize, width, height, height).permute(0, 2, 1, 3)
        energy_W = torch.bmm(proj_query_W, proj_key_W).view(m_batchsize, height, width, width)
        concate = self.softmax(torch.cat([energy_H, energy_W], 3))

        att_H = concate[:, :, :, 0:height].permute(0, 2, 1, 3).contiguous().view(m_batchsize * width, height, height)
        att_W = concate[:, :, :, height:height + width].contiguous().view(m_batchsize * height, width, width)
        out_H = torch.bmm(proj_value_H, att_H.permute(0, 2, 1)).view(m_batchsize, width, -1, height).permute(0, 2, 3, 1)
        out_W = torch.bmm(proj_value_W, att_W.permute(0, 2, 1)).view(m_batchsize, height, -1, width).permute(0, 2, 1, 3)
        return self.gamma * (out_H + out_W) + x


class InPlaceABNSync(nn.BatchNorm2d):
    """InPlace-ABN at inference: BN with scale ``|weight| + eps``, then LeakyReLU(0.01) or nothing."""

    def __init__(self, num_features, activation="leaky_relu"):
        super().__init__(num_features)
        self.activation = activation

    def forward(self, x):
        scale = self.weight.abs() + self.eps
        x = F.batch_norm(x, self.running_mean, self.running_var, scale, self.bias, False, 0.0, self.eps)
        return F.leaky_relu(x, 0.01) if self.activation == "leaky_relu" else x


class RCCAModule(nn.Module):
    def __init__(self, in_channels, out_channels, num_classes):
        super().__init__()
        inter_channels = in_channels // 4
        self.conva = nn.Sequential(nn.Conv2d(in_channels, inter_channels, 3, padding=1, bias=False),
                                   InPlaceABNSync(inter_channels))
        self.cca = CrissCrossAttention(inter_channels)
        self.convb = nn.Sequential(nn.Conv2d(inter_channels, inter_channels, 3, padding=1, bias=False),
                                   InPlaceABNSync(inter_channels))
        self.bottleneck = nn.Sequential(
            nn.Conv2d(in_channels + inter_channels, out_channels, kernel_size=3, padding=1, dilation=1, bias=False),
            InPlaceABNSync(out_channels),
            nn.Dropout2d(0.1),
            nn.Conv2d(out_channels, num_classes, kernel_size=1, stride=1, padding=0, bias=True),
        )

    def forward(self, x, recurrence=1):
        output = self.conva(x)
        for _ in range(recurrence):
            output = self.cca(output)
        output = self.convb(output)
        output = self.bottleneck(torch.cat([x, output], 1))
        return output


class ResNet(DilatedResNet):
    """CCNet: ``(B, 3, H, W) -> [logits, dsn logits]`` at ``H/8 x W/8`` (upsampled by the caller)."""

    def __init__(self, num_classes, recurrence=2, layers=(3, 4, 23, 3), width_divisor=1):
        widths = [w // width_divisor for w in (64, 128, 256, 512)]
        bn = lambda c: InPlaceABNSync(c, activation="none")  # noqa: E731 (networks/ccnet.py's BatchNorm2d)
        super().__init__(layers, widths, "ccnet", 64 // width_divisor, [[2] * layers[2], [4] * layers[3]], ceil=True, bn=bn)
        self.recurrence = recurrence
        self.head = RCCAModule(4 * widths[3], widths[3], num_classes)
        self.dsn = nn.Sequential(
            nn.Conv2d(4 * widths[2], widths[3], kernel_size=3, stride=1, padding=1),
            InPlaceABNSync(widths[3]),
            nn.Dropout2d(0.1),
            nn.Conv2d(widths[3], num_classes, kernel_size=1, stride=1, padding=0, bias=True),
        )

    def forward(self, x):
        _, c3, c4 = super().forward(x)
        x_dsn = self.dsn(c3)
        x = self.head(c4, self.recurrence)
        return [x, x_dsn]


def _cca(m: nn.Module) -> nn.Module:
    require(m, "CrissCrossAttention", reduction=8)
    return load_from(CrissCrossAttention(m.channels), m)


COUNTERPARTS = {"cca": Counterpart(build=_cca)}
