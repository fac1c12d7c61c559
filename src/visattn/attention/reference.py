"""Naive reference formulations: the published official code, transcribed.

These are the baselines of ``visattn bench`` and ``benchmarks/``, and the independent formulation
that ``tests/test_bench.py`` checks the optimized modules against. Each class keeps the official
computation step by step (its permutes, copies, ``repeat`` and per-call ``-inf`` tensor) and the
official parameter names, which are also visattn's, so ``naive.load_state_dict(opt.state_dict())``
pairs them. Only device handling changed (no ``.cuda()``). Sources:

- PAM, CAM: https://github.com/junfu1115/DANet ``encoding/nn/da_att.py`` (``PAM_Module``,
  ``CAM_Module``).
- CCA: https://github.com/speedinghzl/CCNet ``cc_attention`` (pure-PyTorch ``CrissCrossAttention``
  with ``INF``).
- FLA: https://github.com/maggiesong7/FullyAttentional ``FullyAttentionalBlock`` (with its
  ``repeat``, so for B > 1 it mixes items; visattn fixes that, so compare at B = 1).
- BAM: https://github.com/Jongchan/attention-module ``MODELS/bam.py`` (gates multiplied; the
  visattn counterpart is ``BAM(combine="product")``; its square ``avg_pool2d`` needs H == W).
- PSA: https://github.com/murufeng/EPSANet ``models/epsanet.py`` ``PSAModule`` and
  ``SEWeightModule`` (fixed four branches).
- SGE: https://github.com/implus/PytorchInsight ``resnet_sge.py`` ``SpatialGroupEnhance``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NaivePAM", "NaiveCAM", "NaiveCCA", "NaiveFLA", "NaiveBAM", "NaivePSA", "NaiveSGE", "NAIVE"]


class NaivePAM(nn.Module):
    """DANet ``PAM_Module``: builds the ``B x N x N`` energy and attention."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.query_conv = nn.Conv2d(channels, channels // reduction, 1)
        self.key_conv = nn.Conv2d(channels, channels // reduction, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.size()
        proj_query = self.query_conv(x).view(b, -1, w * h).permute(0, 2, 1)
        proj_key = self.key_conv(x).view(b, -1, w * h)
        energy = torch.bmm(proj_query, proj_key)
        attention = torch.softmax(energy, dim=-1)
        proj_value = self.value_conv(x).view(b, -1, w * h)
        out = torch.bmm(proj_value, attention.permute(0, 2, 1))
        return self.gamma * out.view(b, c, h, w) + x


class NaiveCAM(nn.Module):
    """DANet ``CAM_Module``: ``softmax(rowmax(E) - E)`` with ``E = A A^T``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.size()
        proj_query = x.view(b, c, -1)
        proj_key = x.view(b, c, -1).permute(0, 2, 1)
        energy = torch.bmm(proj_query, proj_key)
        energy_new = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
        attention = torch.softmax(energy_new, dim=-1)
        out = torch.bmm(attention, x.view(b, c, -1))
        return self.gamma * out.view(b, c, h, w) + x


def _inf_diag(b: int, h: int, w: int, device: torch.device) -> Tensor:
    """CCNet's ``INF``: a fresh ``(B*W, H, H)`` tensor with ``-inf`` on each diagonal."""
    return -torch.diag(torch.tensor(float("inf"), device=device).repeat(h), 0).unsqueeze(0).repeat(b * w, 1, 1)


class NaiveCCA(nn.Module):
    """CCNet pure-PyTorch ``CrissCrossAttention`` (permute chain, per-call ``-inf`` tensor)."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.query_conv = nn.Conv2d(channels, channels // reduction, 1)
        self.key_conv = nn.Conv2d(channels, channels // reduction, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.size()
        q = self.query_conv(x)
        q_h = q.permute(0, 3, 1, 2).contiguous().view(b * w, -1, h).permute(0, 2, 1)
        q_w = q.permute(0, 2, 1, 3).contiguous().view(b * h, -1, w).permute(0, 2, 1)
        k = self.key_conv(x)
        k_h = k.permute(0, 3, 1, 2).contiguous().view(b * w, -1, h)
        k_w = k.permute(0, 2, 1, 3).contiguous().view(b * h, -1, w)
        v = self.value_conv(x)
        v_h = v.permute(0, 3, 1, 2).contiguous().view(b * w, -1, h)
        v_w = v.permute(0, 2, 1, 3).contiguous().view(b * h, -1, w)
        energy_h = (torch.bmm(q_h, k_h) + _inf_diag(b, h, w, x.device)).view(b, w, h, h).permute(0, 2, 1, 3)
        energy_w = torch.bmm(q_w, k_w).view(b, h, w, w)
        concate = torch.softmax(torch.cat([energy_h, energy_w], 3), dim=3)
        att_h = concate[:, :, :, 0:h].permute(0, 2, 1, 3).contiguous().view(b * w, h, h)
        att_w = concate[:, :, :, h : h + w].contiguous().view(b * h, w, w)
        out_h = torch.bmm(v_h, att_h.permute(0, 2, 1)).view(b, w, -1, h).permute(0, 2, 3, 1)
        out_w = torch.bmm(v_w, att_w.permute(0, 2, 1)).view(b, h, -1, w).permute(0, 2, 1, 3)
        return self.gamma * (out_h + out_w) + x


class NaiveFLA(nn.Module):
    """FLANet ``FullyAttentionalBlock`` with its ``repeat`` (equal to visattn's only for B = 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Linear(channels, channels)
        self.conv2 = nn.Linear(channels, channels)
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()
        )
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.size()
        feat_h = x.permute(0, 3, 1, 2).contiguous().view(b * w, -1, h)
        feat_w = x.permute(0, 2, 1, 3).contiguous().view(b * h, -1, w)
        encode_h = self.conv1(F.avg_pool2d(x, [1, w]).view(b, -1, h).permute(0, 2, 1).contiguous())
        encode_w = self.conv2(F.avg_pool2d(x, [h, 1]).view(b, -1, w).permute(0, 2, 1).contiguous())
        energy_h = torch.matmul(feat_h, encode_h.repeat(w, 1, 1))
        energy_w = torch.matmul(feat_w, encode_w.repeat(h, 1, 1))
        relation_h = torch.softmax(energy_h, dim=-1)
        relation_w = torch.softmax(energy_w, dim=-1)
        aug_h = torch.bmm(relation_h, feat_h).view(b, w, -1, h).permute(0, 2, 3, 1)
        aug_w = torch.bmm(relation_w, feat_w).view(b, h, -1, w).permute(0, 2, 1, 3)
        return self.conv(self.gamma * (aug_h + aug_w) + x)


class _Flatten(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.view(x.size(0), -1)


class _BAMChannelGate(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = channels // reduction
        self.gate_c = nn.Sequential()
        self.gate_c.add_module("flatten", _Flatten())
        self.gate_c.add_module("gate_c_fc_0", nn.Linear(channels, hidden))
        self.gate_c.add_module("gate_c_bn_1", nn.BatchNorm1d(hidden))
        self.gate_c.add_module("gate_c_relu_1", nn.ReLU())
        self.gate_c.add_module("gate_c_fc_final", nn.Linear(hidden, channels))

    def forward(self, x: Tensor) -> Tensor:
        avg_pool = F.avg_pool2d(x, x.size(2), stride=x.size(2))
        return self.gate_c(avg_pool).unsqueeze(2).unsqueeze(3).expand_as(x)


class _BAMSpatialGate(nn.Module):
    def __init__(self, channels: int, reduction: int, dilation: int) -> None:
        super().__init__()
        hidden = channels // reduction
        self.gate_s = nn.Sequential()
        self.gate_s.add_module("gate_s_conv_reduce0", nn.Conv2d(channels, hidden, 1))
        self.gate_s.add_module("gate_s_bn_reduce0", nn.BatchNorm2d(hidden))
        self.gate_s.add_module("gate_s_relu_reduce0", nn.ReLU())
        for i in range(2):
            self.gate_s.add_module(f"gate_s_conv_di_{i}", nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation))
            self.gate_s.add_module(f"gate_s_bn_di_{i}", nn.BatchNorm2d(hidden))
            self.gate_s.add_module(f"gate_s_relu_di_{i}", nn.ReLU())
        self.gate_s.add_module("gate_s_conv_final", nn.Conv2d(hidden, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.gate_s(x).expand_as(x)


class NaiveBAM(nn.Module):
    """Official ``BAM``: ``(1 + sigmoid(Mc * Ms)) * x`` with both gates expanded to ``(B, C, H, W)``."""

    def __init__(self, channels: int, reduction: int = 16, dilation: int = 4) -> None:
        super().__init__()
        self.channel_att = _BAMChannelGate(channels, reduction)
        self.spatial_att = _BAMSpatialGate(channels, reduction, dilation)

    def forward(self, x: Tensor) -> Tensor:
        att = 1 + torch.sigmoid(self.channel_att(x) * self.spatial_att(x))
        return att * x


class _SEWeightModule(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class NaivePSA(nn.Module):
    """EPSANet ``PSAModule``: four convs, SE per branch, softmax over branches, reversed concat."""

    def __init__(
        self,
        channels: int,
        out_channels: int | None = None,
        kernel_sizes: tuple[int, ...] = (3, 5, 7, 9),
        stride: int = 1,
        conv_groups: tuple[int, ...] = (1, 4, 8, 16),
    ) -> None:
        super().__init__()
        planes = channels if out_channels is None else out_channels
        for i, (k, g) in enumerate(zip(kernel_sizes, conv_groups), 1):
            conv = nn.Conv2d(channels, planes // 4, k, stride=stride, padding=k // 2, groups=g, bias=False)
            self.add_module(f"conv_{i}", conv)
        self.se = _SEWeightModule(planes // 4)
        self.split_channel = planes // 4

    def forward(self, x: Tensor) -> Tensor:
        batch_size = x.shape[0]
        x1, x2, x3, x4 = self.conv_1(x), self.conv_2(x), self.conv_3(x), self.conv_4(x)
        feats = torch.cat((x1, x2, x3, x4), dim=1)
        feats = feats.view(batch_size, 4, self.split_channel, feats.shape[2], feats.shape[3])
        x_se = torch.cat((self.se(x1), self.se(x2), self.se(x3), self.se(x4)), dim=1)
        attention_vectors = torch.softmax(x_se.view(batch_size, 4, self.split_channel, 1, 1), dim=1)
        feats_weight = feats * attention_vectors
        out = feats_weight[:, 0]
        for i in range(1, 4):
            out = torch.cat((feats_weight[:, i], out), 1)
        return out


class NaiveSGE(nn.Module):
    """PytorchInsight ``SpatialGroupEnhance`` (``channels`` is only for a uniform signature)."""

    def __init__(self, channels: int, groups: int = 64) -> None:
        super().__init__()
        self.groups = groups
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.weight = nn.Parameter(torch.zeros(1, groups, 1, 1))
        self.bias = nn.Parameter(torch.ones(1, groups, 1, 1))
        self.sig = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.size()
        x = x.view(b * self.groups, -1, h, w)
        xn = (x * self.avg_pool(x)).sum(dim=1, keepdim=True)
        t = xn.view(b * self.groups, -1)
        t = t - t.mean(dim=1, keepdim=True)
        std = t.std(dim=1, keepdim=True) + 1e-5
        t = (t / std).view(b, self.groups, h, w)
        t = (t * self.weight + self.bias).view(b * self.groups, 1, h, w)
        return (x * self.sig(t)).view(b, c, h, w)


# registry name -> naive class; the visattn counterpart is create_attention(name, ...) (BAM with
# combine="product")
NAIVE: dict[str, type[nn.Module]] = {
    "pam": NaivePAM,
    "cam": NaiveCAM,
    "cca": NaiveCCA,
    "fla": NaiveFLA,
    "bam": NaiveBAM,
    "psa": NaivePSA,
    "sge": NaiveSGE,
}
