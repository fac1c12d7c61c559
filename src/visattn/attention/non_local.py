"""Non-local block (embedded Gaussian), exact and without the N x N attention map.

Paper: Wang, Girshick, Gupta, He, "Non-local Neural Networks", CVPR 2018,
https://arxiv.org/abs/1711.07971 ; the code followed is mmcv's ``NonLocal2d``
(https://github.com/open-mmlab/mmcv, ``mmcv/cnn/bricks/non_local.py``), the block of mmseg's
``NLHead`` and of its released ``nonlocal_r50-d8`` / ``nonlocal_r101-d8`` checkpoints.

``theta = W_theta x``, ``phi = W_phi x``, ``g = W_g x`` (1x1 convs with bias, C -> C' =
``max(C // reduction, 1)``); ``f_ij = softmax_j(theta_i . phi_j / sqrt(C'))`` over all N = H * W
positions (``use_scale=False``: no ``1 / sqrt(C')``); ``y_i = sum_j f_ij g_j``;
``z = x + conv_out(y)``, ``conv_out`` a 1x1 conv C' -> C. With ``sub_sample=True``, ``phi`` and
``g`` are max-pooled 2x2, so the N queries attend over the ``(H // 2) * (W // 2)`` pooled keys.

Without a norm layer ``conv_out`` has a bias and is zero-initialised; with one (``norm_layer``,
e.g. ``nn.BatchNorm2d`` as mmseg's head, which uses SyncBN) the conv has no bias and the norm's
weight and bias start at 0. Either way the block is the identity at initialisation. ``g``,
``theta``, ``phi`` start from normal(0, 0.01) weights and zero biases; a normed ``conv_out.conv``
from Kaiming-normal (fan-out, ReLU gain), as mmcv's ``ConvModule``.

Parameter names are mmcv's ``ConvModule`` ones: ``g.conv.*``, ``theta.conv.*``, ``phi.conv.*``,
``conv_out.conv.*`` (+ ``conv_out.bn.*`` with a norm layer); with ``sub_sample`` the pooled
branches are ``g.0.conv.*`` and ``phi.0.conv.*``. Released weights load as they are.

Differences from the official code (values are the same):

- The official code builds the ``B x N x N`` pairwise weights and keeps them for backward. Here
  the exact chunked attention PAM uses computes each softmax row completely, a bounded number of
  rows at a time, and the backward pass recomputes them, so neither pass holds N x N.
- The ``1 / sqrt(C')`` scale multiplies ``theta`` before the product instead of dividing the
  scores after it (equal up to rounding).
- The softmax and the products around it run in fp32 even under bf16/fp16 autocast or for
  low-precision inputs; the result is returned in the dtype of ``g``.
- On CUDA (eager mode), PyTorch's fused flash or memory-efficient attention kernel computes the
  same values where one accepts the inputs (``theta``, ``phi`` and ``g`` have equal widths), with
  energies and softmax in fp32 accumulators for fp16/bf16 inputs too; elsewhere the chunked path
  runs (see ``visattn.attention._functional``).
- Without ``sub_sample``, ``theta``, ``phi`` and ``g`` are computed from their convs' weights as
  batched matmuls (the same values; less peak CPU memory in training, see
  ``docs/benchmarks.md``), so hooks registered on those three conv modules do not run.
- Only the embedded Gaussian form (mmcv's default and the one mmseg's networks use); mmcv also
  offers ``gaussian``, ``dot_product`` and ``concatenation``.
- The norm is given as a layer class instead of a config dict; its module is always named
  ``bn`` (mmcv's name for BN and SyncBN, the norms its checkpoints use).
- ``sub_sample=True`` on a map with fewer than 2 rows or columns raises ``ValueError`` (the
  official max-pool fails there with a size error).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import (AttentionMap, check_input, check_positive, conv_module, no_autocast, query_cells, query_rows,
                      to_numpy)
from ._functional import softmax_attention

__all__ = ["NonLocal2d"]


def conv1x1_as_matmul(conv: nn.Conv2d, x: Tensor, rows: bool) -> Tensor:
    """The 1x1 ``conv`` (with bias) on ``x`` ``(B, C, H, W)`` as one batched matmul on x's ``(B, C, N)``
    view: ``(B, N, C')`` if ``rows`` (row-major, as the chunked attention takes its queries: no
    copy), else ``(B, C', N)``. The same values as the conv; on the CPU its backward needs no
    reordered copy of ``x``, which mkldnn's convolution makes once per branch."""
    cols = x.flatten(2)
    weight = conv.weight.flatten(1)
    if rows:
        return torch.baddbmm(conv.bias, cols.transpose(1, 2), weight.t().expand(x.shape[0], -1, -1))
    return torch.baddbmm(conv.bias[:, None], weight.expand(x.shape[0], -1, -1), cols)


class NonLocal2d(nn.Module):
    """Non-local block, embedded Gaussian: ``(B, C, H, W) -> (B, C, H, W)``.

    Args:
        channels: input and output channels C.
        reduction: the embeddings have ``max(C // reduction, 1)`` channels (2 in the paper).
        use_scale: divide the pairwise scores by ``sqrt(C // reduction)`` (as mmcv and mmseg).
        sub_sample: max-pool ``phi`` and ``g`` 2x2 (the paper's subsampling trick); needs
            H, W >= 2.
        norm_layer: norm after ``conv_out`` (a class called with C, e.g. ``nn.BatchNorm2d``);
            ``None``: no norm, ``conv_out`` has a bias.
        chunk_size: query positions processed at once. ``None`` (default) chooses it so that one
            chunk's probabilities take at most 5 MiB per batch item; any value
            gives the same result.
    """

    identity_at_init = True
    query_maps_drawn = ("nonlocal_q",)
    # Smaller chunks than PAM's: the residual comes after conv_out, so it cannot be fused into the
    # attention as PAM's is, and the training step keeps more tensors alive beside the chunk buffers.
    # 5 MiB chunks hold its training peak at 1/8 of the N x N formulation (C=512, 64x128) at no
    # measurable cost in time (8 MiB: 1/7.7).
    chunk_bytes = 5 * 2**20
    has_softmax = True
    float32_weights = ("position",)

    def __init__(
        self,
        channels: int,
        reduction: int = 2,
        use_scale: bool = True,
        sub_sample: bool = False,
        norm_layer: Callable[[int], nn.Module] | None = None,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        check_positive("NonLocal2d", "channels", channels)
        check_positive("NonLocal2d", "reduction", reduction)
        if chunk_size is not None:
            check_positive("NonLocal2d", "chunk_size", chunk_size)
        hidden = max(channels // reduction, 1)  # mmcv's rule: C < reduction keeps one channel
        self.channels = channels
        self.reduction = reduction
        self.hidden_channels = hidden
        self.use_scale = use_scale
        self.sub_sample = sub_sample
        self.norm_layer = norm_layer
        self.chunk_size = chunk_size
        # initialised below, as mmcv's NonLocal2d re-initialises its ConvModules
        self.g = conv_module(channels, hidden, init=False)
        self.theta = conv_module(channels, hidden, init=False)
        self.phi = conv_module(channels, hidden, init=False)
        self.conv_out = conv_module(hidden, channels, norm=norm_layer or False, init=False)
        self._init_weights()
        if sub_sample:
            self.g = nn.Sequential(self.g, nn.MaxPool2d(2))
            self.phi = nn.Sequential(self.phi, nn.MaxPool2d(2))

    @torch.no_grad()
    def _init_weights(self) -> None:
        for branch in (self.g, self.theta, self.phi):
            nn.init.normal_(branch.conv.weight, std=0.01)
            nn.init.zeros_(branch.conv.bias)
        if self.norm_layer is None:
            nn.init.zeros_(self.conv_out.conv.weight)
            nn.init.zeros_(self.conv_out.conv.bias)
        else:
            nn.init.kaiming_normal_(self.conv_out.conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(self.conv_out.bn.weight)
            nn.init.zeros_(self.conv_out.bn.bias)

    @property
    def _scale(self) -> float:
        """The factor of the pairwise scores."""
        return self.hidden_channels**-0.5 if self.use_scale else 1.0

    def _embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Queries ``theta`` ``(B, N, C')`` and keys ``phi`` ``(B, M, C')``, unscaled."""
        check_input("NonLocal2d", x, self.channels, self)
        if self.sub_sample:
            if min(x.shape[-2:]) < 2:
                raise ValueError(f"NonLocal2d: sub_sample needs H, W >= 2, got shape {tuple(x.shape)}")
            return self.theta(x).flatten(2).transpose(1, 2), self.phi(x).flatten(2).transpose(1, 2)
        return conv1x1_as_matmul(self.theta.conv, x, rows=True), conv1x1_as_matmul(self.phi.conv, x, rows=True)

    def _values(self, x: Tensor) -> Tensor:
        """``g`` ``(B, C', M)``."""
        return self.g(x).flatten(2) if self.sub_sample else conv1x1_as_matmul(self.g.conv, x, rows=False)

    def forward(self, x: Tensor) -> Tensor:
        theta, phi = self._embed(x)
        b, _, h, w = x.shape
        y = softmax_attention(theta, phi, self._values(x), self.chunk_size, chunk_bytes=self.chunk_bytes,
                              scale=self._scale)
        return x + self.conv_out(y.reshape(b, self.hidden_channels, h, w))

    @torch.no_grad()
    def attention_weights(self, x: Tensor, queries: list[tuple[int, int]] | None = None) -> dict[str, Tensor]:
        """``{"position": (B, Q, H', W')}``: the softmax rows ``f_i`` of the query positions ``queries``.

        ``H' x W'`` is the key grid: ``H x W``, or ``(H // 2) x (W // 2)`` with ``sub_sample``.
        ``queries`` is a list of ``(row, column)`` positions; ``None`` means all N positions in
        row-major order (``Q = N``: this does build the N x M map). Each row sums to 1.
        """
        theta, phi = self._embed(x)
        b, _, h, w = x.shape
        theta = query_rows("NonLocal2d", theta, queries, h, w)
        key_grid = (h // 2, w // 2) if self.sub_sample else (h, w)
        theta = theta.to(torch.promote_types(theta.dtype, torch.float32))
        if self.use_scale:
            theta = theta * self._scale
        with no_autocast(x.device.type):
            scores = theta @ phi.to(theta.dtype).transpose(1, 2)
        return {"position": torch.softmax(scores, dim=-1).reshape(b, -1, *key_grid)}

    @torch.no_grad()
    def attention_maps(self, x: Tensor, points: Sequence[tuple[int, int]] = ()) -> list[AttentionMap]:
        """One ``(H, W)`` map per query point of the single feature map ``x`` ``(1, C, H, W)``.

        ``points`` are feature cells ``(row, column)`` (default: the centre). With ``sub_sample``
        each pooled key's weight covers its 2 x 2 window (a last odd row or column, which no
        window covers, is 0).
        """
        points = query_cells("NonLocal2d", x, points)
        h, w = x.shape[-2:]
        rows = self.attention_weights(x, points)["position"][0]  # (Q, H', W')
        if self.sub_sample:
            rows = F.pad(rows.repeat_interleave(2, 1).repeat_interleave(2, 2), (0, w % 2, 0, h % 2))
        return [
            AttentionMap(f"nonlocal_q{i}", f"Non-local: attention of query {p}", to_numpy(rows[i]), point=p)
            for i, p in enumerate(points)
        ]

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, reduction={self.reduction}, use_scale={self.use_scale}, "
            f"sub_sample={self.sub_sample}, chunk_size={self.chunk_size}"
        )
