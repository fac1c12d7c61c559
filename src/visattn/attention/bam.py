"""Bottleneck Attention Module (BAM).

Paper: Park, Woo, Lee, Kweon, "BAM: Bottleneck Attention Module", BMVC 2018,
https://arxiv.org/abs/1807.06514. Official code: https://github.com/Jongchan/attention-module
(``MODELS/bam.py``).

``y = (1 + sigmoid(Mc(x) ⊕ Ms(x))) * x`` with a channel gate ``Mc`` ``(B, C, 1, 1)`` and a spatial
gate ``Ms`` ``(B, 1, H, W)`` broadcast to ``(B, C, H, W)``:

* ``Mc``: global average pool -> Linear(C, C//r) -> BatchNorm1d -> ReLU -> Linear(C//r, C).
* ``Ms``: 1x1 conv C -> C//r + BN + ReLU, 2 x (3x3 conv, dilation d, padding d, + BN + ReLU),
  1x1 conv C//r -> 1. All convs have a bias.

Differences from the official code:

* ``⊕``: the paper writes a sum; the released code (and so the released weights) multiplies the
  two gates. ``combine="sum"`` (paper) is the default; use ``combine="product"`` for the released
  weights (:meth:`BAM.convert_official_state_dict` refuses them otherwise).
* The official channel gate average-pools with a square ``H x H`` window: for ``H < W < 2H`` it
  silently averages only the leftmost ``H x H`` square, for ``W >= 2H`` or ``H > W`` it fails
  with a shape error. visattn pools globally; for square maps both agree.
* The official gates return tensors expanded to ``(B, C, H, W)``; ours return the broadcastable
  ``(B, C, 1, 1)`` / ``(B, 1, H, W)`` and combine once.

Parameter names equal the official ones (``channel_att.gate_c.gate_c_fc_0`` ...,
``spatial_att.gate_s.gate_s_conv_reduce0`` ...), so released checkpoints load unchanged.
The channel gate's BatchNorm1d normalises over the batch: in training mode a batch of one item
raises in PyTorch ("Expected more than 1 value per channel"); eval mode works for any batch.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ._common import AttentionMap, check_input, check_one_map, check_positive, reduced_channels, to_numpy

__all__ = ["BAM", "ChannelGate", "SpatialGate"]

_COMBINES = ("sum", "product")


class ChannelGate(nn.Module):
    """BAM channel gate ``Mc``: ``(B, C, H, W) -> (B, C, 1, 1)`` logits (before the sigmoid).

    Args:
        channels: input channels C.
        reduction: hidden width is ``C // reduction``.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = reduced_channels("BAM", channels, reduction)
        # Sequential with the official child names: the parameter keys match released weights.
        self.gate_c = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                gate_c_fc_0=nn.Linear(channels, hidden),
                gate_c_bn_1=nn.BatchNorm1d(hidden),
                gate_c_relu_1=nn.ReLU(inplace=True),
                gate_c_fc_final=nn.Linear(hidden, channels),
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.gate_c(x.mean((2, 3), keepdim=True))[:, :, None, None]


class SpatialGate(nn.Module):
    """BAM spatial gate ``Ms``: ``(B, C, H, W) -> (B, 1, H, W)`` logits (before the sigmoid).

    Args:
        channels: input channels C.
        reduction: hidden width is ``C // reduction``.
        dilation: dilation of the two 3x3 convs; padding equals it, so H x W is kept.
    """

    def __init__(self, channels: int, reduction: int = 16, dilation: int = 4) -> None:
        super().__init__()
        hidden = reduced_channels("BAM", channels, reduction)
        check_positive("BAM", "dilation", dilation)
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            gate_s_conv_reduce0=nn.Conv2d(channels, hidden, 1),
            gate_s_bn_reduce0=nn.BatchNorm2d(hidden),
            gate_s_relu_reduce0=nn.ReLU(inplace=True),
        )
        for i in range(2):
            layers[f"gate_s_conv_di_{i}"] = nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation)
            layers[f"gate_s_bn_di_{i}"] = nn.BatchNorm2d(hidden)
            layers[f"gate_s_relu_di_{i}"] = nn.ReLU(inplace=True)
        layers["gate_s_conv_final"] = nn.Conv2d(hidden, 1, 1)
        self.gate_s = nn.Sequential(layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.gate_s(x)


class BAM(nn.Module):
    """Bottleneck attention: ``(B, C, H, W) -> (B, C, H, W)``, ``y = (1 + sigmoid(Mc ⊕ Ms)) * x``.

    Args:
        channels: input and output channels C.
        reduction: hidden width of both gates is ``C // reduction`` (16 in the paper).
        dilation: dilation (and padding) of the spatial gate's two 3x3 convs (4 in the paper).
        combine: ``"sum"`` (paper, default) or ``"product"`` (the authors' released code and
            weights) to merge the channel and spatial logits.
    """

    maps_drawn = ("bam_gate", "bam_spatial")

    def __init__(self, channels: int, reduction: int = 16, dilation: int = 4, combine: str = "sum") -> None:
        super().__init__()
        if combine not in _COMBINES:
            raise ValueError(f"BAM: combine must be one of {', '.join(_COMBINES)}, got {combine!r}")
        self.channels = channels
        self.reduction = reduction
        self.dilation = dilation
        self.combine = combine
        self.channel_att = ChannelGate(channels, reduction)
        self.spatial_att = SpatialGate(channels, reduction, dilation)

    def _logits(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        check_input("BAM", x, self.channels, self)
        mc = self.channel_att(x)
        ms = self.spatial_att(x)
        return (mc + ms if self.combine == "sum" else mc * ms), mc, ms

    def forward(self, x: Tensor) -> Tensor:
        logits, _, _ = self._logits(x)
        if torch.is_grad_enabled():
            return x * (1 + torch.sigmoid(logits))
        # Inference: x + x * gate in one op, the gate in the logits' memory (one full-size
        # temporary instead of three; measured 1.3x faster). Its backward would be slower.
        return torch.addcmul(x, x, logits.sigmoid_())

    @torch.no_grad()
    def attention_weights(self, x: Tensor) -> dict[str, Tensor]:
        """``{"gate": (B, C, H, W) sigmoid(Mc ⊕ Ms), "channel": Mc (B, C, 1, 1),
        "spatial": Ms (B, 1, H, W)}``; ``channel`` and ``spatial`` are raw logits.
        The output is ``x * (1 + gate)``."""
        logits, mc, ms = self._logits(x)
        return {"gate": torch.sigmoid(logits), "channel": mc, "spatial": ms}

    @torch.no_grad()
    def attention_maps(self, x: Tensor, points: Sequence[tuple[int, int]] = ()) -> list[AttentionMap]:
        """``bam_gate``: the gate averaged over channels, and ``bam_spatial``: the spatial branch's
        logits ``Ms``, both ``(H, W)``, for one feature map ``x`` ``(1, C, H, W)`` (no query points)."""
        check_one_map("BAM", x)
        weights = self.attention_weights(x)
        return [AttentionMap("bam_gate", "BAM: gate, mean over channels", to_numpy(weights["gate"][0].mean(0))),
                AttentionMap("bam_spatial", "BAM: spatial branch (logits)", to_numpy(weights["spatial"][0, 0]))]

    def convert_official_state_dict(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Released BAM weights were trained with the product of the gates: refuse them for ``sum``."""
        if self.combine != "product":
            raise ValueError(
                f"BAM: the released BAM weights were trained with combine='product' (the authors' code "
                f"multiplies the channel and spatial gates); this module has combine={self.combine!r}. "
                f"Build it with BAM(..., combine='product') to load them."
            )
        return dict(state_dict)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, reduction={self.reduction}, dilation={self.dilation}, "
            f"combine={self.combine!r}"
        )
