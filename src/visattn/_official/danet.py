"""junfu1115/DANet, transcribed: ``encoding/nn/da_att.py`` (``PAM_Module``, ``CAM_Module``) and
``encoding/models/sseg/danet.py`` (``DANetHead``, ``DANet``).

Paper: Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019,
https://arxiv.org/abs/1809.02983.

The attention modules and the head are as published. ``DANet`` is the network on the ``encoding``
package's dilated ResNet (2018 layout: 7x7 stem, stage 3 dilated from its second block, stage-4
multi-grid 4, 8, 16, ImageNet ``fc`` kept), in :mod:`._dilated_resnet`'s parametrised form;
``width_divisor`` divides its widths (1: the published network) so that tests can run it small.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import Counterpart, load_from, require
from ._dilated_resnet import DilatedResNet

__all__ = ["PAM_Module", "PAMWithSDPA", "CAM_Module", "DANetHead", "DANet", "COUNTERPARTS"]


class PAM_Module(nn.Module):
    """Position attention module"""

    def __init__(self, in_dim):
        super().__init__()
        self.chanel_in = in_dim
        self.query_conv = nn.Conv2d(in_channels=in_dim, out_channels=in_dim // 8, kernel_size=1)
        self.key_conv = nn.Conv2d(in_channels=in_dim, out_channels=in_dim // 8, kernel_size=1)
        self.value_conv = nn.Conv2d(in_channels=in_dim, out_channels=in_dim, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x):
        m_batchsize, C, height, width = x.size()
        proj_query = self.query_conv(x).view(m_batchsize, -1, width * height).permute(0, 2, 1)
        proj_key = self.key_conv(x).view(m_batchsize, -1, width * height)
        energy = torch.bmm(proj_query, proj_key)
        attention = self.softmax(energy)
        proj_value = self.value_conv(x).view(m_batchsize, -1, width * height)
        out = torch.bmm(proj_value, attention.permute(0, 2, 1))
        out = out.view(m_batchsize, C, height, width)
        out = self.gamma * out + x
        return out


class CAM_Module(nn.Module):
    """Channel attention module"""

    def __init__(self, in_dim):
        super().__init__()
        self.chanel_in = in_dim
        self.gamma = nn.Parameter(torch.zeros(1))
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x):
        m_batchsize, C, height, width = x.size()
        proj_query = x.view(m_batchsize, C, -1)
        proj_key = x.view(m_batchsize, C, -1).permute(0, 2, 1)
        energy = torch.bmm(proj_query, proj_key)
        energy_new = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
        attention = self.softmax(energy_new)
        proj_value = x.view(m_batchsize, C, -1)
        out = torch.bmm(attention, proj_value)
        out = out.view(m_batchsize, C, height, width)
        out = self.gamma * out + x
        return out


class DANetHead(nn.Module):
    def __init__(self, in_channels, out_channels, norm_layer=nn.BatchNorm2d):
        super().__init__()
        inter_channels = in_channels // 4
        self.conv5a = nn.Sequential(nn.Conv2d(in_channels, inter_channels, 3, padding=1, bias=False),
                                    norm_layer(inter_channels), nn.ReLU())
        self.conv5c = nn.Sequential(nn.Conv2d(in_channels, inter_channels, 3, padding=1, bias=False),
                                    norm_layer(inter_channels), nn.ReLU())
        self.sa = PAM_Module(inter_channels)
        self.sc = CAM_Module(inter_channels)
        self.conv51 = nn.Sequential(nn.Conv2d(inter_channels, inter_channels, 3, padding=1, bias=False),
                                    norm_layer(inter_channels), nn.ReLU())
        self.conv52 = nn.Sequential(nn.Conv2d(inter_channels, inter_channels, 3, padding=1, bias=False),
                                    norm_layer(inter_channels), nn.ReLU())
        self.conv6 = nn.Sequential(nn.Dropout2d(0.1, False), nn.Conv2d(inter_channels, out_channels, 1))
        self.conv7 = nn.Sequential(nn.Dropout2d(0.1, False), nn.Conv2d(inter_channels, out_channels, 1))
        self.conv8 = nn.Sequential(nn.Dropout2d(0.1, False), nn.Conv2d(inter_channels, out_channels, 1))

    def forward(self, x):
        feat1 = self.conv5a(x)
        sa_feat = self.sa(feat1)
        sa_conv = self.conv51(sa_feat)
        sa_output = self.conv6(sa_conv)
        feat2 = self.conv5c(x)
        sc_feat = self.sc(feat2)
        sc_conv = self.conv52(sc_feat)
        sc_output = self.conv7(sc_conv)
        feat_sum = sa_conv + sc_conv
        sasc_output = self.conv8(feat_sum)
        return sasc_output, sa_output, sc_output


class DANet(nn.Module):
    """``(B, 3, H, W) ->`` (fused, PAM, CAM) logits at ``H x W``; ``pretrained`` is the backbone."""

    def __init__(self, nclass, layers=(3, 4, 23, 3), width_divisor=1, norm_layer=nn.BatchNorm2d):
        super().__init__()
        widths = [w // width_divisor for w in (64, 128, 256, 512)]
        dilations = [[1] + [2] * (layers[2] - 1), [(4, 8, 16)[i % 3] for i in range(layers[3])]]
        self.pretrained = DilatedResNet(layers, widths, "7x7", 64, dilations, bn=norm_layer)
        self.pretrained.fc = nn.Linear(4 * widths[-1], 1000)
        self.head = DANetHead(4 * widths[-1], nclass, norm_layer)

    def forward(self, x):
        imsize = x.size()[2:]
        _, _, c4 = self.pretrained(x)
        x = list(self.head(c4))
        for i in range(3):
            x[i] = F.interpolate(x[i], imsize, mode="bilinear", align_corners=True)
        return tuple(x)


class PAMWithSDPA(PAM_Module):
    """Not the authors' code: ``PAM_Module`` with its energy, softmax and weighted sum done by
    ``F.scaled_dot_product_attention`` (``scale=1``: PAM does not scale), i.e. what one writes with
    PyTorch's fused attention. Same parameters and values. With ``d = C/8`` for queries and keys
    and ``C`` for values, CPU kernels take the math path, which builds the N x N map."""

    def forward(self, x):
        b, c, h, w = x.shape
        q = self.query_conv(x).flatten(2).transpose(1, 2)[:, None]  # (B, 1, N, C/8)
        k = self.key_conv(x).flatten(2).transpose(1, 2)[:, None]
        v = self.value_conv(x).flatten(2).transpose(1, 2)[:, None]  # (B, 1, N, C)
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)[:, 0]
        return self.gamma * out.transpose(1, 2).reshape(b, c, h, w) + x


def _pam(m: nn.Module, cls: type[PAM_Module] = PAM_Module) -> nn.Module:
    require(m, "PAM_Module", reduction=8)
    return load_from(cls(m.channels), m)


COUNTERPARTS = {
    "pam": Counterpart(build=_pam, sdpa=lambda m: _pam(m, PAMWithSDPA)),
    "cam": Counterpart(build=lambda m: load_from(CAM_Module(m.channels), m)),
}
