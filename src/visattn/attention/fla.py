"""Fully attentional block (FLA), from FLANet.

Paper: Song et al., "Fully Attentional Network for Semantic Segmentation", AAAI 2022,
https://arxiv.org/abs/2112.04108. Official code: https://github.com/maggiesong7/FullyAttentional
(``model.py``, ``FullyAttentionalBlock``).

Channel attention whose C x C maps are computed per column and per row, with the spatial
context of the other axis pooled in::

    ctx_h = conv1(mean over W of x)    (B, H, C)   conv1, conv2: Linear C -> C with bias
    ctx_w = conv2(mean over H of x)    (B, W, C)
    column w of item b:  F = x[b, :, :, w] (C x H),  E = softmax_last(F @ ctx_h[b]) (C x C),
                         out_h[b, :, :, w] = E @ F
    row h of item b:     F = x[b, :, h, :] (C x W),  E = softmax_last(F @ ctx_w[b]),
                         out_w[b, :, h, :] = E @ F
    y = conv(gamma * (out_h + out_w) + x),  conv = 3x3 conv (no bias) + BatchNorm + ReLU

``gamma`` starts at 0, so at initialisation the block is ``conv(x)`` (identity before the conv).
Parameter names equal the official ones (``conv1``, ``conv2``, ``conv.0``, ``conv.1``, ``gamma``).

Differences from the official code:

- **Batch leak fixed.** The official code pairs column ``b*W + w`` with
  ``encode_h.repeat(W, 1, 1)[b*W + w] = ctx_h[(b*W + w) % B]`` (and rows likewise), so for B > 1 an
  item is attended with other items' context. visattn pairs every column and row with its own
  item's context. With B = 1 both agree, so the released weights remain valid.
- The scores of all columns of an item come from one matmul (the item's columns stacked against
  its context), without materialising the repeated context; inputs are re-laid out with
  cache-friendly copies only (none for channels-last input), and in eager training the column
  output's gradient is re-laid out once instead of slice by slice inside the matmul backward.
- Scores and softmax are computed in float32 (float64 for float64 inputs), also under autocast;
  the official code runs them in the input precision.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._common import AttentionMap, check_input, check_positive, query_cells, to_numpy

__all__ = ["FullyAttentional"]


def _matmul_acc(a: Tensor, b: Tensor) -> Tensor:
    """``bmm(a, b)`` in float32 (float64 stays float64), also under autocast."""
    dtype = torch.promote_types(a.dtype, torch.float32)
    if torch.is_autocast_enabled(a.device.type):
        with torch.autocast(a.device.type, enabled=False):
            return torch.bmm(a.to(dtype), b.to(dtype))
    return torch.bmm(a.to(dtype), b.to(dtype))


def _columns(x: Tensor) -> Tensor:
    """``x`` as ``(B, W, C, H)``, ``[b, w] = x[b, :, :, w]``, viewable as ``(B, W*C, H)``."""
    if x.is_contiguous(memory_format=torch.channels_last):  # a view (unit stride along C)
        return x.permute(0, 3, 1, 2)
    # NCHW: transpose each channel plane first (cache-resident), then move whole H-runs.
    return x.transpose(2, 3).contiguous().transpose(1, 2).contiguous()


def _rows(x: Tensor) -> Tensor:
    """``x`` as a contiguous ``(B, H, C, W)``, ``[b, h] = x[b, :, h, :]`` (a copy along W-runs)."""
    return x.transpose(1, 2).contiguous()


class _ColumnsToImage(torch.autograd.Function):
    """``(B, W, C, H) -> (B, C, H, W)`` contiguous, whose backward returns a ``(B, W, C, H)``
    gradient with a unit inner stride. (Autograd would hand the column matmul's backward the NCHW
    gradient permuted, whose per-column ``C x H`` slices have no unit stride: the batched matmul
    then copies every slice separately, which dominated the training step.)"""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        return t.permute(0, 2, 3, 1).contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _columns(grad)


def _axis_attention(feats: Tensor, ctx: Tensor) -> tuple[Tensor, Tensor]:
    """For ``feats`` ``(B, L, C, K)`` (L lines of C x K, viewable as ``(B, L*C, K)``) and ``ctx``
    ``(B, K, C)``:
    ``E = softmax(feats[b, l] @ ctx[b])`` ``(B, L, C, C)`` and ``E @ feats[b, l]`` ``(B, L, C, K)``."""
    b, lines, c, k = feats.shape
    # All lines of an item share its context: one (L*C, K) @ (K, C) matmul per item.
    energy = _matmul_acc(feats.view(b, lines * c, k), ctx)
    att = torch.softmax(energy, dim=-1).view(b, lines, c, c)
    out = torch.matmul(att.to(feats.dtype), feats)
    return att, out


class FullyAttentional(nn.Module):
    """FLA block: ``(B, C, H, W) -> (B, C, H, W)``, ``y = conv(gamma * (out_h + out_w) + x)``.

    Args:
        channels: input and output channels C (512 in FLANet).
    """

    identity_at_init = "conv"
    query_maps_drawn = ("fla_q", "fla_column_q", "fla_row_q")
    has_softmax = True
    float32_weights = ("column", "row")
    output_in_autocast_dtype = True

    def __init__(self, channels: int) -> None:
        super().__init__()
        check_positive("FullyAttentional", "channels", channels)
        self.channels = channels
        self.conv1 = nn.Linear(channels, channels)
        self.conv2 = nn.Linear(channels, channels)
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.gamma = nn.Parameter(torch.zeros(1))

    def _attend(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Column and row maps ``(B, W, C, C)``, ``(B, H, C, C)`` and outputs, both ``(B, C, H, W)``."""
        check_input("FullyAttentional", x, self.channels, self)
        ctx_h = self.conv1(x.mean(3).transpose(1, 2))  # (B, H, C)
        ctx_w = self.conv2(x.mean(2).transpose(1, 2))  # (B, W, C)
        att_h, out_h = _axis_attention(_columns(x), ctx_h)  # out (B, W, C, H)
        att_w, out_w = _axis_attention(_rows(x), ctx_w)  # out (B, H, C, W)
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            out_h = _ColumnsToImage.apply(out_h)
        else:
            out_h = out_h.permute(0, 2, 3, 1)
        return att_h, att_w, out_h, out_w.transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        _, _, out_h, out_w = self._attend(x)
        return self.conv(torch.addcmul(x, self.gamma, out_w).addcmul_(self.gamma, out_h))

    @torch.no_grad()
    def attention_weights(self, x: Tensor) -> dict[str, Tensor]:
        """``{"column": (B, W, C, C), "row": (B, H, C, C)}``: the softmax maps (rows sum to 1) of
        every column ``w`` and row ``h``; ``out_h[b, :, :, w] = column[b, w] @ x[b, :, :, w]``."""
        att_h, att_w, _, _ = self._attend(x)
        return {"column": att_h, "row": att_w}

    @torch.no_grad()
    def attention_maps(self, x: Tensor, points: Sequence[tuple[int, int]] = ()) -> list[AttentionMap]:
        """Per query cell ``(h, w)`` of ``points`` (default: the centre) of one feature map
        ``(1, C, H, W)``: ``fla_q{i}``, how peaked each row's and column's channel attention is
        (``0.5 * (peak_row[h'] + peak_column[w'])`` at ``(h', w')``, peak = mean over query channels
        of the largest weight; the same map for every query), and the ``(C, C)`` matrices of the
        query's column ``fla_column_q{i}`` and row ``fla_row_q{i}``."""
        cells = query_cells("FullyAttentional", x, points)
        h, w = x.shape[-2:]
        weights = self.attention_weights(x)
        col, row = weights["column"][0], weights["row"][0]  # (W, C, C), (H, C, C)
        stripes = 0.5 * (row.amax(-1).mean(-1)[:, None] + col.amax(-1).mean(-1)[None, :])
        maps = []
        for i, p in enumerate(cells):
            maps.append(AttentionMap(f"fla_q{i}", f"FLA: row+col peak weight, query {p}", to_numpy(stripes), point=p))
            maps.append(AttentionMap(f"fla_column_q{i}", f"FLA: column {p[1]} attention", to_numpy(col[p[1]]),
                                     spatial=False, point=p, xlabel="key channel", ylabel="query channel", grid=(h, w)))
            maps.append(AttentionMap(f"fla_row_q{i}", f"FLA: row {p[0]} attention", to_numpy(row[p[0]]),
                                     spatial=False, point=p, xlabel="key channel", ylabel="query channel", grid=(h, w)))
        return maps

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
