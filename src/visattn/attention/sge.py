"""Spatial Group-wise Enhance (SGE).

Paper: Li, Hu, Yang, "Spatial Group-wise Enhance: Improving Semantic Feature Learning in
Convolutional Networks", 2019, https://arxiv.org/abs/1905.09646. Official code:
https://github.com/implus/PytorchInsight (``classification/models/imagenet/resnet_sge.py``).

The C channels are split into G groups of C/G. For each group and position:
``s = sum_c x_c * mean_hw(x_c)`` (similarity of the local feature to the group's global one),
normalised over the H x W positions (minus the mean, divided by the unbiased std + 1e-5), then
``s * weight_g + bias_g`` and ``y = x * sigmoid(s)`` (one gate per group and position).
``weight`` starts at 0 and ``bias`` at 1, so the initial gate is sigmoid(1) everywhere.

Difference from the official code: for a 1 x 1 map the official unbiased std of one value is NaN
and so is the output; visattn divides the (zero) centred score by a finite std there, so the
normalised score is 0 and the gate is ``sigmoid(bias)``, with finite gradients. The std is also
floored at 1e-12 before the + 1e-5 (a change of < 1e-7 relative), so a score constant over the map
gives finite gradients instead of the NaN of ``torch.std``'s backward at 0. Otherwise the outputs
equal the official ones; parameter names (``weight``, ``bias``, shape (1, G, 1, 1)) too.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._common import AttentionMap, check_divisible, check_input, check_one_map, check_positive, to_numpy

__all__ = ["SpatialGroupEnhance"]


class SpatialGroupEnhance(nn.Module):
    """SGE gate: ``(B, C, H, W) -> (B, C, H, W)``.

    Args:
        channels: input and output channels C, divisible by ``groups``.
        groups: number of groups G (64 in the paper).
    """

    maps_drawn = ("sge_gate", "sge_group0")

    def __init__(self, channels: int, groups: int = 64) -> None:
        super().__init__()
        check_positive("SpatialGroupEnhance", "channels", channels)
        check_divisible("SpatialGroupEnhance", channels, groups)
        self.channels = channels
        self.groups = groups
        self.weight = nn.Parameter(torch.zeros(1, groups, 1, 1))
        self.bias = nn.Parameter(torch.ones(1, groups, 1, 1))

    def _gate(self, xg: Tensor) -> Tensor:
        # xg: (B, G, C/G, H, W) -> gate (B, G, H, W)
        h, w = xg.shape[-2:]
        s = (xg * xg.mean((3, 4), keepdim=True)).sum(2)
        s = s - s.mean((2, 3), keepdim=True)
        # Unbiased variance; with one position the centred score is exactly 0 and so is the variance.
        var = s.square().sum((2, 3), keepdim=True) / max(h * w - 1, 1)
        s = s / (var.clamp_min(1e-24).sqrt() + 1e-5)
        return torch.sigmoid(s * self.weight + self.bias)

    def _grouped(self, x: Tensor) -> Tensor:
        check_input("SpatialGroupEnhance", x, self.channels, self)
        b, c, h, w = x.shape
        return x.reshape(b, self.groups, c // self.groups, h, w)

    def forward(self, x: Tensor) -> Tensor:
        xg = self._grouped(x)
        return (xg * self._gate(xg)[:, :, None]).reshape(x.shape)

    @torch.no_grad()
    def attention_weights(self, x: Tensor) -> dict[str, Tensor]:
        """``{"gate": (B, G, H, W)}``: the sigmoid gate of each group; channel ``c`` of ``x`` is
        scaled by ``gate[:, c // (C // G)]``."""
        return {"gate": self._gate(self._grouped(x))}

    @torch.no_grad()
    def attention_maps(self, x: Tensor, points: Sequence[tuple[int, int]] = ()) -> list[AttentionMap]:
        """``sge_gate``: the gate averaged over the groups, and ``sge_group0``: group 0's gate, both
        ``(H, W)``, for one feature map ``x`` ``(1, C, H, W)`` (no query points)."""
        check_one_map("SpatialGroupEnhance", x)
        gate = self.attention_weights(x)["gate"][0]  # (G, H, W)
        return [AttentionMap("sge_gate", f"SGE: gate, mean over {gate.shape[0]} groups", to_numpy(gate.mean(0))),
                AttentionMap("sge_group0", "SGE: gate of group 0", to_numpy(gate[0]))]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}"
