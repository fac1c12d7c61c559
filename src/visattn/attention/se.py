"""Squeeze-and-Excitation (SE), the channel-gate baseline.

Paper: Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018, https://arxiv.org/abs/1709.01507

Global average pool -> 1x1 conv C -> C//r (bias) -> ReLU -> 1x1 conv C//r -> C (bias) -> sigmoid,
broadcast over H x W: ``y = x * gate``. Parameter names ``fc1``/``fc2`` follow timm's ``SEModule``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._common import AttentionMap, check_input, check_one_map, reduced_channels, to_numpy

__all__ = ["SqueezeExcite"]


class SqueezeExcite(nn.Module):
    """SE gate: ``(B, C, H, W) -> (B, C, H, W)``.

    Args:
        channels: input and output channels C.
        reduction: hidden width is ``C // reduction`` (16 in the paper).
    """

    maps_drawn = ("se_channel",)

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = reduced_channels("SqueezeExcite", channels, reduction)
        self.channels = channels
        self.reduction = reduction
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def gate(self, x: Tensor) -> Tensor:
        """The channel gate in (0, 1), ``(B, C, 1, 1)``."""
        check_input("SqueezeExcite", x, self.channels, self)
        return torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)

    @torch.no_grad()
    def attention_weights(self, x: Tensor) -> dict[str, Tensor]:
        """``{"channel": (B, C, 1, 1)}``: the gate applied to ``x``."""
        return {"channel": self.gate(x)}

    @torch.no_grad()
    def attention_maps(self, x: Tensor, points: Sequence[tuple[int, int]] = ()) -> list[AttentionMap]:
        """``se_channel``: the channel gate as a ``(1, C)`` row, for one feature map ``x``
        ``(1, C, H, W)``; nothing spatial, no query points."""
        check_one_map("SqueezeExcite", x)
        gate = self.attention_weights(x)["channel"][0, :, 0, 0]  # (C,)
        return [AttentionMap("se_channel", "SE: channel gate", to_numpy(gate[None]), spatial=False,
                             xlabel="channel")]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reduction={self.reduction}"
