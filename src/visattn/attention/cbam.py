"""Convolutional Block Attention Module (CBAM), the channel-then-spatial gate baseline.

Paper: Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018,
https://arxiv.org/abs/1807.06521. Official code: https://github.com/Jongchan/attention-module
(``MODELS/cbam.py``).

* Channel gate: a shared MLP (Linear C -> C//r, ReLU, Linear C//r -> C, with biases) on the global
  average- and max-pooled vectors; ``Mc = sigmoid(mlp(avg) + mlp(max))`` ``(B, C, 1, 1)``;
  ``x' = x * Mc``.
* Spatial gate on ``x'``: ``[max_c x', mean_c x']`` ``(B, 2, H, W)`` -> k x k conv to 1 channel
  (padding k//2, no bias) -> BatchNorm -> sigmoid = ``Ms`` ``(B, 1, H, W)``; ``y = x' * Ms``.

Parameter names equal the official ones (``ChannelGate.mlp.1``, ``ChannelGate.mlp.3``,
``SpatialGate.spatial.conv``, ``SpatialGate.spatial.bn``); the BatchNorm keeps the official
momentum 0.01. Differences: the official code runs the MLP once per pool type; visattn runs it once
on both pooled vectors stacked (same values). Only the default pool types (avg, max) are provided.
The spatial gate's BatchNorm weight starts at 0, so the gate starts at 0.5 everywhere, as the official
ResNet initialisation sets it (``MODELS/model_resnet.py``; the official module alone starts it at 1).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._common import AttentionMap, check_input, check_one_map, check_positive, reduced_channels, to_numpy

__all__ = ["CBAM", "CBAMChannelGate", "CBAMSpatialGate"]


class CBAMChannelGate(nn.Module):
    """CBAM channel gate ``Mc``: ``(B, C, H, W) -> (B, C, 1, 1)`` in (0, 1).

    Args:
        channels: input channels C.
        reduction: hidden width of the shared MLP is ``C // reduction``.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = reduced_channels("CBAM", channels, reduction)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        pooled = torch.cat([x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)])  # (2B, C, 1, 1)
        logits = self.mlp(pooled)
        return torch.sigmoid(logits[:b] + logits[b:])[:, :, None, None]


class CBAMSpatialGate(nn.Module):
    """CBAM spatial gate ``Ms``: ``(B, C, H, W) -> (B, 1, H, W)`` in (0, 1).

    Args:
        kernel_size: odd size of the conv over the [max, mean] channel maps (7 in the paper).
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.spatial = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False),
                bn=nn.BatchNorm2d(1, eps=1e-5, momentum=0.01),
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)
        return torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    """CBAM: ``(B, C, H, W) -> (B, C, H, W)``, ``x' = x * Mc(x)``, ``y = x' * Ms(x')``.

    Args:
        channels: input and output channels C.
        reduction: hidden width of the channel MLP is ``C // reduction`` (16 in the paper).
        kernel_size: odd kernel size of the spatial gate's conv (7 in the paper).
    """

    maps_drawn = ("cbam_spatial",)

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        if check_positive("CBAM", "kernel_size", kernel_size) % 2 == 0:
            raise ValueError(f"CBAM: kernel_size must be odd (padding k // 2 keeps H x W), got {kernel_size}")
        self.channels = channels
        self.reduction = reduction
        self.kernel_size = kernel_size
        # Attribute names as in the official code, so released checkpoints load unchanged.
        self.ChannelGate = CBAMChannelGate(channels, reduction)
        self.SpatialGate = CBAMSpatialGate(kernel_size)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """PyTorch's default initialisation of every layer, except the spatial gate's BatchNorm weight,
        which is 0 as in the official code's ResNet initialisation: the spatial gate starts at
        sigmoid(0) = 0.5 everywhere. Networks that initialise their layers themselves call this
        afterwards (see :class:`visattn.models.resnet.ResNet`)."""
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()
        nn.init.zeros_(self.SpatialGate.spatial.bn.weight)

    def _gates(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        check_input("CBAM", x, self.channels, self)
        mc = self.ChannelGate(x)
        refined = x * mc
        ms = self.SpatialGate(refined)
        return refined, mc, ms

    def forward(self, x: Tensor) -> Tensor:
        refined, _, ms = self._gates(x)
        return refined * ms

    @torch.no_grad()
    def attention_weights(self, x: Tensor) -> dict[str, Tensor]:
        """``{"channel": Mc (B, C, 1, 1), "spatial": Ms (B, 1, H, W)}``, both in (0, 1);
        ``Ms`` is computed on ``x * Mc``. The output is ``x * Mc * Ms``."""
        _, mc, ms = self._gates(x)
        return {"channel": mc, "spatial": ms}

    @torch.no_grad()
    def attention_maps(self, x: Tensor, points: Sequence[tuple[int, int]] = ()) -> list[AttentionMap]:
        """``cbam_spatial``: the spatial gate ``Ms`` ``(H, W)`` for one feature map ``x``
        ``(1, C, H, W)`` (no query points)."""
        check_one_map("CBAM", x)
        return [AttentionMap("cbam_spatial", "CBAM: spatial gate", to_numpy(self.attention_weights(x)["spatial"][0, 0]))]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reduction={self.reduction}, kernel_size={self.kernel_size}"
