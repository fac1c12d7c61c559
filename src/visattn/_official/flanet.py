"""maggiesong7/FullyAttentional, transcribed: ``model.py`` (``FullyAttentionalBlock``,
``FLANetOutput``, ``FLANet``).

Paper: Song et al., "Fully Attentional Network for Semantic Segmentation", AAAI 2022,
https://arxiv.org/abs/2112.04108.

``FullyAttentionalBlock`` keeps ``encode_h.repeat(width, 1, 1)``: for a batch of B > 1 it pairs
column ``w`` of item ``b`` with the context of item ``(b * W + w) % B`` (rows likewise), so it
agrees with visattn's ``FullyAttentional`` only at B = 1. Changes: the default ``norm_layer`` is
``nn.BatchNorm2d`` (the published ``SyncBatchNorm`` needs a process group to train). ``FLANet``'s
backbone (deep stem, stages 3 and 4 dilated 2 and 4 from their first block) uses
:mod:`._dilated_resnet`'s parametrised form; ``width_divisor`` divides the backbone's and the
head's widths (1: the published network) so that tests can run it small.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import Counterpart, load_from
from ._dilated_resnet import DilatedResNet

__all__ = ["FLANetOutput", "FullyAttentionalBlock", "FLANet", "COUNTERPARTS"]


class FLANetOutput(nn.Module):
    def __init__(self, in_plane, mid_plane, num_classes, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.conv = nn.Sequential(nn.Upsample(scale_factor=2),
                                  nn.Conv2d(in_plane, mid_plane, 3, stride=1, padding=1, bias=False),
                                  norm_layer(mid_plane),
                                  nn.ReLU(),
                                  nn.Dropout2d(0.1, False),
                                  nn.Conv2d(mid_plane, num_classes, kernel_size=1, stride=1, padding=0, bias=True))

    def forward(self, x):
        x = self.conv(x)
        return x


class FullyAttentionalBlock(nn.Module):
    def __init__(self, plane, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Linear(plane, plane)
        self.conv2 = nn.Linear(plane, plane)
        self.conv = nn.Sequential(nn.Conv2d(plane, plane, 3, stride=1, padding=1, bias=False),
                                  norm_layer(plane),
                                  nn.ReLU())
        self.softmax = nn.Softmax(dim=-1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        batch_size, _, height, width = x.size()
        feat_h = x.permute(0, 3, 1, 2).contiguous().view(batch_size * width, -1, height)
        feat_w = x.permute(0, 2, 1, 3).contiguous().view(batch_size * height, -1, width)
        encode_h = self.conv1(F.avg_pool2d(x, [1, width]).view(batch_size, -1, height).permute(0, 2, 1).contiguous())
        encode_w = self.conv2(F.avg_pool2d(x, [height, 1]).view(batch_size, -1, width).permute(0, 2, 1).contiguous())

        energy_h = torch.matmul(feat_h, encode_h.repeat(width, 1, 1))
        energy_w = torch.matmul(feat_w, encode_w.repeat(height, 1, 1))
        full_relation_h = self.softmax(energy_h)  # [b*w, c, c]
        full_relation_w = self.softmax(energy_w)

        full_aug_h = torch.bmm(full_relation_h, feat_h).view(batch_size, width, -1, height).permute(0, 2, 3, 1)
        full_aug_w = torch.bmm(full_relation_w, feat_w).view(batch_size, height, -1, width).permute(0, 2, 1, 3)
        out = self.gamma * (full_aug_h + full_aug_w) + x
        out = self.conv(out)
        return out


class FLANet(nn.Module):
    """``(B, 3, H, W) ->`` [logits, aux from stage 2, aux from stage 3], all at ``H x W``."""

    def __init__(self, layers=(3, 4, 23, 3), n_classes=19, norm_layer=nn.BatchNorm2d, width_divisor=1):
        super().__init__()
        widths = [w // width_divisor for w in (64, 128, 256, 512)]
        dilations = [[2] * layers[2], [4] * layers[3]]
        self.backbone = DilatedResNet(layers, widths, "seq", 64 // width_divisor, dilations, bn=norm_layer)
        c2, c3, c4, mid = 4 * widths[1], 4 * widths[2], 4 * widths[3], 512 // width_divisor
        self.conv = nn.Sequential(nn.Conv2d(c4, mid, 3, stride=1, padding=1, bias=False),
                                  norm_layer(mid),
                                  nn.ReLU(),
                                  nn.Conv2d(mid, mid, 3, stride=1, padding=1, bias=False),
                                  norm_layer(mid),
                                  nn.ReLU())
        self.fully = FullyAttentionalBlock(mid, norm_layer)
        self.conv_out1 = FLANetOutput(c4 + mid, mid, n_classes, norm_layer)
        self.conv_out2 = FLANetOutput(c2, 64, n_classes, norm_layer)
        self.conv_out3 = FLANetOutput(c3, 64, n_classes, norm_layer)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=1)

    def forward(self, x):
        h, w = x.size()[2:]
        x1, x2, x3 = self.backbone(x)
        full_feats = self.fully(self.conv(x3))
        full_feats = self.conv_out1(torch.cat([x3, full_feats], 1))
        aux1 = self.conv_out2(x1)
        aux2 = self.conv_out3(x2)
        output = F.interpolate(full_feats, (h, w), mode="bilinear", align_corners=True)
        aux1 = F.interpolate(aux1, (h, w), mode="bilinear", align_corners=True)
        aux2 = F.interpolate(aux2, (h, w), mode="bilinear", align_corners=True)
        return [output, aux1, aux2]


COUNTERPARTS = {
    "fla": Counterpart(build=lambda m: load_from(FullyAttentionalBlock(m.channels), m), batch_independent=False),
}
