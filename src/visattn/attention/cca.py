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
  layout, not by its matmuls. Here ``x`` is copied once to ``(B, H, W, C)`` (a view for
  channels-last input), where both its rows and its columns are batched matrices with unit
  channel stride: every batched matmul (q/k, scores, aggregation, and all of the backward's) gets
  its operands as strided views of that one copy, the column scores' GEMM adds a broadcast
  ``(H, H)`` ``-inf`` diagonal itself, and temporaries borrow the output's memory before it is
  written (a fresh buffer costs page faults and memory traffic: ~1 ms per 19 MB tensor on the
  benchmark machine).
- The value projection is applied *after* the aggregation: the softmax weights of a position sum
  to 1, so ``sum_j a_j (W x_j + b) = W (sum_j a_j x_j) + b``. The aggregation runs on ``x`` and
  the last matmul (``gamma * W_v``) both projects and writes the result back in the input's memory
  format, which absorbs the channel-moving transpose that the ``(B, H, W, C)`` layout needs.
- In eager training an ``autograd.Function`` with a hand-written backward works in the same
  layout and moves the input gradient back to NCHW once, in its residual add (plain autograd
  through strided views accumulates it from differently laid-out pieces). Under
  ``torch.compile``/``torch.export``, autocast, or without gradients the same forward runs as
  plain differentiable ops.
- Scores and the softmax are computed in float32 (float64 for float64 inputs) even under
  autocast or for low-precision inputs.

``RecurrentCrissCrossAttention`` applies one such module ``recurrence`` times with shared
weights (2 in the paper: two passes connect every position to every other).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ._common import (
    AttentionMap,
    check_input,
    check_positive,
    query_cells,
    query_key_value_convs,
    reduced_channels,
    to_numpy,
)

__all__ = ["CrissCrossAttention", "RecurrentCrissCrossAttention", "cross_map"]


def _cols(t: Tensor) -> Tensor:
    """A ``(B, H, W, ...)`` tensor seen column by column, ``(B, W, H, ...)``: a strided view."""
    return t.transpose(1, 2)


def _bmm(a: Tensor, m: Tensor, bias: Tensor | None = None, out: Tensor | None = None) -> Tensor:
    """``a @ m (+ bias)`` for ``(B, P, R, K)`` and ``(B, P, K, S)`` operands, usually strided views.

    Per image, one batched GEMM reads the views in place (``torch.matmul`` would first copy them
    into ``(B*P, ..)`` batches when ``B > 1``); when compiled or differentiated, ``torch.matmul``.
    ``out`` (contiguous) receives the result unless differentiated."""
    if a.shape[0] == 1 and out is None:
        res = torch.bmm(a[0], m[0]) if bias is None else torch.baddbmm(bias, a[0], m[0])
        return res.unsqueeze(0)
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and (a.requires_grad or m.requires_grad)):
        res = torch.matmul(a, m)
        return res if bias is None else res + bias
    if out is None:
        out = torch.empty(a.shape[:-1] + m.shape[-1:], dtype=torch.promote_types(a.dtype, m.dtype), device=a.device)
    for i in range(a.shape[0]):
        if bias is None:
            torch.bmm(a[i], m[i], out=out[i])
        else:
            torch.baddbmm(bias, a[i], m[i], out=out[i])
    return out


def _bmm_in_place_(a: Tensor, m: Tensor, rows: int = 8) -> Tensor:
    """``m[b, p] = a[b, p] @ m[b, p]`` for every image ``b`` and batch row ``p``, in ``m``'s memory:
    a few rows at a time through a cache-sized buffer instead of a fresh ``m``-sized result."""
    buf = m.new_empty((min(rows, m.shape[1]),) + m.shape[2:])
    for i in range(m.shape[0]):
        for p in range(0, m.shape[1], rows):
            block = m[i, p : p + rows]
            out = buf[: block.shape[0]]
            torch.bmm(a[i, p : p + rows], block, out=out)
            block.copy_(out)
    return m


def _scores(q: Tensor, k: Tensor, diag_mask: bool = False) -> Tensor:
    """``q @ k`` in float32 (float64 stays float64), also under autocast; with ``diag_mask`` the
    diagonal is ``-inf`` (added by the GEMM itself, so no mask-sized tensor and no extra pass)."""
    dtype = torch.promote_types(q.dtype, torch.float32)
    if torch.is_autocast_enabled(q.device.type):
        with torch.autocast(q.device.type, enabled=False):
            return _scores(q.to(dtype), k.to(dtype), diag_mask)
    q, k = q.to(dtype), k.to(dtype)
    if not diag_mask:
        return _bmm(q, k)
    n = q.shape[-2]
    eye = torch.eye(n, dtype=torch.bool, device=q.device)
    return _bmm(q, k, torch.zeros(n, n, dtype=dtype, device=q.device).masked_fill(eye, float("-inf")))


def _is_channels_last(x: Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _nhwc(x: Tensor) -> Tensor:
    """``x`` as a contiguous ``(B, H, W, C)``: a view of channels-last input, else one copy.

    In this layout both the rows and the columns of ``x`` are batched matrices with a unit
    channel stride (views, no further copies)."""
    return x.permute(0, 2, 3, 1).contiguous()


def _attention(xt: Tensor, w_qk: Tensor, b_qk: Tensor) -> tuple[Tensor, Tensor]:
    """Projected ``qk`` ``(B, H, W, 2*C')`` and the criss-cross softmax ``(B, H, W, H + W)`` of
    ``xt = _nhwc(x)``.

    ``att[..., :H]`` holds the column weights (exactly 0 at the centre ``h' == h``),
    ``att[..., H:]`` the row weights; they sum to 1 per position.
    """
    b, h, w, c = xt.shape
    cq = w_qk.shape[0] // 2
    qk = torch.addmm(b_qk, xt.reshape(b * h * w, c), w_qk.t()).view(b, h, w, 2 * cq)
    q, k = qk[..., :cq], qk[..., cq:]
    e_row = _scores(q, k.transpose(-1, -2))  # (B, H, W, W')
    # The centre is counted once, in the row part: -inf on the column part's diagonal.
    e_col = _scores(_cols(q), _cols(k).transpose(-1, -2), diag_mask=True)  # (B, W, H, H')
    return qk, torch.softmax(torch.cat([_cols(e_col), e_row], dim=-1), dim=-1)


def _split(att: Tensor) -> tuple[Tensor, Tensor]:
    """Column weights ``(B, W, H, H')`` and row weights ``(B, H, W, W')``, as views of ``att``."""
    h = att.shape[1]
    return _cols(att[..., :h]), att[..., h:]


def _aggregate(xt: Tensor, att: Tensor, scratch: Tensor | None = None) -> Tensor:
    """``agg[b, h, w] = sum_h' a_col x[b, :, h', w] + sum_w' a_row x[b, :, h, w']``, ``(B, H, W, C)``;
    ``scratch`` (``B*H*W*C`` elements) holds the column part."""
    a_col, a_row = _split(att.to(xt.dtype))
    b, h, w, c = xt.shape
    cols = _bmm(a_col, _cols(xt), out=None if scratch is None else _scratch(scratch, b, w, h, c))
    # C is innermost in both parts: the transposed add reads contiguous C-runs.
    return _bmm(a_row, xt).add_(_cols(cols))


def _scratch(t: Tensor, *shape: int) -> Tensor:
    """The memory of ``t`` (contiguous or channels-last) as a contiguous tensor of ``shape``: fresh
    buffers cost page faults (~1 ms per 19 MB here), so temporaries borrow the output's memory
    before it is written."""
    return (t.permute(0, 2, 3, 1) if _is_channels_last(t) else t).view(*shape)


def _memory_format(x: Tensor) -> torch.memory_format:
    return torch.channels_last if _is_channels_last(x) else torch.contiguous_format


def _project(x: Tensor, agg: Tensor, w_out: Tensor, b_out: Tensor, out: Tensor | None = None) -> Tensor:
    """``x + w_out @ agg + b_out`` in ``x``'s memory format: the GEMM reads ``agg`` transposed as
    needed and accumulates into ``x + b_out`` (written to ``out`` if given)."""
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
    if out is None:
        y = (x + b_out.view(1, c, 1, 1)).contiguous(memory_format=_memory_format(x))
    else:
        y = torch.add(x, b_out.view(1, c, 1, 1), out=out)
    y_mat = y.permute(0, 2, 3, 1).view(b, h * w, c) if channels_last else y.view(b, c, h * w)
    y_mat.baddbmm_(lhs, rhs)
    return y


def _criss_cross(x: Tensor, w_qk: Tensor, b_qk: Tensor, w_out: Tensor, b_out: Tensor) -> tuple[Tensor, ...]:
    """``(y, xt, qk, att, agg)``: the output and what the backward needs."""
    xt = _nhwc(x)
    qk, att = _attention(xt, w_qk, b_qk)
    in_place = not (torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.is_autocast_enabled(x.device.type))
    y = torch.empty_like(x, memory_format=_memory_format(x)) if in_place else None
    agg = _aggregate(xt, att, scratch=y)
    return _project(x, agg, w_out, b_out, out=y), xt, qk, att, agg


class _CrissCrossFunction(torch.autograd.Function):
    """``_criss_cross`` with a hand-written backward that works in the ``(B, H, W, C)`` layout
    throughout and moves channels once, in the final residual add."""

    @staticmethod
    def forward(ctx, x: Tensor, w_qk: Tensor, b_qk: Tensor, w_out: Tensor, b_out: Tensor) -> Tensor:
        y, xt, qk, att, agg = _criss_cross(x, w_qk, b_qk, w_out, b_out)
        ctx.save_for_backward(xt, w_qk, w_out, qk, att, agg)
        ctx.memory_format = _memory_format(x)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy: Tensor):
        xt, w_qk, w_out, qk, att, agg = ctx.saved_tensors
        b, h, w, c = xt.shape
        if not (gy.is_contiguous() or _is_channels_last(gy)):  # e.g. expanded by a sum(): once, not per GEMM
            gy = gy.contiguous()
        cq = w_qk.shape[0] // 2
        gy_f = gy.flatten(2)  # (B, C, N)

        # Output projection y = x + w_out @ agg + b_out.
        g_w_out = torch.bmm(gy_f, agg.view(b, h * w, c)).sum(0)
        g_b_out = gy_f.sum((0, 2))
        g_agg = torch.bmm(gy_f.transpose(1, 2), w_out.expand(b, c, c)).view(b, h, w, c)

        # Aggregation agg = a_row @ x_rows + a_col @ x_cols, then the softmax over both parts.
        g_att = torch.cat(
            [_cols(_bmm(_cols(g_agg), _cols(xt).transpose(-1, -2))), _bmm(g_agg, xt.transpose(-1, -2))], dim=-1
        ).to(att.dtype)
        # PyTorch's own softmax backward kernel: one pass instead of four.
        g_e = torch._softmax_backward_data(g_att, att, -1, att.dtype).to(xt.dtype)
        g_e_col, g_e_row = _split(g_e)

        # Scores e_row = q k^T along rows, e_col = q k^T along columns.
        q, k = qk[..., :cq], qk[..., cq:]
        g_q = _bmm(g_e_row, k).add_(_cols(_bmm(g_e_col, _cols(k))))
        g_k = _bmm(g_e_row.transpose(-1, -2), q).add_(_cols(_bmm(g_e_col.transpose(-1, -2), _cols(q))))
        g_qk = torch.cat([g_q, g_k], dim=-1).view(b * h * w, 2 * cq)

        # Projection qk = x^T w_qk^T + b_qk.
        g_w_qk = torch.mm(g_qk.t(), xt.view(b * h * w, c))
        g_b_qk = g_qk.sum(0)
        if not ctx.needs_input_grad[0]:
            return None, g_w_qk, g_b_qk, g_w_out, g_b_out
        # Input gradient: residual + projection + aggregation. The aggregation's part is formed in
        # (B, H, W, C), where its GEMMs are fastest (its column part in gx's memory, before gx is
        # written), and moved to x's layout by the final add.
        a_col, a_row = _split(att.to(xt.dtype))
        gx = torch.empty(gy.shape, dtype=gy.dtype, device=gy.device, memory_format=ctx.memory_format)
        g_x_agg_cols = _bmm(a_col.transpose(-1, -2), _cols(g_agg), out=_scratch(gx, b, w, h, c))
        g_x_agg = _bmm_in_place_(a_row.transpose(-1, -2), g_agg).add_(_cols(g_x_agg_cols))  # g_agg is done
        g_x_agg.view(b * h * w, c).addmm_(g_qk, w_qk)  # the q/k projection's part
        if ctx.memory_format == torch.channels_last:
            torch.add(gy.permute(0, 2, 3, 1), g_x_agg, out=_scratch(gx, b, h, w, c))
        else:
            _add_nhwc(gy, g_x_agg, out=gx)
        return gx, g_w_qk, g_b_qk, g_w_out, g_b_out


def _add_nhwc(x: Tensor, src: Tensor, out: Tensor, rows: int = 4) -> Tensor:
    """``out = x + src.permute(0, 3, 1, 2)`` for NCHW ``x`` and ``out`` and ``(B, H, W, C)`` ``src``,
    a few image rows at a time (PyTorch's strided add over the whole tensor measured ~2.5x slower
    at 97 x 97 x 512)."""
    for i in range(src.shape[0]):
        for h in range(0, src.shape[1], rows):
            rs = slice(h, h + rows)
            torch.add(x[i, :, rs], src[i, rs].permute(2, 0, 1), out=out[i, :, rs])
    return out


def cross_map(column: Tensor, row: Tensor, cell: tuple[int, int]) -> np.ndarray:
    """Criss-cross weights of query ``cell`` as an ``(H, W)`` map: its column gets ``column[h, w, :]``,
    its row ``row[h, w, :]`` (``column``: ``(H, W, H)``, ``row``: ``(H, W, W)``, one image)."""
    h, w = cell
    out = torch.zeros(column.shape[0], row.shape[1], dtype=column.dtype, device=column.device)
    out[:, w] += column[h, w]
    out[h, :] += row[h, w]
    return to_numpy(out)


class CrissCrossAttention(nn.Module):
    """Criss-cross attention: ``(B, C, H, W) -> (B, C, H, W)``, ``y = gamma * out + x``.

    Args:
        channels: input and output channels C.
        reduction: query/key width is ``C // reduction`` (8 in the paper).
    """

    identity_at_init = True
    query_maps_drawn = ("cca_q",)
    has_softmax = True
    float32_weights = ("column", "row")

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = reduced_channels("CrissCrossAttention", channels, reduction)
        self.channels = channels
        self.reduction = reduction
        self.query_conv, self.key_conv, self.value_conv = query_key_value_convs(channels, hidden)
        self.gamma = nn.Parameter(torch.zeros(1))

    def _qk_params(self) -> tuple[Tensor, Tensor]:
        # One fused projection; the official parameter names stay.
        w = torch.cat([self.query_conv.weight, self.key_conv.weight]).flatten(1)
        return w, torch.cat([self.query_conv.bias, self.key_conv.bias])

    def forward(self, x: Tensor) -> Tensor:
        check_input("CrissCrossAttention", x, self.channels, self)
        w_qk, b_qk = self._qk_params()
        w_out = self.gamma * self.value_conv.weight.flatten(1)
        b_out = self.gamma * self.value_conv.bias
        if torch.is_grad_enabled() and not torch.compiler.is_compiling() and not torch.is_autocast_enabled(x.device.type):
            return _CrissCrossFunction.apply(x, w_qk, b_qk, w_out, b_out)
        return _criss_cross(x, w_qk, b_qk, w_out, b_out)[0]

    @torch.no_grad()
    def attention_weights(self, x: Tensor) -> dict[str, Tensor]:
        """The softmax weights of every position, split by where the key lies.

        ``{"column": (B, H, W, H), "row": (B, H, W, W)}``: ``column[b, h, w, h']`` weights
        ``v[b, :, h', w]`` (exactly 0 at ``h' == h``, the centre is in the row part) and
        ``row[b, h, w, w']`` weights ``v[b, :, h, w']``; together they sum to 1 per position.
        """
        check_input("CrissCrossAttention", x, self.channels, self)
        _, att = _attention(_nhwc(x), *self._qk_params())
        h = x.shape[2]
        return {"column": att[..., :h], "row": att[..., h:]}

    @torch.no_grad()
    def attention_maps(self, x: Tensor, points: Sequence[tuple[int, int]] = ()) -> list[AttentionMap]:
        """``cca_q{i}``: the weights query cell ``points[i]`` (default: the centre) gives its column
        and row, as an ``(H, W)`` map (:func:`cross_map`, zero off the cross); ``x`` is ``(1, C, H, W)``."""
        cells = query_cells("CrissCrossAttention", x, points)
        weights = self.attention_weights(x)
        return [AttentionMap(f"cca_q{i}", f"CCA: one pass, query {p}",
                             cross_map(weights["column"][0], weights["row"][0], p), point=p)
                for i, p in enumerate(cells)]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reduction={self.reduction}"


class RecurrentCrissCrossAttention(nn.Module):
    """RCCA: one :class:`CrissCrossAttention` (``cca``, shared weights) applied ``recurrence`` times.

    Args:
        channels: input and output channels C.
        reduction: query/key width is ``C // reduction`` (8 in the paper).
        recurrence: number of passes (2 in the paper; the released R=2 models need 2).
    """

    identity_at_init = True
    query_maps_drawn = ("rcca_pass1_q", "rcca_reach_q")
    has_softmax = True
    float32_weights = ("column_1", "row_1", "column_2", "row_2")

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

    @torch.no_grad()
    def attention_maps(self, x: Tensor, points: Sequence[tuple[int, int]] = ()) -> list[AttentionMap]:
        """Per query cell ``points[i]`` (default: the centre) of one feature map ``(1, C, H, W)``:
        ``rcca_pass1_q{i}``, the first pass's cross (as :meth:`CrissCrossAttention.attention_maps`),
        and ``rcca_reach_q{i}``, the weight each position receives after all passes (``reach``)."""
        cells = query_cells("RecurrentCrissCrossAttention", x, points)
        weights = self.attention_weights(x)
        maps = []
        for i, p in enumerate(cells):
            maps.append(AttentionMap(f"rcca_pass1_q{i}", f"CCA: pass 1, query {p}",
                                     cross_map(weights["column_1"][0], weights["row_1"][0], p), point=p))
            maps.append(AttentionMap(f"rcca_reach_q{i}", f"RCCA: reach after {self.recurrence} passes, query {p}",
                                     to_numpy(weights["reach"][0, p[0], p[1]]), point=p))
        return maps

    def extra_repr(self) -> str:
        return f"recurrence={self.recurrence}"
