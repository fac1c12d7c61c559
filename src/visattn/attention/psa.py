"""Pyramid Squeeze Attention (PSA), the building block of EPSANet.

Paper: Zhang, Zu, Lu, Zou, Meng, "EPSANet: An Efficient Pyramid Squeeze Attention Block on
Convolutional Neural Network", ACCV 2022, https://arxiv.org/abs/2105.14447. Official code:
https://github.com/murufeng/EPSANet (``models/epsanet.py`` ``PSAModule``,
``models/SE_weight_module.py``).

PSA replaces the 3x3 conv of a ResNet bottleneck: ``(B, C_in, H, W) -> (B, C_out, H', W')`` with
``H' = ceil(H / stride)``. Branch ``i`` (i = 1..4) is a ``k_i x k_i`` conv (k = 3, 5, 7, 9,
padding ``k // 2``, groups 1, 4, 8, 16, no bias, ``stride``) to ``S = C_out // 4`` channels. One
:class:`SEWeight` shared by all branches gives each a ``(B, S, 1, 1)`` vector; the four vectors are
softmaxed across the branch axis, each branch is scaled by its weight, and the branches are
concatenated in **reverse** order (branch 4 first, branch 1 last) as the official code does (its
loop prepends each branch); released weights depend on that order, so visattn keeps it.

Parameter names equal the official ones (``conv_1`` .. ``conv_4``, ``se.fc1``, ``se.fc2``). Besides
the defaults, any number of branches works (``len(kernel_sizes)`` must equal ``len(conv_groups)``);
invalid combinations raise ``ValueError`` at construction where the official code fails later with
a shape error. The branch softmax runs in fp32 under autocast.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._common import AttentionMap, check_input, check_one_map, check_positive, to_numpy
from .se import SqueezeExcite

__all__ = ["SEWeight", "PyramidSqueezeAttention"]

_NAME = "PyramidSqueezeAttention"


class SEWeight(SqueezeExcite):
    """EPSANet's ``SEWeightModule``: the SE gate without the multiplication,
    ``(B, C, H, W) -> (B, C, 1, 1)`` in (0, 1). Same layers and keys (``fc1``, ``fc2``) as
    :class:`~visattn.attention.se.SqueezeExcite`."""

    def forward(self, x: Tensor) -> Tensor:
        return self.gate(x)


class PyramidSqueezeAttention(nn.Module):
    """PSA: multi-scale grouped convs re-weighted by a softmax over branches.

    ``(B, channels, H, W) -> (B, out_channels, ceil(H / stride), ceil(W / stride))``.

    Args:
        channels: input channels.
        out_channels: output channels (default ``channels``), divisible by the number of branches.
        stride: stride of every branch conv (the bottleneck's stride).
        kernel_sizes: odd kernel size of each branch.
        conv_groups: groups of each branch conv; ``channels`` and ``out_channels // n_branches``
            must be divisible by each.
        reduction: the shared SE's hidden width is ``(out_channels // n_branches) // reduction``.
    """

    maps_drawn = ("psa_branch",)
    has_softmax = True  # its branch weights are cast back to the features' dtype
    output_in_autocast_dtype = True

    def __init__(
        self,
        channels: int,
        out_channels: int | None = None,
        stride: int = 1,
        kernel_sizes: tuple[int, ...] = (3, 5, 7, 9),
        conv_groups: tuple[int, ...] = (1, 4, 8, 16),
        reduction: int = 16,
    ) -> None:
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        check_positive(_NAME, "channels", channels)
        check_positive(_NAME, "out_channels", out_channels)
        check_positive(_NAME, "stride", stride)
        kernel_sizes, conv_groups = tuple(kernel_sizes), tuple(conv_groups)
        if not kernel_sizes or len(kernel_sizes) != len(conv_groups):
            raise ValueError(
                f"{_NAME}: kernel_sizes={kernel_sizes} and conv_groups={conv_groups} must be non-empty "
                f"and of the same length (one per branch)"
            )
        for k in kernel_sizes:
            if check_positive(_NAME, "kernel size", k) % 2 == 0:
                raise ValueError(f"{_NAME}: kernel sizes must be odd (padding k // 2 keeps the size), got {k}")
        n = len(kernel_sizes)
        if out_channels % n:
            raise ValueError(
                f"{_NAME}: out_channels={out_channels} is not divisible by the number of branches {n}"
            )
        split = out_channels // n
        for g in conv_groups:
            check_positive(_NAME, "conv group", g)
            if channels % g or split % g:
                raise ValueError(
                    f"{_NAME}: conv group {g} must divide channels={channels} and the branch width "
                    f"out_channels // {n} = {split}"
                )
        self.channels = channels
        self.out_channels = out_channels
        self.stride = stride
        self.kernel_sizes = kernel_sizes
        self.conv_groups = conv_groups
        self.reduction = reduction
        self.split = split
        for i, (k, g) in enumerate(zip(kernel_sizes, conv_groups), 1):
            self.add_module(
                f"conv_{i}", nn.Conv2d(channels, split, k, stride=stride, padding=k // 2, groups=g, bias=False)
            )
        if split // check_positive(_NAME, "reduction", reduction) < 1:
            raise ValueError(
                f"{_NAME}: reduction={reduction} leaves 0 hidden channels in the shared SE "
                f"(branch width out_channels // {n} = {split}; {split} // {reduction} must be >= 1)"
            )
        self.se = SEWeight(split, reduction)

    def _branches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Branch features and their softmaxed weights, both in REVERSED branch order (n .. 1):
        ``(B, n, S, H', W')`` and ``(B, n, S, 1, 1)``."""
        check_input(_NAME, x, self.channels, self)
        convs = [getattr(self, f"conv_{i}") for i in range(len(self.kernel_sizes), 0, -1)]
        feats = torch.stack([conv(x) for conv in convs], 1)
        b, n, s, h, w = feats.shape
        # One call of the shared SE on all branches at once (it is per-item, per-branch).
        se = self.se(feats.reshape(b * n, s, h, w)).reshape(b, n, s, 1, 1)
        return feats, torch.softmax(se, 1, dtype=torch.float32).to(feats.dtype)

    def forward(self, x: Tensor) -> Tensor:
        feats, weights = self._branches(x)
        # Reversed order already: concatenation puts branch n first, branch 1 last (official).
        return (feats * weights).flatten(1, 2)

    @torch.no_grad()
    def attention_weights(self, x: Tensor) -> dict[str, Tensor]:
        """``{"branch": (B, n, S, 1, 1)}``: the softmaxed weight of branch 1..n in that order
        (``branch[:, 0]`` scales ``conv_1``, whose output is the LAST ``S`` output channels)."""
        return {"branch": self._branches(x)[1].flip(1)}

    @torch.no_grad()
    def attention_maps(self, x: Tensor, points: Sequence[tuple[int, int]] = ()) -> list[AttentionMap]:
        """``psa_branch``: the ``(n, S)`` matrix of branch weights (row ``i``: branch ``i``'s weight of
        each of its channels) for one feature map ``x`` ``(1, C, H, W)``; nothing spatial, no query points."""
        check_one_map(_NAME, x)
        branch = self.attention_weights(x)["branch"][0, :, :, 0, 0]  # (n, S)
        return [AttentionMap("psa_branch", "PSA: branch weight per channel", to_numpy(branch), spatial=False,
                             xlabel="channel in branch", ylabel="branch (kernel)",
                             yticklabels=tuple(f"{i} ({k}x{k})" for i, k in enumerate(self.kernel_sizes)))]

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, out_channels={self.out_channels}, stride={self.stride}, "
            f"kernel_sizes={self.kernel_sizes}, conv_groups={self.conv_groups}, reduction={self.reduction}"
        )
