"""Exact softmax attention over all positions without the N x N map (PAM, Non-local).

Two computations of the same values:

- **chunked**: queries are processed in chunks whose probabilities take a bounded number of bytes;
  the backward pass recomputes each chunk's probabilities instead of storing them (a custom
  ``autograd.Function``), so neither forward nor backward holds N x N. Every softmax row is
  complete, so the result is exact. The energies, softmax and weighted sum run in fp32 whatever
  the inputs' dtype. Under ``torch.export`` / ONNX export, or without gradients, the same chunked
  computation runs as plain tensor ops.
- **fused**: PyTorch's fused attention kernels (flash, memory-efficient), which never hold
  N x N either. Their query/key and value widths must be equal, while PAM's are C/8 and C: the
  values are split into heads as wide as the queries, all heads sharing the same queries and keys
  (``expand``, not copied), hence one probability map; queries and keys are zero-padded to a
  multiple of 8 channels (zeros add nothing to a dot product). Chosen automatically on CUDA, in
  eager mode, when one of those kernels accepts the inputs as they are (no dtype is lowered). The
  kernels compute energies and softmax in fp32 accumulators even for fp16/bf16 inputs, which keeps
  the fp32 guarantee of the chunked path: the math backend, whose fp16/bf16 energies are fp16/bf16
  (overflowing at 65504), is never chosen; where no fused kernel applies, the chunked path runs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.backends import cuda as cuda_backends
from torch.nn.attention import SDPBackend, sdpa_kernel

from ._common import no_autocast

__all__ = ["CHUNK_BYTES", "fused_kernels_for", "softmax_attention"]

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


def _chunked_attention(q: Tensor, k: Tensor, v: Tensor, chunk: int, scale: float = 1.0) -> Tensor:
    """``out_i = sum_j softmax_j(scale * q_i . k_j) v_j`` one query chunk at a time.

    ``q: (B, N, d)``, ``k: (B, M, d)``, ``v: (B, C, M)`` -> ``(B, C, N)`` (channel-major like the
    input, so the residual add runs on matching layouts).
    """
    n = q.shape[1]
    kt = k.transpose(1, 2)
    if chunk >= n:
        return v @ torch.softmax(_scaled(q @ kt, scale), dim=-1).transpose(1, 2)
    # Written into one preallocated output: keeping many small chunk outputs alive between the
    # large short-lived chunk buffers fragments the glibc heap (measured: +4 GB RSS at 128x256).
    out = v.new_empty(v.shape[0], v.shape[1], n)
    for s, e, scores, p in _query_chunks(q, k.shape[1], chunk):
        torch.softmax(_scaled(torch.bmm(q[:, s:e], kt, out=scores), scale), dim=-1, out=p)
        out[:, :, s:e] = v @ p.transpose(1, 2)
    return out


def _scaled(scores: Tensor, scale: float) -> Tensor:
    """``scores * scale``, in place (scaling the energies, not the queries: no N x d copy)."""
    return scores if scale == 1.0 else scores.mul_(scale)


class _ChunkedAttention(torch.autograd.Function):
    """Exact chunked attention, optionally fused with the scaled residual ``x + gamma * out``,
    whose backward recomputes each chunk's probabilities.

    Saves only q, k, v and the attention output (O(N * C)). With the residual fused, the gradients
    of ``out`` (``gamma * g``) and of ``gamma`` are formed one chunk at a time, so backward holds no
    N x C temporary besides ``dv``; peak extra memory is a few ``chunk x N`` buffers.
    """

    @staticmethod
    def forward(
        ctx, q: Tensor, k: Tensor, v: Tensor, chunk: int, scale: float, gamma: Tensor | None, x: Tensor | None
    ) -> Tensor:
        out = _chunked_attention(q, k, v, chunk, scale)
        ctx.chunk, ctx.scale = chunk, scale
        ctx.save_for_backward(q, k, v, out, gamma)
        return out if gamma is None else torch.addcmul(x, gamma, out)

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        q, k, v, out, gamma = ctx.saved_tensors
        chunk, scale = ctx.chunk, ctx.scale
        dq = torch.empty_like(q)
        dkt = k.new_zeros(k.shape[0], k.shape[2], k.shape[1])  # dk as (B, d, M): K = chunk gemm
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
            torch.softmax(_scaled(torch.bmm(q[:, s:e], kt, out=scores), scale), dim=-1, out=p)
            dv.baddbmm_(g, p)
            ds = torch.bmm(g.transpose(1, 2), v, out=scores).sub_(delta).mul_(p)  # dP -> dS in place
            dq[:, s:e] = ds @ k
            dkt.baddbmm_(q[:, s:e].transpose(1, 2), ds)
        if scale != 1.0:  # dE = dS * scale: applied once to the products with E's operands
            dq.mul_(scale), dkt.mul_(scale)
        if gamma is None:
            return dq, dkt.transpose(1, 2), dv, None, None, None, None
        return dq, dkt.transpose(1, 2), dv, None, None, dgamma.reshape(gamma.shape), grad_y


# The fused kernels, each with PyTorch's check of whether it accepts given inputs. Both compute the
# energies and softmax in fp32 accumulators; the math backend (fp16/bf16 energies) is not among them.
_FUSED_KERNELS = (
    (SDPBackend.FLASH_ATTENTION, cuda_backends.can_use_flash_attention),
    (SDPBackend.EFFICIENT_ATTENTION, cuda_backends.can_use_efficient_attention),
)


def _split_heads(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``q (B, N, d)``, ``k (B, M, d)``, ``v (B, C, M)`` as ``(B, H, N, e)``, ``(B, H, M, e)``,
    ``(B, H, M, e)`` for ``F.scaled_dot_product_attention``: ``e`` is ``d`` rounded up to a multiple
    of 8 (queries and keys zero-padded), the values' channels are split into ``H = ceil(C / e)``
    heads of ``e`` (the last zero-padded), and every head sees the same queries and keys."""
    b, n, d = q.shape
    c, m = v.shape[1:]
    e = -(-d // 8) * 8
    heads = -(-c // e)
    if e != d:
        q, k = F.pad(q, (0, e - d)), F.pad(k, (0, e - d))
    vt = F.pad(v.transpose(1, 2), (0, heads * e - c)) if heads * e != c else v.transpose(1, 2).contiguous()
    q, k = q.contiguous().unsqueeze(1), k.contiguous().unsqueeze(1)
    return q.expand(b, heads, n, e), k.expand(b, heads, m, e), vt.view(b, m, heads, e).transpose(1, 2)


def _fused_kernels(q: Tensor, k: Tensor, v: Tensor) -> list[SDPBackend]:
    """The fused kernels (flash, memory-efficient) that accept the head-split ``q, k, v``;
    none off CUDA."""
    if q.device.type != "cuda":
        return []
    params = cuda_backends.SDPAParams(q, k, v, None, 0.0, False, False)
    return [backend for backend, accepts in _FUSED_KERNELS if accepts(params)]


def _fused_attention(
    heads: tuple[Tensor, Tensor, Tensor], channels: int, scale: float, kernels: list[SDPBackend] | None
) -> Tensor:
    """``F.scaled_dot_product_attention`` on the inputs split by :func:`_split_heads` -> ``(B, C, N)``
    (``C = channels``); ``kernels``: the backends allowed, ``None`` for PyTorch's own choice."""
    qh, kh, vh = heads
    b, n = qh.shape[0], qh.shape[2]
    if kernels is None:
        out = F.scaled_dot_product_attention(qh, kh, vh, scale=scale)
    else:
        with sdpa_kernel(kernels):
            out = F.scaled_dot_product_attention(qh, kh, vh, scale=scale)
    return out.transpose(1, 2).reshape(b, n, -1)[..., :channels].transpose(1, 2)


def _tracing() -> bool:
    """Export, TorchScript tracing or ``torch.compile``: the chunked path, which traces (the fused
    path's choice asks PyTorch's kernel checks, which do not)."""
    return torch.compiler.is_exporting() or torch.compiler.is_compiling() or torch.jit.is_tracing()


def _fused_dtype(q: Tensor, k: Tensor, v: Tensor) -> torch.dtype:
    """The dtype the fused path computes in: the inputs' common one (none is lowered)."""
    return torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)


def _may_fuse(v: Tensor, dtype: torch.dtype) -> bool:
    """Whether the automatic choice looks for a fused kernel: on CUDA, in eager mode, in a dtype
    the kernels take."""
    return v.device.type == "cuda" and dtype in (torch.float32, torch.bfloat16, torch.float16) and not _tracing()


def fused_kernels_for(q: Tensor, k: Tensor, v: Tensor) -> list[SDPBackend]:
    """The fused kernels :func:`softmax_attention` would choose from for these inputs (in its
    automatic mode); empty: it takes the chunked path."""
    dtype = _fused_dtype(q, k, v)
    if not _may_fuse(v, dtype):
        return []
    with no_autocast(v.device.type):
        return _fused_kernels(*_split_heads(q.to(dtype), k.to(dtype), v.to(dtype)))


def softmax_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    chunk_size: int | None = None,
    gamma: Tensor | None = None,
    residual: Tensor | None = None,
    chunk_bytes: int | None = None,
    scale: float = 1.0,
    fused: bool | None = None,
) -> Tensor:
    """Exact ``softmax_j(scale * q_i . k_j)``-weighted sum of ``v`` without materialising N x N.

    Args:
        q: ``(B, N, d)`` queries, k: ``(B, M, d)`` keys.
        v: ``(B, C, M)`` values (channel-major).
        chunk_size: query positions per chunk of the chunked path; ``None`` picks it so that one
            chunk's probabilities take at most ``chunk_bytes`` (default :data:`CHUNK_BYTES`) per
            batch item.
        gamma, residual: if given (both), returns ``residual + gamma * out``, ``residual`` being
            ``(B, C, N)``; on the chunked path in one pass whose backward needs no N x C temporaries.
        scale: multiplies the energies (1: none, as PAM).
        fused: ``None`` (default) takes a fused kernel where one applies (CUDA, eager mode, see the
            module docstring), else the chunked path; ``False`` always the chunked path; ``True``
            always ``F.scaled_dot_product_attention`` on the head-split inputs with PyTorch's own
            choice of kernel (the math backend included: for tests, and on the CPU).

    Returns ``(B, C, N)`` in ``v``'s dtype (promoted with ``residual``'s and ``gamma``'s when they
    are given). The chunked path computes in fp32 (float64 stays float64); the fused path in the
    inputs' common dtype, with fp32 accumulators.
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
        fused_dtype = _fused_dtype(q, k, v)
        if fused or (fused is None and _may_fuse(v, fused_dtype)):
            heads = _split_heads(q.to(fused_dtype), k.to(fused_dtype), v.to(fused_dtype))
            kernels = None if fused else _fused_kernels(*heads)
            if fused or kernels:
                out = _fused_attention(heads, v.shape[1], scale, kernels)
                if gamma is not None:
                    out = torch.addcmul(residual.to(dtype), gamma.to(dtype), out.to(dtype))
                return out.to(out_dtype)
            del heads
        # Row-major queries: MKL is ~3x slower for q^T-stored x k^T with K = d this small.
        q, k, v32 = q.to(dtype).contiguous(), k.to(dtype), v.to(dtype)
        if gamma is not None:
            gamma, residual = gamma.to(dtype), residual.to(dtype)
        inputs = (q, k, v32) if gamma is None else (q, k, v32, gamma, residual)
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
        if needs_grad and not torch.compiler.is_exporting():
            out = _ChunkedAttention.apply(q, k, v32, chunk, scale, gamma, residual)
        else:  # inference, or export tracing: plain ops (same values; nothing kept for backward)
            out = _chunked_attention(q, k, v32, chunk, scale)
            if gamma is not None:  # in place: the attention output is not needed afterwards
                out = out.mul_(gamma).add_(residual)
    return out.to(out_dtype)
