"""Disentangled non-local block (DNLNet): a whitened pairwise term plus a unary term, exact and
without the N x N attention map.

Paper: Yin, Yao, Cao, Li, Zhang, Lin, Hu, "Disentangled Non-Local Neural Networks", ECCV 2020,
https://arxiv.org/abs/2006.06668 ; the code followed is mmseg's ``DisentangledNonLocal2d``
(https://github.com/open-mmlab/mmsegmentation, ``mmseg/models/decode_heads/dnl_head.py``, on
mmcv's ``NonLocal2d``), the block of mmseg's ``DNLHead`` and of its released ``dnl_r50-d8`` /
``dnl_r101-d8`` checkpoints.

With the embeddings of :class:`~visattn.attention.non_local.NonLocal2d` (``theta``, ``phi``, ``g``:
1x1 convs with bias, C -> C' = ``max(C // reduction, 1)``), whitened by subtracting their means
over the N = H * W positions (``theta~``, ``phi~``):
pairwise ``f_ij = softmax_j(theta~_i . phi~_j / (sqrt(C') * T))`` (``use_scale=False``: no
``sqrt(C')``; ``T`` the ``temperature``), unary ``u_j = softmax_j(W_m x_j)`` (``conv_mask``, a 1x1
conv C -> 1 with bias), ``z_i = x_i + conv_out(sum_j f_ij g_j + sum_j u_j g_j)``.

Initialisation as mmcv's ``NonLocal2d`` (identity at initialisation: ``conv_out`` or its norm
starts at zero); ``conv_mask`` keeps PyTorch's default initialisation, as mmseg.

Parameter names are mmseg's: ``g.conv.*``, ``theta.conv.*``, ``phi.conv.*``, ``conv_out.conv.*``
(+ ``conv_out.bn.*`` with a norm layer), ``conv_mask.*``. Released weights load as they are.

Differences from the official code (values are the same):

- The official code builds the ``B x N x N`` pairwise weights and keeps them for backward. Here
  the exact chunked attention of Non-local computes each softmax row completely, a bounded number
  of rows at a time, and the backward pass recomputes them, so neither pass holds N x N.
- ``1 / (sqrt(C') * T)`` multiplies the whitened ``theta`` before the product instead of dividing
  the scores twice after it (equal up to rounding).
- Softmaxes and the products around them run in fp32 even under autocast or for low-precision
  inputs; the result is returned in the dtype of ``g``.
- Only the embedded Gaussian form without ``sub_sample`` (the one mmseg's network uses).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ._common import AttentionMap, check_input, no_autocast, query_cells, query_rows, to_numpy
from ._functional import softmax_attention
from .non_local import NonLocal2d

__all__ = ["DisentangledNonLocal2d"]

class DisentangledNonLocal2d(NonLocal2d):
    """Disentangled non-local block, embedded Gaussian: ``(B, C, H, W) -> (B, C, H, W)``.

    Args:
        channels: input and output channels C.
        reduction: the embeddings have ``max(C // reduction, 1)`` channels (2).
        use_scale: divide the pairwise scores by ``sqrt(C // reduction)`` (True).
        temperature: divides the pairwise scores (0.05).
        norm_layer: norm after ``conv_out`` (a class called with C, e.g. ``nn.BatchNorm2d`` as
            mmseg's head); ``None``: no norm, ``conv_out`` has a bias.
        chunk_size: query positions processed at once; ``None`` chooses it (any value gives the
            same result).
    """

    identity_at_init = True
    maps_drawn = ("dnl_unary",)
    query_maps_drawn = ("dnl_q",)
    has_softmax = True
    float32_weights = ("pairwise", "unary")

    def __init__(
        self,
        channels: int,
        reduction: int = 2,
        use_scale: bool = True,
        temperature: float = 0.05,
        norm_layer: Callable[[int], nn.Module] | None = None,
        chunk_size: int | None = None,
    ) -> None:
        if not temperature > 0:
            raise ValueError(f"DisentangledNonLocal2d: temperature must be positive, got {temperature!r}")
        super().__init__(channels, reduction, use_scale, norm_layer=norm_layer, chunk_size=chunk_size)
        self.temperature = temperature
        self.conv_mask = nn.Conv2d(channels, 1, 1)

    def _whitened(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Scaled whitened queries ``(B, N, C')`` and whitened keys ``(B, N, C')``, both at least fp32."""
        check_input("DisentangledNonLocal2d", x, self.channels, self)
        # In the parameters' precision even under autocast: the temperature multiplies the
        # embeddings' rounding errors by 1 / T (20) in the scores.
        with no_autocast(x.device.type):
            x = x.to(self.theta.conv.weight.dtype)
            theta, phi = (branch(x).flatten(2).transpose(1, 2) for branch in (self.theta, self.phi))
        dtype = torch.promote_types(theta.dtype, torch.float32)
        theta, phi = theta.to(dtype), phi.to(dtype)
        scale = (self.hidden_channels**-0.5 if self.use_scale else 1.0) / self.temperature
        # whitened in place, as mmseg: no backward needs the embeddings before it
        return theta.sub_(theta.mean(1, keepdim=True)).mul_(scale), phi.sub_(phi.mean(1, keepdim=True))

    def _unary(self, x: Tensor) -> Tensor:
        """The unary weights ``u`` ``(B, N)``, at least fp32."""
        logits = self.conv_mask(x).flatten(1)
        with no_autocast(x.device.type):
            return torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        theta, phi = self._whitened(x)
        b, _, h, w = x.shape
        g = self._values(x)
        # the unary term first: its backward then runs after the pairwise one has freed its tensors
        unary = self._unary(x)
        with no_autocast(x.device.type):
            unary = torch.einsum("bcn,bn->bc", g.to(unary.dtype), unary)
        y = softmax_attention(theta, phi, g, self.chunk_size, chunk_bytes=self.chunk_bytes)
        y = y + unary.to(y.dtype)[:, :, None]
        return x + self.conv_out(y.reshape(b, self.hidden_channels, h, w))

    @torch.no_grad()
    def attention_weights(self, x: Tensor, queries: list[tuple[int, int]] | None = None) -> dict[str, Tensor]:
        """``{"pairwise": (B, Q, H, W), "unary": (B, H, W)}``: the pairwise softmax rows of the query
        positions ``queries`` (``(row, column)``; ``None``: all N, row-major, building the N x N map)
        and the unary weights. Each row, and the unary map, sums to 1."""
        theta, phi = self._whitened(x)
        b, _, h, w = x.shape
        theta = query_rows("DisentangledNonLocal2d", theta, queries, h, w)
        with no_autocast(x.device.type):
            pairwise = torch.softmax(theta @ phi.transpose(1, 2), dim=-1)
        return {"pairwise": pairwise.reshape(b, -1, h, w), "unary": self._unary(x).reshape(b, h, w)}

    @torch.no_grad()
    def attention_maps(self, x: Tensor, points: Sequence[tuple[int, int]] = ()) -> list[AttentionMap]:
        """One pairwise map per query point of the single feature map ``x`` ``(1, C, H, W)`` (default:
        the centre), then the unary map (the same for every query)."""
        points = query_cells("DisentangledNonLocal2d", x, points)
        weights = self.attention_weights(x, points)
        maps = [
            AttentionMap(f"dnl_q{i}", f"DNL: pairwise attention of query {p}", to_numpy(weights["pairwise"][0, i]), point=p)
            for i, p in enumerate(points)
        ]
        return [*maps, AttentionMap("dnl_unary", "DNL: unary attention", to_numpy(weights["unary"][0]))]

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, reduction={self.reduction}, use_scale={self.use_scale}, "
            f"temperature={self.temperature}, chunk_size={self.chunk_size}"
        )
