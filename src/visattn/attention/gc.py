"""Global context block (GCNet): one attention-pooled context vector added to every position.

Paper: Cao, Xu, Lin, Wei, Hu, "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and
Beyond", ICCV Workshops 2019, https://arxiv.org/abs/1904.11492 ; the code followed is mmcv's
``ContextBlock`` (https://github.com/open-mmlab/mmcv, ``mmcv/cnn/bricks/context_block.py``), the
block of mmseg's ``GCHead`` and of its released ``gcnet_r50-d8`` / ``gcnet_r101-d8`` checkpoints.

Context modelling (``pooling_type="att"``): ``a = softmax_j(W_k x_j)`` over all N = H * W
positions (``conv_mask``, a 1x1 conv C -> 1), ``c = sum_j a_j x_j``; with ``"avg"``, ``c`` is the
mean of ``x``. Transform: ``t = W_2 ReLU(LN(W_1 c))`` (1x1 convs C -> C' = ``int(C * ratio)`` -> C,
LayerNorm over ``(C', 1, 1)``). Fusion: ``"channel_add"``: ``z = x + t_add``; ``"channel_mul"``:
``z = x * sigmoid(t_mul)`` (both: multiplied first, then added, as mmcv).

The last conv of each transform starts at zero (mmcv's ``last_zero_init``), so with
``("channel_add",)`` (the paper's and mmseg's choice) the block is the identity at
initialisation; with ``"channel_mul"`` it starts as ``x / 2``. ``conv_mask`` starts from
Kaiming-normal (fan-in, ReLU gain) weights and a zero bias.

Parameter names are mmcv's: ``conv_mask.*``, ``channel_add_conv.{0,1,3}.*``,
``channel_mul_conv.{0,1,3}.*``. Released weights load as they are.

Differences from the official code (values are the same):

- The softmax and the weighted sum run in fp32 even under bf16/fp16 autocast or for
  low-precision inputs; the context is returned in the dtype of ``x``.
- Arguments are checked with ``ValueError`` (mmcv asserts).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._common import AttentionMap, check_input, check_one_map, check_positive, no_autocast, to_numpy

__all__ = ["GlobalContextBlock"]

_POOLING = ("att", "avg")
_FUSIONS = ("channel_add", "channel_mul")


def _transform(channels: int, planes: int) -> nn.Sequential:
    """``1x1 conv C -> C'``, LayerNorm over ``(C', 1, 1)``, ReLU, ``1x1 conv C' -> C`` (zero-initialised)."""
    last = nn.Conv2d(planes, channels, 1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Conv2d(channels, planes, 1), nn.LayerNorm([planes, 1, 1]), nn.ReLU(inplace=True), last)


class GlobalContextBlock(nn.Module):
    """GCNet's global context block: ``(B, C, H, W) -> (B, C, H, W)``.

    Args:
        channels: input and output channels C.
        ratio: the transform's bottleneck has ``int(C * ratio)`` channels (1/4 in mmseg's GCHead).
        pooling_type: ``"att"`` (softmax-weighted context, the paper's) or ``"avg"`` (global mean).
        fusion_types: any of ``"channel_add"`` and ``"channel_mul"``.
    """

    identity_at_init = True
    maps_drawn = ("gc_context",)
    has_softmax = True
    float32_weights = ("context",)

    def __init__(
        self,
        channels: int,
        ratio: float = 1 / 4,
        pooling_type: str = "att",
        fusion_types: Sequence[str] = ("channel_add",),
    ) -> None:
        super().__init__()
        check_positive("GlobalContextBlock", "channels", channels)
        if pooling_type not in _POOLING:
            raise ValueError(f"GlobalContextBlock: pooling_type must be one of {_POOLING}, got {pooling_type!r}")
        fusion_types = tuple(fusion_types)
        if not fusion_types or any(f not in _FUSIONS for f in fusion_types):
            raise ValueError(f"GlobalContextBlock: fusion_types must be a non-empty subset of {_FUSIONS}, got {fusion_types!r}")
        planes = int(channels * ratio)
        if planes < 1:
            raise ValueError(f"GlobalContextBlock: channels={channels} with ratio={ratio} leaves {planes} bottleneck channels")
        self.channels = channels
        self.ratio = ratio
        self.planes = planes
        self.pooling_type = pooling_type
        self.fusion_types = fusion_types
        if pooling_type == "att":
            self.conv_mask = nn.Conv2d(channels, 1, 1)
            nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(self.conv_mask.bias)
        self.channel_add_conv = _transform(channels, planes) if "channel_add" in fusion_types else None
        self.channel_mul_conv = _transform(channels, planes) if "channel_mul" in fusion_types else None

    def _weights(self, x: Tensor) -> Tensor:
        """The context weights ``a`` ``(B, N)``, in at least fp32 (uniform for ``"avg"``)."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        b, _, h, w = x.shape
        if self.pooling_type == "avg":
            return torch.full((b, h * w), 1.0 / (h * w), dtype=dtype, device=x.device)
        logits = self.conv_mask(x).flatten(1)
        with no_autocast(x.device.type):
            return torch.softmax(logits.to(dtype), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        check_input("GlobalContextBlock", x, self.channels, self)
        weights = self._weights(x)
        with no_autocast(x.device.type):
            context = torch.einsum("bcn,bn->bc", x.flatten(2).to(weights.dtype), weights)
        context = context.to(x.dtype)[:, :, None, None]
        out = x
        if self.channel_mul_conv is not None:
            out = out * torch.sigmoid(self.channel_mul_conv(context))
        if self.channel_add_conv is not None:
            out = out + self.channel_add_conv(context)
        return out

    @torch.no_grad()
    def attention_weights(self, x: Tensor) -> dict[str, Tensor]:
        """``{"context": (B, H, W)}``: the weights of the pooled context; they sum to 1 per image."""
        check_input("GlobalContextBlock", x, self.channels, self)
        return {"context": self._weights(x).reshape(x.shape[0], *x.shape[-2:])}

    @torch.no_grad()
    def attention_maps(self, x: Tensor, points: Sequence[tuple[int, int]] = ()) -> list[AttentionMap]:
        """One map: the context weights over the single feature map ``x`` ``(1, C, H, W)`` (no query points)."""
        check_one_map("GlobalContextBlock", x)
        weights = self.attention_weights(x)["context"][0]
        return [AttentionMap("gc_context", "GC: context weights", to_numpy(weights))]

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, ratio={self.ratio}, pooling_type={self.pooling_type!r}, "
            f"fusion_types={self.fusion_types}"
        )
