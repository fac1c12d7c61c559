"""MenghaoGuo/EANet ``External_attention`` (``model_torch.py``), transcribed.

https://github.com/MenghaoGuo/EANet ; the segmentation block of Guo et al., "Beyond Self-attention:
External Attention using Two Linear Layers for Visual Tasks", 2021, https://arxiv.org/abs/2105.02358.

Step by step as the authors: ``linear_1.weight.data`` set to a transposed view of
``linear_0.weight.data`` (one storage for both memories), the init loop over ``self.modules()``,
the softmax over positions and the in-line L1 normalisation with its ``1e-9``. Only the norm is
changed: the authors' ``SynchronizedBatchNorm2d`` (from their ``bn_lib``, with a BN momentum from
their ``settings``) is ``nn.BatchNorm2d`` with PyTorch's default momentum.
"""
from __future__ import annotations

import math

import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from . import Counterpart, load_from, require

__all__ = ["External_attention", "COUNTERPARTS"]

norm_layer = nn.BatchNorm2d


class External_attention(nn.Module):
    """
    Arguments:
        c (int): The input and output channel number.
    """

    def __init__(self, c):
        super(External_attention, self).__init__()

        self.conv1 = nn.Conv2d(c, c, 1)

        self.k = 64
        self.linear_0 = nn.Conv1d(c, self.k, 1, bias=False)

        self.linear_1 = nn.Conv1d(self.k, c, 1, bias=False)
        self.linear_1.weight.data = self.linear_0.weight.data.permute(1, 0, 2)

        self.conv2 = nn.Sequential(
            nn.Conv2d(c, c, 1, bias=False),
            norm_layer(c))

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2. / n))
            elif isinstance(m, nn.Conv1d):
                n = m.kernel_size[0] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2. / n))
            elif isinstance(m, _BatchNorm):
                m.weight.data.fill_(1)
                if m.bias is not None:
                    m.bias.data.zero_()

    def forward(self, x):
        idn = x
        x = self.conv1(x)

        b, c, h, w = x.size()
        n = h*w
        x = x.view(b, c, h*w)   # b * c * n

        attn = self.linear_0(x)  # b, k, n
        attn = F.softmax(attn, dim=-1)  # b, k, n

        attn = attn / (1e-9 + attn.sum(dim=1, keepdim=True))  # b, k, n
        x = self.linear_1(attn)  # b, c, n

        x = x.view(b, c, h, w)
        x = self.conv2(x)
        x = x + idn
        x = F.relu(x)
        return x


def _external(m: nn.Module) -> nn.Module:
    require(m, "External_attention", units=64)
    official = External_attention(m.channels)
    # two parameters again (load_state_dict copies into the shared storage: the second copy would win)
    official.linear_1.weight = nn.Parameter(official.linear_1.weight.detach().clone())
    return load_from(official, m)


COUNTERPARTS = {"external": Counterpart(_external)}
