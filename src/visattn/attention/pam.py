"""Position attention module (PAM) of DANet, exact and without the N x N attention map.

Paper: Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019,
https://arxiv.org/abs/1809.02983 ; official code: https://github.com/junfu1115/DANet
(``encoding/nn/da_att.py``, ``PAM_Module``).

``q = Wq x``, ``k = Wk x`` (1x1 convs with bias, C -> C // 8), ``v = Wv x`` (1x1 conv with bias,
C -> C); ``S_ij = softmax_j(q_i . k_j)`` over all N = H * W positions, with **no** 1/sqrt(d)
scaling (as the official code); ``out_i = sum_j S_ij v_j``; ``y = gamma * out + x`` with ``gamma``
initialised to 0, so the module is the identity at initialisation. Parameter names are the
official ones (``query_conv``, ``key_conv``, ``value_conv``, ``gamma``): released weights load as
they are.

Differences from the official code (values are the same):

- The official code builds the ``B x N x N`` map (64 MB per image at 64 x 64, 4.3 GB at
  128 x 256) and keeps it for backward. Here the queries are processed in chunks whose
  probabilities take a bounded number of bytes, and the backward pass recomputes each chunk's
  probabilities instead of storing them (a custom ``autograd.Function``), so neither forward nor
  backward ever holds N x N. This is exact (no approximation): every softmax row is complete.
  The residual ``gamma * out + x`` is computed inside that function too, so its backward forms
  ``gamma * grad`` and the gradient of ``gamma`` chunk by chunk instead of as N x C temporaries, and
  the chunk buffers are allocated once per call, not per chunk (training step at 64 x 128: 1/9 of the
  official code's peak memory; see docs/benchmarks.md).
- The softmax, and the matmuls around it, run in fp32 (max-subtracted) even under bf16/fp16
  autocast or for low-precision inputs; the result is returned in the dtype of ``v`` (what
  autocast would give).
- Under ``torch.export`` / ONNX export, or when no gradient is needed, the same chunked
  computation runs as plain tensor ops (no ``autograd.Function``), so it traces and exports.
- On CUDA (eager mode), PyTorch's fused flash or memory-efficient attention kernel computes the
  same values where one accepts the inputs: the values are split into heads of C/8 channels that
  share the queries, keys and hence the probability map. Those kernels keep energies and softmax
  in fp32 accumulators for fp16/bf16 inputs too; elsewhere the chunked path runs (see
  ``visattn.attention._functional``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._common import (
    AttentionMap,
    check_input,
    check_positive,
    no_autocast,
    query_cells,
    query_key_value_convs,
    query_rows,
    reduced_channels,
    to_numpy,
)
from ._functional import softmax_attention

__all__ = ["PositionAttention"]

class PositionAttention(nn.Module):
    """DANet position attention: ``(B, C, H, W) -> (B, C, H, W)``.

    Args:
        channels: input and output channels C.
        reduction: query/key width is ``C // reduction`` (8 in DANet).
        chunk_size: query positions processed at once. ``None`` (default) chooses it so that one
            chunk's probabilities take at most ``CHUNK_BYTES`` (8 MiB) per batch item; any value
            gives the same result, larger ones trade memory for fewer, larger matmuls.
    """

    identity_at_init = True
    query_maps_drawn = ("pam_q",)
    has_softmax = True
    float32_weights = ("position",)

    def __init__(self, channels: int, reduction: int = 8, chunk_size: int | None = None) -> None:
        super().__init__()
        hidden = reduced_channels("PositionAttention", channels, reduction)
        if chunk_size is not None:
            check_positive("PositionAttention", "chunk_size", chunk_size)
        self.channels = channels
        self.reduction = reduction
        self.chunk_size = chunk_size
        self.query_conv, self.key_conv, self.value_conv = query_key_value_convs(channels, hidden)
        self.gamma = nn.Parameter(torch.zeros(1))

    def _query_key(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Queries and keys as ``(B, N, d)``."""
        return self.query_conv(x).flatten(2).transpose(1, 2), self.key_conv(x).flatten(2).transpose(1, 2)

    def attend(self, x: Tensor) -> Tensor:
        """The attention output ``out`` before the residual, ``(B, C, H, W)``."""
        check_input("PositionAttention", x, self.channels, self)
        b, c, h, w = x.shape
        q, k = self._query_key(x)
        out = softmax_attention(q, k, self.value_conv(x).flatten(2), self.chunk_size)  # (B, C, N)
        return out.reshape(b, c, h, w)

    def forward(self, x: Tensor) -> Tensor:
        check_input("PositionAttention", x, self.channels, self)
        q, k = self._query_key(x)
        # The residual is fused into the attention: its backward then keeps no extra N x C tensors.
        y = softmax_attention(q, k, self.value_conv(x).flatten(2), self.chunk_size, self.gamma, x.flatten(2))
        return y.reshape(x.shape)

    @torch.no_grad()
    def attention_weights(self, x: Tensor, queries: list[tuple[int, int]] | None = None) -> dict[str, Tensor]:
        """``{"position": (B, Q, H, W)}``: the softmax rows of the query positions ``queries``.

        ``queries`` is a list of ``(row, column)`` positions; ``None`` means all N positions in
        row-major order (``Q = N``: this does build the N x N map). Each row sums to 1.
        """
        check_input("PositionAttention", x, self.channels, self)
        b, _, h, w = x.shape
        q, k = self._query_key(x)
        q = query_rows("PositionAttention", q, queries, h, w)
        dtype = torch.promote_types(q.dtype, torch.float32)
        with no_autocast(x.device.type):
            scores = q.to(dtype) @ k.to(dtype).transpose(1, 2)
        return {"position": torch.softmax(scores, dim=-1).reshape(b, -1, h, w)}

    @torch.no_grad()
    def attention_maps(self, x: Tensor, points: Sequence[tuple[int, int]] = ()) -> list[AttentionMap]:
        """``pam_q{i}``: the softmax row of query cell ``points[i]`` over the ``(H, W)`` map
        (default: the centre cell); ``x`` is one feature map ``(1, C, H, W)``."""
        cells = query_cells("PositionAttention", x, points)
        position = self.attention_weights(x, queries=cells)["position"][0]  # (Q, H, W)
        return [AttentionMap(f"pam_q{i}", f"PAM: attention of query {p}", to_numpy(position[i]), point=p)
                for i, p in enumerate(cells)]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reduction={self.reduction}, chunk_size={self.chunk_size}"
