"""Interlaced sparse self-attention (ISANet): long-range attention, then short-range attention.

Paper: Huang, Yuan, Guo, Zhang, Chen, Wang, "Interlaced Sparse Self-Attention for Semantic
Segmentation", 2019, https://arxiv.org/abs/1907.12273 ; the code followed is mmseg's ``ISAHead``
(https://github.com/open-mmlab/mmsegmentation, ``mmseg/models/decode_heads/isa_head.py`` and
``mmseg/models/utils/self_attention_block.py``), the head of its released ``isanet_r50-d8`` /
``isanet_r101-d8`` checkpoints; this module is that head after its input conv.

The map is zero-padded (split evenly, the extra row/column at the bottom/right) to a multiple of
the local group size ``down_factor = (P_h, P_w)``; it then holds ``Q_h x Q_w`` local blocks of
``P_h x P_w`` cells. Long range: the cells at the same offset inside every block form one group
(``Q_h * Q_w`` cells spread over the whole map), and self-attention runs inside each group
(``global_relation``). Short range: self-attention inside each block (``local_relation``), on
the long-range output. Padding is removed and ``z = out_conv(concat(y, x))``.

Each self-attention (mmseg's ``SelfAttentionBlock``, ISA variant): query and key are two 1x1
ConvModules (conv + BN + ReLU) C -> C' -> C' (``isa_channels``), the value a 1x1 conv C -> C with
bias, ``y_i = output_project(sum_j softmax_j(q_i . k_j / sqrt(C')) v_j)`` with ``output_project``
a ConvModule C -> C; ``out_conv`` is a ConvModule 2C -> C. ConvModules start from Kaiming-normal
(fan-out) weights, BN at 1 and 0; the value conv from PyTorch's default. Not the identity at
initialisation.

Parameter names are mmseg's: ``global_relation.{query,key}_project.{0,1}.{conv,bn}.*``,
``global_relation.value_project.*``, ``global_relation.output_project.{conv,bn}.*``, the same under
``local_relation``, and ``out_conv.{conv,bn}.*``.

Differences from the official code (values are the same):

- Each group's softmax and the products around it run in fp32 under autocast or for
  low-precision inputs; the scale multiplies the queries before the product instead of the scores
  after it (equal up to rounding). As upstream, every group's softmax matrix is formed: N times
  the group size in all (``Q_h * Q_w`` or ``P_h * P_w``), never N x N.
- The norm is ``nn.BatchNorm2d`` where mmseg's recipe uses SyncBN.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import AttentionMap, check_input, check_positive, conv_module, no_autocast, query_cells, to_numpy

__all__ = ["InterlacedSparseAttention"]


class SelfAttentionBlock(nn.Module):
    """mmseg's ``SelfAttentionBlock`` as ISA configures it: ``(B, C, h, w) -> (B, C, h, w)``."""

    def __init__(self, channels: int, key_channels: int) -> None:
        super().__init__()
        self.key_channels = key_channels
        self.key_project = nn.Sequential(
            conv_module(channels, key_channels, norm=True, act=True),
            conv_module(key_channels, key_channels, norm=True, act=True),
        )
        self.query_project = nn.Sequential(
            conv_module(channels, key_channels, norm=True, act=True),
            conv_module(key_channels, key_channels, norm=True, act=True),
        )
        self.value_project = nn.Conv2d(channels, channels, 1)
        self.output_project = conv_module(channels, channels, norm=True, act=True)

    def _query_key(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Scaled queries ``(B, n, C')`` (at least fp32) and keys ``(B, n, C')``."""
        query = self.query_project(x).flatten(2).transpose(1, 2)
        query = query.to(torch.promote_types(query.dtype, torch.float32)) * self.key_channels**-0.5
        return query, self.key_project(x).flatten(2).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        attn = self.weights(x)
        value = self.value_project(x).flatten(2)
        with no_autocast(x.device.type):
            # (n x n) @ (n x C), then to channel-major, as mmseg: ONNX Runtime miscomputes the
            # channel-major product (C x n) @ (n x n)^T when a reshape follows it.
            context = (attn @ value.transpose(1, 2).to(attn.dtype)).transpose(1, 2)
        return self.output_project(context.to(value.dtype).reshape(x.shape))

    def weights(self, x: Tensor) -> Tensor:
        """The softmax matrix ``(B, n, n)`` (at least fp32), query rows."""
        query, key = self._query_key(x)
        with no_autocast(x.device.type):
            return torch.softmax(query @ key.to(query.dtype).transpose(1, 2), dim=-1)


class InterlacedSparseAttention(nn.Module):
    """ISANet's interlaced sparse self-attention: ``(B, C, H, W) -> (B, C, H, W)``.

    Args:
        channels: input and output channels C (mmseg's ``channels``, 512).
        isa_channels: query/key channels C' of both self-attentions (``C // 2``: mmseg's 256 at 512).
        down_factor: the local group size ``(P_h, P_w)`` ((8, 8)).
    """

    query_maps_drawn = ("isa_long_q", "isa_short_q")
    has_softmax = True
    float32_weights = ("long_range", "short_range")
    output_in_autocast_dtype = True

    def __init__(self, channels: int, isa_channels: int | None = None, down_factor: Sequence[int] = (8, 8)) -> None:
        super().__init__()
        check_positive("InterlacedSparseAttention", "channels", channels)
        isa_channels = max(channels // 2, 1) if isa_channels is None else isa_channels
        check_positive("InterlacedSparseAttention", "isa_channels", isa_channels)
        down_factor = tuple(down_factor)
        if len(down_factor) != 2:
            raise ValueError(f"InterlacedSparseAttention: down_factor must be (rows, columns), got {down_factor!r}")
        for d in down_factor:
            check_positive("InterlacedSparseAttention", "down_factor", d)
        self.channels = channels
        self.isa_channels = isa_channels
        self.down_factor = down_factor
        self.global_relation = SelfAttentionBlock(channels, isa_channels)
        self.local_relation = SelfAttentionBlock(channels, isa_channels)
        self.out_conv = conv_module(2 * channels, channels, norm=True, act=True)

    def _layout(self, h: int, w: int) -> tuple[int, int, int, int, int, int]:
        """``(Q_h, Q_w, pad_top, pad_bottom, pad_left, pad_right)`` of an ``h x w`` map."""
        loc_h, loc_w = self.down_factor
        glb_h, glb_w = math.ceil(h / loc_h), math.ceil(w / loc_w)
        pad_h, pad_w = glb_h * loc_h - h, glb_w * loc_w - w
        return glb_h, glb_w, pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2

    def _long_range_groups(self, x: Tensor) -> Tensor:
        """Padded ``x`` as its long-range groups ``(B * P_h * P_w, C, Q_h, Q_w)``."""
        n, c, h, w = x.shape
        loc_h, loc_w = self.down_factor
        glb_h, glb_w, top, bottom, left, right = self._layout(h, w)
        x = F.pad(x, (left, right, top, bottom))
        x = x.view(n, c, glb_h, loc_h, glb_w, loc_w).permute(0, 3, 5, 1, 2, 4)
        return x.reshape(n * loc_h * loc_w, c, glb_h, glb_w)

    def _short_range_groups(self, y: Tensor, n: int) -> Tensor:
        """Long-range output ``(B * P_h * P_w, C, Q_h, Q_w)`` as short-range groups ``(B * Q_h * Q_w, C, P_h, P_w)``."""
        c, glb_h, glb_w = y.shape[1:]
        loc_h, loc_w = self.down_factor
        y = y.view(n, loc_h, loc_w, c, glb_h, glb_w).permute(0, 4, 5, 3, 1, 2)
        return y.reshape(n * glb_h * glb_w, c, loc_h, loc_w)

    def forward(self, x: Tensor) -> Tensor:
        check_input("InterlacedSparseAttention", x, self.channels, self)
        n, c, h, w = x.shape
        loc_h, loc_w = self.down_factor
        glb_h, glb_w, top, _, left, _ = self._layout(h, w)
        y = self.global_relation(self._long_range_groups(x))
        y = self.local_relation(self._short_range_groups(y, n))
        y = y.view(n, glb_h, glb_w, c, loc_h, loc_w).permute(0, 3, 1, 4, 2, 5)
        y = y.reshape(n, c, glb_h * loc_h, glb_w * loc_w)[:, :, top : top + h, left : left + w]
        return self.out_conv(torch.cat([y, x], dim=1))

    @torch.no_grad()
    def attention_weights(self, x: Tensor) -> dict[str, Tensor]:
        """The softmax matrices of every group, over the padded map (cells in row-major order):

        ``"long_range"``: ``(B, P_h, P_w, Q_h * Q_w, Q_h * Q_w)``, the group of offset ``(r, c)``;
        ``"short_range"``: ``(B, Q_h, Q_w, P_h * P_w, P_h * P_w)``, the block ``(r, c)``.
        Rows sum to 1.
        """
        check_input("InterlacedSparseAttention", x, self.channels, self)
        n, _, h, w = x.shape
        loc_h, loc_w = self.down_factor
        glb_h, glb_w = self._layout(h, w)[:2]
        groups = self._long_range_groups(x)
        long_range = self.global_relation.weights(groups)
        short_range = self.local_relation.weights(self._short_range_groups(self.global_relation(groups), n))
        return {
            "long_range": long_range.reshape(n, loc_h, loc_w, glb_h * glb_w, glb_h * glb_w),
            "short_range": short_range.reshape(n, glb_h, glb_w, loc_h * loc_w, loc_h * loc_w),
        }

    @torch.no_grad()
    def attention_maps(self, x: Tensor, points: Sequence[tuple[int, int]] = ()) -> list[AttentionMap]:
        """Two maps per query point of the single feature map ``x`` ``(1, C, H, W)``: its long-range
        weights (on the cells of its group, one per block) and its short-range weights (on its block).

        Weights on padding cells are not drawn, so a map near a padded border sums to less than 1.
        """
        points = query_cells("InterlacedSparseAttention", x, points)
        h, w = x.shape[-2:]
        loc_h, loc_w = self.down_factor
        glb_h, glb_w, top, _, left, _ = self._layout(h, w)
        weights = self.attention_weights(x)
        maps = []
        for i, p in enumerate(points):
            r, c = p[0] + top, p[1] + left  # the cell on the padded map
            (gr, lr), (gc, lc) = divmod(r, loc_h), divmod(c, loc_w)
            long_map = x.new_zeros(glb_h, loc_h, glb_w, loc_w, dtype=torch.float32)
            long_map[:, lr, :, lc] = weights["long_range"][0, lr, lc, gr * glb_w + gc].reshape(glb_h, glb_w)
            short_map = x.new_zeros(glb_h, loc_h, glb_w, loc_w, dtype=torch.float32)
            short_map[gr, :, gc, :] = weights["short_range"][0, gr, gc, lr * loc_w + lc].reshape(loc_h, loc_w)
            for key, title, values in (("long", "long-range", long_map), ("short", "short-range", short_map)):
                values = values.reshape(glb_h * loc_h, glb_w * loc_w)[top : top + h, left : left + w]
                maps.append(AttentionMap(f"isa_{key}_q{i}", f"ISA: {title} attention of query {p}", to_numpy(values), point=p))
        return maps

    def extra_repr(self) -> str:
        return f"channels={self.channels}, isa_channels={self.isa_channels}, down_factor={self.down_factor}"
