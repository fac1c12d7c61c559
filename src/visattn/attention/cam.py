"""Channel attention module (CAM) of DANet.

Paper: Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019,
https://arxiv.org/abs/1809.02983 ; official code: https://github.com/junfu1115/DANet
(``encoding/nn/da_att.py``, ``CAM_Module``).

``A = x.view(B, C, N)``, energy ``E = A A^T`` (C x C), attention ``softmax(rowmax(E) - E)``,
``out = attention @ A``, ``y = gamma * out + x`` with ``gamma`` (the only parameter, official key
``gamma``) initialised to 0, so the module is the identity at initialisation.

Note the sign, kept from the official code (released weights depend on it): softmax is
shift-invariant per row, so ``softmax(rowmax(E) - E) == softmax(-E)`` and each channel attends
most to the channels *least* similar to it. This is DANet's behaviour, not a bug introduced here;
code that uses ``softmax(+E)`` is not DANet. It is computed as ``softmax(-E)`` (the same function,
one rounding fewer).

Differences from the official code (values are the same):

- The energy, softmax and output matmul run in fp32 even under bf16/fp16 autocast or for
  low-precision inputs (the result is returned in the input dtype): the energies are sums over
  N products, far beyond what an 8-bit mantissa resolves (~50% output error in bf16).
- Energies are ~N in size, so softmax rows are very peaked and a few % of the attention entries
  are subnormal floats, which make the CPU sgemm several times slower. Entries below the
  smallest normal float (``torch.finfo(float32).tiny``, ~1.2e-38) are set to 0 in the attention
  matrix and in the gradients flowing into it and into the energy; outputs and gradients are
  unchanged except for those sub-1e-38 contributions.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._common import AttentionMap, check_input, check_positive, no_autocast, query_cells, to_numpy

__all__ = ["ChannelAttention"]


def _flush(t: Tensor) -> Tensor:
    return torch.where(t.abs() < torch.finfo(t.dtype).tiny, 0.0, t)


class _FlushSubnormal(torch.autograd.Function):
    """Identity up to subnormals: zeroes them in the value and in the incoming gradient."""

    @staticmethod
    def forward(t: Tensor) -> Tensor:
        return _flush(t)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _flush(grad)


def flush_subnormal(t: Tensor) -> Tensor:
    """``t`` with subnormal entries set to 0; when differentiated, its gradient flushed likewise."""
    if torch.is_grad_enabled() and t.requires_grad and not torch.compiler.is_exporting():
        return _FlushSubnormal.apply(t)
    return _flush(t)  # no gradient to flush (inference, export tracing)


class ChannelAttention(nn.Module):
    """DANet channel attention: ``(B, C, H, W) -> (B, C, H, W)``.

    Args:
        channels: input and output channels C (used to check inputs; CAM has no projections).
    """

    identity_at_init = True
    maps_drawn = ("cam_matrix",)
    query_maps_drawn = ("cam_q",)
    has_softmax = True
    float32_weights = ("channel",)

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = check_positive("ChannelAttention", "channels", channels)
        self.gamma = nn.Parameter(torch.zeros(1))

    def _attention(self, a: Tensor) -> Tensor:
        """``(B, C, C)`` attention of ``a = (B, C, N)`` (fp32, autocast off)."""
        energy = flush_subnormal(torch.bmm(a, a.transpose(1, 2)))  # flushes only the gradient into E
        return flush_subnormal(torch.softmax(-energy, dim=-1))

    def attend(self, x: Tensor) -> Tensor:
        """The attention output ``out`` before the residual, ``(B, C, H, W)``, in ``x``'s dtype."""
        check_input("ChannelAttention", x, self.channels, self)
        a = x.flatten(2).to(torch.promote_types(x.dtype, torch.float32))
        with no_autocast(x.device.type):
            out = torch.bmm(self._attention(a), a)
        return out.reshape(x.shape).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.gamma * self.attend(x) + x

    @torch.no_grad()
    def attention_weights(self, x: Tensor) -> dict[str, Tensor]:
        """``{"channel": (B, C, C)}``: row c is the softmax over the channels channel c attends to."""
        check_input("ChannelAttention", x, self.channels, self)
        a = x.flatten(2).to(torch.promote_types(x.dtype, torch.float32))
        with no_autocast(x.device.type):
            return {"channel": self._attention(a)}

    @torch.no_grad()
    def attention_maps(self, x: Tensor, points: Sequence[tuple[int, int]] = ()) -> list[AttentionMap]:
        """For one feature map ``x`` ``(1, C, H, W)``: ``cam_matrix``, the ``(C, C)`` attention, and
        per query cell ``points[i]`` (default: the centre) ``cam_q{i}``, what CAM gathers into the
        channel ``q`` strongest at that cell: ``sum_c attention[q, c] x[c]``, ``(H, W)``."""
        cells = query_cells("ChannelAttention", x, points)
        att = self.attention_weights(x)["channel"][0]  # (C, C)
        maps = [AttentionMap("cam_matrix", "CAM: channel attention", to_numpy(att), spatial=False,
                             xlabel="key channel", ylabel="query channel")]
        for i, p in enumerate(cells):
            q = int(x[0, :, p[0], p[1]].argmax())
            gathered = torch.einsum("k,khw->hw", att[q].to(x.dtype), x[0])
            maps.append(AttentionMap(f"cam_q{i}", f"CAM: channel {q} (top at {p}) gathers", to_numpy(gathered), point=p))
        return maps

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
