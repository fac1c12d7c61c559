"""External attention (EANet): attention to a small learned memory shared by all images.

Paper: Guo, Liu, Mu, Hu, "Beyond Self-attention: External Attention using Two Linear Layers for
Visual Tasks", 2021, https://arxiv.org/abs/2105.02358 ; the code followed is the authors'
segmentation block ``External_attention`` (https://github.com/MenghaoGuo/EANet, ``model_torch.py``).

``f = W_1 x + b_1`` (``conv1``, 1x1 C -> C); the memory ``M_k`` (``linear_0``, K x C, a 1x1 Conv1d
without bias) scores every position, ``a_kn = M_k . f_n``; double normalisation: softmax over the
N = H * W positions, then each position's weights are divided by their sum over the K memory units
(plus 1e-9): ``a~_kn``. ``y_n = sum_k a~_kn V_k`` (``linear_1``, C x K, a 1x1 Conv1d without bias),
``z = ReLU(x + BN(W_2 y))`` (``conv2``: 1x1 conv without bias, BN).

Initialisation as the authors': conv weights normal(0, sqrt(2 / fan_out)) (``conv1``'s bias keeps
PyTorch's default), BN at 1 and 0, and the two memories tied, ``linear_0 = linear_1^T``, drawn
normal(0, sqrt(2 / C)). Not the identity at initialisation.

Parameter names are the authors': ``conv1.*``, ``linear_0.weight``, ``linear_1.weight``,
``conv2.0.weight``, ``conv2.1.*``. Released weights load as they are.

Differences from the official code:

- The authors' ``linear_1.weight.data`` is a transposed view of ``linear_0``'s storage, so the two
  memories share one tensor until a state dict is loaded or an optimiser replaces it; here they are
  two tensors that start equal and train separately (values and gradients of a step are the same).
- The double normalisation and the products around it run in fp32 under autocast; the result is
  returned in the dtype of ``x`` and the memory responses in fp32.
- The number of memory units is an argument (``units``; the authors fix 64).
- ``nn.BatchNorm2d`` where the authors use synchronised BN.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import AttentionMap, check_input, check_positive, no_autocast, query_cells, strongest_channel_maps

__all__ = ["ExternalAttention"]

_EPS = 1e-9  # the authors' guard of the L1 normalisation


class ExternalAttention(nn.Module):
    """EANet's external attention block: ``(B, C, H, W) -> (B, C, H, W)``.

    Args:
        channels: input and output channels C.
        units: memory units K (64).
    """

    query_maps_drawn = ("external_q",)
    has_softmax = True
    float32_weights = ("memory",)

    def __init__(self, channels: int, units: int = 64) -> None:
        super().__init__()
        check_positive("ExternalAttention", "channels", channels)
        check_positive("ExternalAttention", "units", units)
        self.channels = channels
        self.units = units
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.linear_0 = nn.Conv1d(channels, units, 1, bias=False)
        self.linear_1 = nn.Conv1d(units, channels, 1, bias=False)
        self.conv2 = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        for conv in (self.conv1, self.conv2[0]):
            conv.weight.normal_(0, math.sqrt(2.0 / self.channels))
        self.linear_1.weight.normal_(0, math.sqrt(2.0 / self.channels))
        self.linear_0.weight.copy_(self.linear_1.weight.permute(1, 0, 2))

    def _memory_weights(self, f: Tensor) -> Tensor:
        """Double-normalised memory responses ``(B, K, N)`` (at least fp32) of the embedded features ``f``."""
        logits = self.linear_0(f.flatten(2))
        with no_autocast(f.device.type):
            attn = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
            return attn / (_EPS + attn.sum(dim=1, keepdim=True))

    def forward(self, x: Tensor) -> Tensor:
        check_input("ExternalAttention", x, self.channels, self)
        f = self.conv1(x)
        attn = self._memory_weights(f)
        with no_autocast(x.device.type):
            y = F.conv1d(attn, self.linear_1.weight.to(attn.dtype))
        return F.relu(x + self.conv2(y.to(f.dtype).reshape(f.shape)))

    @torch.no_grad()
    def attention_weights(self, x: Tensor) -> dict[str, Tensor]:
        """``{"memory": (B, K, H, W)}``: each memory unit's double-normalised response at every position
        (they sum to 1 over K at each position, up to the 1e-9 guard)."""
        check_input("ExternalAttention", x, self.channels, self)
        return {"memory": self._memory_weights(self.conv1(x)).reshape(x.shape[0], self.units, *x.shape[-2:])}

    @torch.no_grad()
    def attention_maps(self, x: Tensor, points: Sequence[tuple[int, int]] = ()) -> list[AttentionMap]:
        """Per query point of the single feature map ``x`` ``(1, C, H, W)``: the response map of the
        memory unit that responds most at that point (default point: the centre)."""
        points = query_cells("ExternalAttention", x, points)
        weights = self.attention_weights(x)["memory"][0]  # (K, H, W)
        return strongest_channel_maps("external_q", "External: memory unit {k}, the strongest at {p}", weights, points)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, units={self.units}"
