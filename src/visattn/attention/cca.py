"""Criss-cross attention (CCA) and its recurrent form (RCCA), from CCNet.

Paper: Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019 / TPAMI
2020, https://arxiv.org/abs/1811.11721. Official code: https://github.com/speedinghzl/CCNet
(``cc_attention``, pure-PyTorch ``CrissCrossAttention``).

Each position ``(h, w)`` attends to its column (H keys) and its row (W keys); the centre is in
both, so its column copy is masked out and one softmax runs over the ``H - 1 + W`` remaining
scores::

    q, k = 1x1 conv C -> C//8 (bias), v = 1x1 conv C -> C (bias)
    a = softmax over {q_hw . k_h'w (h' != h)} u {q_hw . k_hw'}
    y = gamma * (sum_h' a_col v_h'w + sum_w' a_row v_hw') + x

Same parameters, keys (``query_conv``, ``key_conv``, ``value_conv``, ``gamma``) and outputs as the
official module (up to float rounding). How it is computed differs, for speed:

- The official code builds a ``(B*W, H, H)`` ``-inf`` tensor on every call and moves q, k, v and
  the attention through a chain of ``permute().contiguous()`` copies; it is bound by memory
  layout, not by its matmuls. Here q and k come from one matmul that reads ``x`` transposed (no
  copy), the column scores' GEMM adds a broadcast ``(H, H)`` ``-inf`` diagonal itself, and the
  batched matmuls get their operands as strided views (plus one per-plane transpose of ``x``
  for NCHW input).
- The value projection is applied *after* the aggregation: the softmax weights of a position sum
  to 1, so ``sum_j a_j (W x_j + b) = W (sum_j a_j x_j) + b``. The aggregation runs on ``x`` and
  the last matmul (``gamma * W_v``) both projects and writes the result back in the input's memory
  format, which absorbs the one channel-moving transpose that a criss-cross aggregation needs.
- In eager training an ``autograd.Function`` with a hand-written backward keeps every gradient in
  a cache-friendly layout (plain autograd through strided views accumulates the input gradient
  from differently laid-out pieces). Under ``torch.compile``/``torch.export``, autocast, or without
  gradients the same forward runs as plain differentiable ops.
- Scores and the softmax are computed in float32 (float64 for float64 inputs) even under
  autocast or for low-precision inputs.

``RecurrentCrissCrossAttention`` applies one such module ``recurrence`` times with shared
weights (2 in the paper: two passes connect every position to every other).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .checks import check_input, check_positive, reduced_channels

__all__ = ["CrissCrossAttention", "RecurrentCrissCrossAttention"]


def _scores(q: Tensor, k: Tensor, diag_mask: bool = False) -> Tensor:
    """``q @ k`` in float32 (float64 stays float64), also under autocast; with ``diag_mask`` the
    diagonal is ``-inf`` (added by the GEMM itself, so no mask-sized tensor and no extra pass)."""
    dtype = torch.promote_types(q.dtype, torch.float32)
    if torch.is_autocast_enabled(q.device.type):
        with torch.autocast(q.device.type, enabled=False):
            return _scores(q.to(dtype), k.to(dtype), diag_mask)
    q, k = q.to(dtype), k.to(dtype)
    if not diag_mask:
        return torch.bmm(q, k)
    n = q.shape[1]
    eye = torch.eye(n, dtype=torch.bool, device=q.device)
    return torch.baddbmm(torch.zeros(n, n, dtype=dtype, device=q.device).masked_fill(eye, float("-inf")), q, k)


def _is_channels_last(x: Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _row_operand(x: Tensor) -> Tensor:
    """``x`` as ``(B*H, C, W)``: matrix ``[b*H + h] = x[b, :, h, :]``. A view for NCHW with B = 1
    and for channels-last; otherwise a copy made of contiguous W-runs."""
    b, c, h, w = x.shape
    return x.transpose(1, 2).reshape(b * h, c, w)


def _col_operand(x: Tensor) -> Tensor:
    """``x`` as ``(B*W, C, H)``: matrix ``[b*W + w] = x[b, :, :, w]``, with a unit inner stride."""
    b, c, h, w = x.shape
    if _is_channels_last(x):
        return x.permute(0, 3, 1, 2).reshape(b * w, c, h)
    # NCHW: transpose each channel plane (cache-resident) rather than gather across channels.
    return x.transpose(2, 3).contiguous().transpose(1, 2).reshape(b * w, c, h)


def _attention(x: Tensor, w_qk: Tensor, b_qk: Tensor) -> tuple[Tensor, Tensor]:
    """Projected ``qk`` ``(B, N, 2*C')`` and the criss-cross softmax ``(B, H, W, H + W)``.

    ``att[..., :H]`` holds the column weights (exactly 0 at the centre ``h' == h``),
    ``att[..., H:]`` the row weights; they sum to 1 per position.
    """
    b, c, h, w = x.shape
    cq = w_qk.shape[0] // 2
    # (B, N, 2C'): reads x transposed inside the GEMM; no copy for NCHW or channels-last input.
    qk = torch.baddbmm(b_qk, x.flatten(2).transpose(1, 2), w_qk.t().expand(b, c, 2 * cq))
    qk_row = qk.view(b * h, w, 2 * cq)
    qk_col = qk.view(b, h, w, 2 * cq).transpose(1, 2).reshape(b * w, h, 2 * cq)
    e_row = _scores(qk_row[..., :cq], qk_row[..., cq:].transpose(1, 2))  # (B*H, W, W')
    # The centre is counted once, in the row part: -inf on the column part's diagonal.
    e_col = _scores(qk_col[..., :cq], qk_col[..., cq:].transpose(1, 2), diag_mask=True)  # (B*W, H, H')
    scores = torch.cat([e_col.view(b, w, h, h).transpose(1, 2), e_row.view(b, h, w, w)], dim=-1)
    return qk, torch.softmax(scores, dim=-1)


def _split(att: Tensor) -> tuple[Tensor, Tensor]:
    """Column weights as ``(B*W, H, H')`` and row weights as ``(B*H, W, W')`` batched matrices."""
    b, h, w, _ = att.shape
    a_col = att[..., :h].transpose(1, 2).reshape(b * w, h, h)
    a_row = att[..., h:].reshape(b * h, w, w)
    return a_col, a_row


def _aggregate(x: Tensor, x_row: Tensor, x_col: Tensor, att: Tensor) -> Tensor:
    """``agg[b, h, w] = sum_h' a_col x[b, :, h', w] + sum_w' a_row x[b, :, h, w']``, ``(B, H, W, C)``,
    with ``x_row = _row_operand(x)`` and ``x_col = _col_operand(x)``."""
    b, c, h, w = x.shape
    a_col, a_row = _split(att.to(x.dtype))
    agg_row = torch.bmm(a_row, x_row.transpose(1, 2))  # (B*H, W, C)
    agg_col = torch.bmm(a_col, x_col.transpose(1, 2))  # (B*W, H, C)
    # C is innermost in both: this transposed add reads contiguous C-runs.
    return agg_row.view(b, h, w, c).add_(agg_col.view(b, w, h, c).transpose(1, 2))


def _project(x: Tensor, agg: Tensor, w_out: Tensor, b_out: Tensor) -> Tensor:
    """``x + w_out @ agg + b_out`` in ``x``'s memory format: the GEMM reads ``agg`` transposed as
    needed and accumulates into ``x + b_out``."""
    b, c, h, w = x.shape
    agg = agg.reshape(b, h * w, c)
    channels_last = _is_channels_last(x)
    if channels_last:  # (B, N, C) = agg @ w_out^T
        lhs, rhs = agg, w_out.t().expand(b, c, c)
    else:  # (B, C, N) = w_out @ agg^T
        lhs, rhs = w_out.expand(b, c, c), agg.transpose(1, 2)
    if torch.is_autocast_enabled(x.device.type):  # GEMM in autocast's precision, residual in x's
        out = torch.bmm(lhs, rhs)
        out = out.transpose(1, 2) if channels_last else out
        return x + (out.reshape(b, c, h, w) + b_out.view(1, c, 1, 1))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = (x + b_out.view(1, c, 1, 1)).contiguous(memory_format=fmt)
    y_mat = y.permute(0, 2, 3, 1).view(b, h * w, c) if channels_last else y.view(b, c, h * w)
    y_mat.baddbmm_(lhs, rhs)
    return y


def _criss_cross(x: Tensor, w_qk: Tensor, b_qk: Tensor, w_out: Tensor, b_out: Tensor) -> Tensor:
    _, att = _attention(x, w_qk, b_qk)
    return _project(x, _aggregate(x, _row_operand(x), _col_operand(x), att), w_out, b_out)


class _CrissCrossFunction(torch.autograd.Function):
    """``_criss_cross`` with a backward that writes each gradient in a cache-friendly layout."""

    @staticmethod
    def forward(ctx, x: Tensor, w_qk: Tensor, b_qk: Tensor, w_out: Tensor, b_out: Tensor) -> Tensor:
        qk, att = _attention(x, w_qk, b_qk)
        x_row, x_col = _row_operand(x), _col_operand(x)
        agg = _aggregate(x, x_row, x_col, att)
        ctx.save_for_backward(x, x_row, x_col, w_qk, w_out, qk, att, agg)
        return _project(x, agg, w_out, b_out)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy: Tensor):
        x, x_row, x_col, w_qk, w_out, qk, att, agg = ctx.saved_tensors
        b, c, h, w = x.shape
        cq = w_qk.shape[0] // 2
        channels_last = _is_channels_last(x)
        gy_f = gy.flatten(2)  # (B, C, N)
        agg_f = agg.view(b, h * w, c)

        # Output projection y = x + w_out @ agg + b_out.
        g_w_out = torch.bmm(gy_f, agg_f).sum(0)
        g_b_out = gy_f.sum((0, 2))
        g_agg = torch.bmm(gy_f.transpose(1, 2), w_out.expand(b, c, c))  # (B, N, C)
        g_row = g_agg.view(b * h, w, c)
        g_col = g_agg.view(b, h, w, c).transpose(1, 2).reshape(b * w, h, c)

        # Aggregation agg = a_row @ x_row^T + a_col @ x_col^T.
        a_col, a_row = _split(att.to(x.dtype))
        g_a_col = torch.bmm(g_col, x_col).to(att.dtype)  # (B*W, H, H')
        g_a_row = torch.bmm(g_row, x_row).to(att.dtype)  # (B*H, W, W')
        if channels_last:  # gradient pieces as (.., C) rows: C-runs throughout
            gx_row = torch.bmm(a_row.transpose(1, 2), g_row).view(b, h, w, c)
            gx_col = torch.bmm(a_col.transpose(1, 2), g_col).view(b, w, h, c).transpose(1, 2)
        else:  # as (C, ..) matrices, added to the NCHW gradient along contiguous runs
            gx_row = torch.bmm(g_row.transpose(1, 2), a_row).view(b, h, c, w).transpose(1, 2)
            gx_col = torch.bmm(g_col.transpose(1, 2), a_col).view(b, w, c, h).permute(0, 2, 3, 1)

        # Softmax over the concatenated scores, one part at a time (masked entries have a == 0).
        p_col, p_row = _split(att)
        dot = (g_a_col * p_col).sum(-1).view(b, w, h).transpose(1, 2) + (g_a_row * p_row).sum(-1).view(b, h, w)
        g_e_col = (g_a_col - dot.transpose(1, 2).reshape(b * w, h, 1)).mul_(p_col).to(x.dtype)
        g_e_row = (g_a_row - dot.reshape(b * h, w, 1)).mul_(p_row).to(x.dtype)

        # Scores e_row = q_row k_row^T and e_col = q_col k_col^T.
        qk_row = qk.view(b * h, w, 2 * cq)
        qk_col = qk.view(b, h, w, 2 * cq).transpose(1, 2).reshape(b * w, h, 2 * cq)
        g_qk_row = torch.cat(
            [torch.bmm(g_e_row, qk_row[..., cq:]), torch.bmm(g_e_row.transpose(1, 2), qk_row[..., :cq])], dim=-1
        )
        g_qk_col = torch.cat(
            [torch.bmm(g_e_col, qk_col[..., cq:]), torch.bmm(g_e_col.transpose(1, 2), qk_col[..., :cq])], dim=-1
        )
        g_qk = (g_qk_row.view(b, h, w, 2 * cq) + g_qk_col.view(b, w, h, 2 * cq).transpose(1, 2)).view(b, h * w, 2 * cq)

        # Projection qk = x^T w_qk^T + b_qk.
        x_f = x.flatten(2)
        g_w_qk = torch.bmm(g_qk.transpose(1, 2), x_f.transpose(1, 2)).sum(0)
        g_b_qk = g_qk.sum((0, 1))
        # Input gradient: residual + projection (one GEMM) + aggregation, summed in x's layout.
        if channels_last:
            gx = torch.baddbmm(gy.permute(0, 2, 3, 1).reshape(b, h * w, c), g_qk, w_qk.expand(b, 2 * cq, c))
            gx = gx.view(b, h, w, c).add_(gx_row).add_(gx_col).permute(0, 3, 1, 2)
        else:
            gx = torch.baddbmm(gy.reshape(b, c, h * w), w_qk.t().expand(b, c, 2 * cq), g_qk.transpose(1, 2))
            gx = gx.view(b, c, h, w).add_(gx_row).add_(gx_col)
        return gx, g_w_qk, g_b_qk, g_w_out, g_b_out


class CrissCrossAttention(nn.Module):
    """Criss-cross attention: ``(B, C, H, W) -> (B, C, H, W)``, ``y = gamma * out + x``.

    Args:
        channels: input and output channels C.
        reduction: query/key width is ``C // reduction`` (8 in the paper).
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = reduced_channels("CrissCrossAttention", channels, reduction)
        self.channels = channels
        self.reduction = reduction
        self.query_conv = nn.Conv2d(channels, hidden, 1)
        self.key_conv = nn.Conv2d(channels, hidden, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def _qk_params(self) -> tuple[Tensor, Tensor]:
        # One fused projection; the official parameter names stay.
        w = torch.cat([self.query_conv.weight, self.key_conv.weight]).flatten(1)
        return w, torch.cat([self.query_conv.bias, self.key_conv.bias])

    def forward(self, x: Tensor) -> Tensor:
        check_input("CrissCrossAttention", x, self.channels)
        w_qk, b_qk = self._qk_params()
        w_out = self.gamma * self.value_conv.weight.flatten(1)
        b_out = self.gamma * self.value_conv.bias
        if torch.is_grad_enabled() and not torch.compiler.is_compiling() and not torch.is_autocast_enabled(x.device.type):
            return _CrissCrossFunction.apply(x, w_qk, b_qk, w_out, b_out)
        return _criss_cross(x, w_qk, b_qk, w_out, b_out)

    @torch.no_grad()
    def attention_weights(self, x: Tensor) -> dict[str, Tensor]:
        """The softmax weights of every position, split by where the key lies.

        ``{"column": (B, H, W, H), "row": (B, H, W, W)}``: ``column[b, h, w, h']`` weights
        ``v[b, :, h', w]`` (exactly 0 at ``h' == h``, the centre is in the row part) and
        ``row[b, h, w, w']`` weights ``v[b, :, h, w']``; together they sum to 1 per position.
        """
        check_input("CrissCrossAttention", x, self.channels)
        _, att = _attention(x, *self._qk_params())
        h = x.shape[2]
        return {"column": att[..., :h], "row": att[..., h:]}

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reduction={self.reduction}"


class RecurrentCrissCrossAttention(nn.Module):
    """RCCA: one :class:`CrissCrossAttention` (``cca``, shared weights) applied ``recurrence`` times.

    Args:
        channels: input and output channels C.
        reduction: query/key width is ``C // reduction`` (8 in the paper).
        recurrence: number of passes (2 in the paper; the released R=2 models need 2).
    """

    def __init__(self, channels: int, reduction: int = 8, recurrence: int = 2) -> None:
        super().__init__()
        check_positive("RecurrentCrissCrossAttention", "recurrence", recurrence)
        self.recurrence = recurrence
        self.cca = CrissCrossAttention(channels, reduction)

    def forward(self, x: Tensor) -> Tensor:
        for _ in range(self.recurrence):
            x = self.cca(x)
        return x

    @torch.no_grad()
    def attention_weights(self, x: Tensor) -> dict[str, Tensor]:
        """Per-pass weights and where each position's information comes from after all passes.

        ``"column_i"`` ``(B, H, W, H)`` and ``"row_i"`` ``(B, H, W, W)`` are pass ``i``'s weights
        (see :meth:`CrissCrossAttention.attention_weights`; pass ``i`` sees the output of pass
        ``i - 1``). ``"reach"`` ``(B, H, W, H, W)`` is the product ``A_R ... A_1`` of the passes'
        sparse ``N x N`` attention matrices: ``reach[b, h, w, h', w']`` is the total weight that
        source ``(h', w')`` receives from query ``(h, w)`` along all criss-cross paths. It ignores
        the value projection and the residual path, and costs ``O(N^2)`` memory, so it is meant
        for inspection-sized maps. After one pass it is non-zero only on the query's cross; after
        two, everywhere.
        """
        b, _, h, w = x.shape
        eye_h = torch.eye(h, dtype=x.dtype, device=x.device)
        eye_w = torch.eye(w, dtype=x.dtype, device=x.device)
        out: dict[str, Tensor] = {}
        reach = None
        for i in range(1, self.recurrence + 1):
            weights = self.cca.attention_weights(x)
            col, row = weights["column"].to(x.dtype), weights["row"].to(x.dtype)
            out[f"column_{i}"], out[f"row_{i}"] = col, row
            dense = torch.einsum("bhwk,wv->bhwkv", col, eye_w) + torch.einsum("bhwv,hk->bhwkv", row, eye_h)
            dense = dense.reshape(b, h * w, h * w)
            reach = dense if reach is None else torch.bmm(dense, reach)
            x = self.cca(x)
        out["reach"] = reach.view(b, h, w, h, w)
        return out

    def extra_repr(self) -> str:
        return f"recurrence={self.recurrence}"
