"""Exact softmax attention over all positions without the N x N map (PAM, Non-local).

Queries are processed in chunks whose probabilities take a bounded number of bytes; the backward
pass recomputes each chunk's probabilities instead of storing them (a custom
``autograd.Function``), so neither forward nor backward holds N x N. Every softmax row is
complete, so the result is exact. Under ``torch.export`` / ONNX export, or without gradients,
the same chunked computation runs as plain tensor ops.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._common import no_autocast

__all__ = ["CHUNK_BYTES", "softmax_attention"]

# One chunk's fp32 scores/probabilities take at most this many bytes per batch item; forward
# holds about one such buffer and backward about three.
CHUNK_BYTES = 8 * 2**20


def _query_chunks(q: Tensor, keys: int, chunk: int):
    """Yield ``(start, end, scores, probs)`` for each chunk of query rows of ``q`` ``(B, N, d)``:
    ``scores`` and ``probs`` are ``(B, end - start, keys)`` views of two buffers that every chunk
    reuses (allocating them per chunk churns the heap: +20-60 MB peak RSS measured at 64x128)."""
    b, n = q.shape[:2]
    bufs = [q.new_empty(b * min(chunk, n) * keys) for _ in range(2)]
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        yield s, e, *(buf[: b * (e - s) * keys].view(b, e - s, keys) for buf in bufs)


def _chunked_attention(q: Tensor, k: Tensor, v: Tensor, chunk: int) -> Tensor:
    """``out_i = sum_j softmax_j(q_i . k_j) v_j`` one query chunk at a time.

    ``q: (B, N, d)``, ``k: (B, M, d)``, ``v: (B, C, M)`` -> ``(B, C, N)`` (channel-major like the
    input, so the residual add runs on matching layouts).
    """
    n = q.shape[1]
    kt = k.transpose(1, 2)
    if chunk >= n:
        return v @ torch.softmax(q @ kt, dim=-1).transpose(1, 2)
    # Written into one preallocated output: keeping many small chunk outputs alive between the
    # large short-lived chunk buffers fragments the glibc heap (measured: +4 GB RSS at 128x256).
    out = v.new_empty(v.shape[0], v.shape[1], n)
    for s, e, scores, p in _query_chunks(q, k.shape[1], chunk):
        torch.softmax(torch.bmm(q[:, s:e], kt, out=scores), dim=-1, out=p)
        out[:, :, s:e] = v @ p.transpose(1, 2)
    return out


class _ChunkedAttention(torch.autograd.Function):
    """Exact chunked attention, optionally fused with the scaled residual ``x + gamma * out``,
    whose backward recomputes each chunk's probabilities.

    Saves only q, k, v and the attention output (O(N * C)). With the residual fused, the gradients
    of ``out`` (``gamma * g``) and of ``gamma`` are formed one chunk at a time, so backward holds no
    N x C temporary besides ``dv``; peak extra memory is a few ``chunk x N`` buffers.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, chunk: int, gamma: Tensor | None, x: Tensor | None) -> Tensor:
        out = _chunked_attention(q, k, v, chunk)
        ctx.chunk = chunk
        ctx.save_for_backward(q, k, v, out, gamma)
        return out if gamma is None else torch.addcmul(x, gamma, out)

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        q, k, v, out, gamma = ctx.saved_tensors
        chunk = ctx.chunk
        dq = torch.empty_like(q)
        dkt = k.new_zeros(k.shape[0], k.shape[2], k.shape[1])  # dk as (B, d, N): K = chunk gemm
        dv = torch.zeros_like(v)
        dgamma = None if gamma is None else v.new_zeros(())
        kt = k.transpose(1, 2)
        for s, e, scores, p in _query_chunks(q, k.shape[1], chunk):
            g = grad_y[:, :, s:e]  # (B, C, n)
            # delta_i = sum_j P_ij dP_ij = g_i . out_i: the softmax backward without a second pass over P.
            delta = (g * out[:, :, s:e]).sum(1).unsqueeze(-1)  # (B, n, 1)
            if gamma is not None:  # y = x + gamma * out: d out = gamma * g
                dgamma += delta.sum()
                g, delta = g * gamma, delta * gamma
            torch.softmax(torch.bmm(q[:, s:e], kt, out=scores), dim=-1, out=p)
            dv.baddbmm_(g, p)
            ds = torch.bmm(g.transpose(1, 2), v, out=scores).sub_(delta).mul_(p)  # dP -> dS in place
            dq[:, s:e] = ds @ k
            dkt.baddbmm_(q[:, s:e].transpose(1, 2), ds)
        if gamma is None:
            return dq, dkt.transpose(1, 2), dv, None, None, None
        return dq, dkt.transpose(1, 2), dv, None, dgamma.reshape(gamma.shape), grad_y


def softmax_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    chunk_size: int | None = None,
    gamma: Tensor | None = None,
    residual: Tensor | None = None,
    chunk_bytes: int | None = None,
) -> Tensor:
    """Exact ``softmax_j(q_i . k_j)``-weighted sum of ``v`` without materialising N x N.

    Args:
        q: ``(B, N, d)`` queries, k: ``(B, M, d)`` keys (no scaling is applied).
        v: ``(B, C, M)`` values (channel-major).
        chunk_size: query positions per chunk; ``None`` picks it so that one chunk's probabilities
            take at most ``chunk_bytes`` (default :data:`CHUNK_BYTES`) per batch item.
        gamma, residual: if given (both), returns ``residual + gamma * out`` computed in one pass,
            ``residual`` being ``(B, C, N)``; its backward then needs no N x C temporaries.

    Returns ``(B, C, N)``; computed in fp32 (float64 stays float64) and returned in ``v``'s dtype
    (promoted with ``residual``'s and ``gamma``'s when they are given).
    """
    if (gamma is None) != (residual is None):
        raise ValueError("softmax_attention: gamma and residual go together (give both or neither)")
    n = q.shape[1]
    chunk = chunk_size if chunk_size is not None else max(1, (chunk_bytes or CHUNK_BYTES) // (4 * k.shape[1]))
    chunk = min(chunk, n)
    dtype = torch.promote_types(v.dtype, torch.float32)
    out_dtype = v.dtype
    if gamma is not None:
        out_dtype = torch.promote_types(torch.promote_types(out_dtype, residual.dtype), gamma.dtype)
    with no_autocast(v.device.type):
        # Row-major queries: MKL is ~3x slower for q^T-stored x k^T with K = d this small.
        q, k, v32 = q.to(dtype).contiguous(), k.to(dtype), v.to(dtype)
        if gamma is not None:
            gamma, residual = gamma.to(dtype), residual.to(dtype)
        inputs = (q, k, v32) if gamma is None else (q, k, v32, gamma, residual)
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
        if needs_grad and not torch.compiler.is_exporting():
            out = _ChunkedAttention.apply(q, k, v32, chunk, gamma, residual)
        else:  # inference, or export tracing: plain ops (same values; nothing kept for backward)
            out = _chunked_attention(q, k, v32, chunk)
            if gamma is not None:  # in place: the attention output is not needed afterwards
                out = out.mul_(gamma).add_(residual)
    return out.to(out_dtype)
