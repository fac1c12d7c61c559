"""Asymmetric Non-local Network: mmseg's ``ANNHead`` (AFNB on stages 3+4, APNB) on a dilated ResNet.

Paper: Zhu, Xu, Bai, Huang, Bai, "Asymmetric Non-local Neural Networks for Semantic Segmentation",
ICCV 2019, https://arxiv.org/abs/1908.07678 ; the network is mmsegmentation's
(``mmseg/models/decode_heads/ann_head.py``, ``mmseg/models/utils/self_attention_block.py``,
``configs/_base_/models/ann_r50-d8.py``).

The asymmetric non-local block: queries at every position of one map, keys and values pooled to
a few positions by a pyramid (``PPMConcat``: adaptive average pooling to 1, 3, 6 and 8 squared,
M = 110 positions), so the attention is ``N x M`` instead of ``N x N``:
``context_i = sum_j softmax_j(q_i . k_j / sqrt(c)) v_j``, ``q = query_project(x)`` (1x1
ConvModule), ``k = PPM(key_project(y))`` (1x1 ConvModule), ``v = PPM(value_project(y))`` (1x1
conv), then ``out_project`` (1x1 conv, zero at initialisation). ``ANNHead``:

- ``fusion`` (AFNB): queries from stage 4 (2048), keys and values from stage 3 (1024), projected to
  256; ``bottleneck`` = 1x1 ConvModule without ReLU on concat(context, stage 4) -> 2048;
- Dropout2d(0.1) -> ``bottleneck`` (3x3 ConvModule to 512);
- ``context`` (APNB): the same block on the 512-channel map with one projection for queries and
  keys (``key_project``), ``bottleneck`` = 1x1 ConvModule on concat(context, input) -> 512;
- Dropout2d(0.1) (the same module again) -> ``conv_seg``.

The recipe adds mmseg's auxiliary FCN head on stage 3 (256 wide, loss weight 0.4) and upsamples
the logits with ``align_corners=False``. Module names are mmseg's, so a checkpoint's
``decode_head.*`` loads into the head as it is but for APNB's shared projection, which mmseg's
checkpoints hold twice (``key_project`` and ``query_project``) and visattn once
(``convert_official_state_dict`` renames a whole ``ann_r*-d8`` checkpoint and drops the copy).

Differences from the official code: the attention is
:func:`~visattn.attention._functional.softmax_attention` (exact; its backward recomputes the
probabilities instead of storing the ``N x M`` map and its permuted copies), with the
``1/sqrt(c)`` scale applied to the queries rather than to the scores (equal up to rounding);
``query_scales`` other than 1 are refused, since mmseg's block reshapes a downsampled query's
context to the full size and fails on them; mmseg's SyncBN is ``nn.BatchNorm2d``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ...attention._common import AttentionMap, conv_module, query_cells, query_rows, to_numpy
from ...attention._functional import softmax_attention
from ._mmseg import DecodeHead, ExportableAdaptiveAvgPool2d, pooling_matrix, register_mmseg_builders

__all__ = ["PPMConcat", "AsymmetricNonLocal", "AFNB", "APNB", "ANNHead", "ann", "ann_r50_d8", "ann_r101_d8"]


class PPMConcat(nn.ModuleList):
    """``(B, C, H, W) -> (B, C, sum s^2)``: adaptive average pooling to each ``s x s``, flattened and
    concatenated (exportable to ONNX at any input size)."""

    def __init__(self, pool_scales: Sequence[int] = (1, 3, 6, 8)) -> None:
        if not pool_scales or any(s < 1 for s in pool_scales):
            raise ValueError(f"PPMConcat: pool_scales must be positive sizes, got {tuple(pool_scales)}")
        super().__init__(ExportableAdaptiveAvgPool2d(s) for s in pool_scales)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([pool(x).flatten(2) for pool in self], 2)


class AsymmetricNonLocal(nn.Module):
    """Attention of every position of ``query_feats`` over the pyramid-pooled positions of ``key_feats``.

    ``(B, C_q, H, W), (B, C_k, H', W') -> (B, out_channels, H, W)``. Keys as mmseg's ANN
    ``SelfAttentionBlock``: ``query_project``, ``key_project`` (ConvModules; with
    ``share_key_query`` only ``key_project``, which mmseg also saves as ``query_project``),
    ``value_project``, ``out_project`` (1x1 convs with bias, ``out_project`` zero at
    initialisation), ``key_downsample`` (the pyramid, no parameters).
    """

    def __init__(
        self,
        key_in_channels: int,
        query_in_channels: int,
        channels: int,
        out_channels: int,
        share_key_query: bool,
        key_pool_scales: Sequence[int] = (1, 3, 6, 8),
    ) -> None:
        super().__init__()
        if share_key_query and key_in_channels != query_in_channels:
            raise ValueError(f"AsymmetricNonLocal: a shared key/query projection needs equal inputs, "
                             f"got {key_in_channels} and {query_in_channels}")
        self.channels = channels
        self.key_project = conv_module(key_in_channels, channels, 1, norm=True, act=True)
        # shared: one module under one name, so the state dict holds each tensor once (safetensors)
        self.query_project = (
            None if share_key_query else conv_module(query_in_channels, channels, 1, norm=True, act=True)
        )
        self.value_project = nn.Conv2d(key_in_channels, channels, 1)
        self.out_project = nn.Conv2d(channels, out_channels, 1)
        nn.init.zeros_(self.out_project.weight)  # mmseg's SelfAttentionBlock.init_weights
        nn.init.zeros_(self.out_project.bias)
        self.key_downsample = PPMConcat(key_pool_scales)

    def forward(self, query_feats: Tensor, key_feats: Tensor) -> Tensor:
        b, _, h, w = query_feats.shape
        value = self.key_downsample(self.value_project(key_feats))  # (B, c, M)
        context = softmax_attention(*self._queries_and_keys(query_feats, key_feats), value).view(b, -1, h, w)
        return self.out_project(context)

    def _queries_and_keys(self, query_feats: Tensor, key_feats: Tensor) -> tuple[Tensor, Tensor]:
        """Scaled queries ``(B, N, c)`` and pooled keys ``(B, M, c)``."""
        query_project = self.key_project if self.query_project is None else self.query_project
        query = query_project(query_feats).flatten(2).transpose(1, 2) * self.channels**-0.5
        return query, self.key_downsample(self.key_project(key_feats)).transpose(1, 2)

    def pixel_weights(self, query_feats: Tensor, key_feats: Tensor,
                      queries: Sequence[tuple[int, int]] | None = None) -> Tensor:
        """``(B, Q, H', W')``: the weight each query position (``queries``, ``(row, col)``; all ``N``
        for ``None``) gives each pixel of ``key_feats``. A pooled key or value is the mean of its
        bin, so its softmax weight spreads evenly over the bin: the context is exactly these weights
        times ``value_project(key_feats)``, summed over the pixels, and each map sums to 1."""
        query, key = self._queries_and_keys(query_feats, key_feats)
        query = query_rows("AsymmetricNonLocal", query, queries, *query_feats.shape[-2:])
        weights = (query @ key.transpose(1, 2)).softmax(-1)  # (B, Q, M)
        h, w = key_feats.shape[-2:]
        pixels, start = 0, 0
        for pool in self.key_downsample:
            s = pool.output_size
            level = weights[..., start:start + s * s].unflatten(-1, (s, s))
            pixels = pixels + pooling_matrix(h, s, level).T @ level @ pooling_matrix(w, s, level)
            start += s * s
        return pixels


def _stages(query_scales: Sequence[int], build) -> nn.ModuleList:
    if not query_scales or any(s != 1 for s in query_scales):
        raise ValueError(
            f"ANN: query_scales must be 1s (mmseg's block fails on downsampled queries), got {tuple(query_scales)}"
        )
    return nn.ModuleList(build() for _ in query_scales)


class AFNB(nn.Module):
    """Asymmetric fusion non-local block: stage-4 queries attend to stage-3 keys; ``(low, high) -> high``'s shape."""

    def __init__(
        self, low_in_channels: int, high_in_channels: int, channels: int, out_channels: int,
        query_scales: Sequence[int] = (1,), key_pool_scales: Sequence[int] = (1, 3, 6, 8),
    ) -> None:
        super().__init__()
        self.stages = _stages(query_scales, lambda: AsymmetricNonLocal(
            low_in_channels, high_in_channels, channels, out_channels, False, key_pool_scales))
        self.bottleneck = conv_module(out_channels + high_in_channels, out_channels, 1, norm=True, act=False)

    def forward(self, low_feats: Tensor, high_feats: Tensor) -> Tensor:
        context = torch.stack([stage(high_feats, low_feats) for stage in self.stages]).sum(0)
        return self.bottleneck(torch.cat([context, high_feats], 1))


class APNB(nn.Module):
    """Asymmetric pyramid non-local block: self-attention over pooled keys;
    ``(B, C, H, W) -> (B, out_channels, H, W)``."""

    def __init__(
        self, in_channels: int, channels: int, out_channels: int,
        query_scales: Sequence[int] = (1,), key_pool_scales: Sequence[int] = (1, 3, 6, 8),
    ) -> None:
        super().__init__()
        self.stages = _stages(query_scales, lambda: AsymmetricNonLocal(
            in_channels, in_channels, channels, out_channels, True, key_pool_scales))
        self.bottleneck = conv_module(2 * in_channels, out_channels, 1, norm=True, act=True)

    def forward(self, x: Tensor) -> Tensor:
        context = torch.stack([stage(x, x) for stage in self.stages]).sum(0)
        return self.bottleneck(torch.cat([context, x], 1))

    def attention_weights(self, x: Tensor) -> dict[str, Tensor]:
        """``{"attention": (B, N, H, W)}``: each position's weights over the pixels of ``x``, through
        the pooled keys (:meth:`AsymmetricNonLocal.pixel_weights`, of the first stage)."""
        return {"attention": self.stages[0].pixel_weights(x, x)}

    def attention_maps(self, x: Tensor, points: Sequence[tuple[int, int]] = ()) -> list[AttentionMap]:
        """One ``(H, W)`` map per query cell of ``x`` ``(1, C, H, W)`` (default: the centre): where its
        attention over the pooled keys falls on the image."""
        points = query_cells("APNB", x, points)
        weights = self.stages[0].pixel_weights(x, x, points)[0]
        return [AttentionMap(f"apnb_q{i}", f"APNB: pooled attention of query {p}",
                             to_numpy(weights[i]), point=p) for i, p in enumerate(points)]


class ANNHead(DecodeHead):
    """mmseg's ANN head on ``features[-2]`` (the fusion's keys) and ``features[-1]``: logits
    ``(B, num_classes, h, w)``.

    Args:
        in_channels: channels of stages 3 and 4 ((1024, 2048) for ResNet-50/101).
        num_classes: output channels.
        channels: width after the fusion's bottleneck (512).
        project_channels: width of queries, keys and values (256).
        query_scales: one attention per entry, summed; only 1 ((1,)).
        key_pool_scales: the key pyramid's pooled sizes ((1, 3, 6, 8)).
        dropout: Dropout2d probability (0.1), after the fusion and before ``conv_seg``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        project_channels: int = 256,
        query_scales: Sequence[int] = (1,),
        key_pool_scales: Sequence[int] = (1, 3, 6, 8),
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if channels < 1 or project_channels < 1:
            raise ValueError(
                f"ANNHead: widths must be positive, got channels={channels}, project_channels={project_channels}"
            )
        low, high = in_channels
        self.fusion = AFNB(low, high, project_channels, high, query_scales, key_pool_scales)
        self.bottleneck = conv_module(high, channels, 3, norm=True, act=True)
        self.context = APNB(channels, project_channels, channels, query_scales, key_pool_scales)
        self.add_conv_seg(channels, num_classes)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        out = self.bottleneck(self.dropout(self.fusion(features[-2], features[self.in_index])))
        return self.cls_seg(self.context(out))

    def convert_official_state_dict(self, state_dict: Mapping[str, Tensor], segmentor: nn.Module) -> dict[str, Tensor]:
        """Rename an mmseg ``ann_r*-d8`` checkpoint to the keys of :func:`ann_r50_d8` / ``_r101_d8``
        (``decode_head.*`` -> ``head.*``, same names; see :func:`convert_mmseg_state_dict`), without
        ``decode_head.context.stages.*.query_project.*``, the second name of ``key_project``'s tensors."""
        shared = [n for n, m in self.named_modules() if isinstance(m, AsymmetricNonLocal) and m.query_project is None]
        copies = tuple(f"decode_head.{n}.query_project." for n in shared)
        return super().convert_official_state_dict(
            {k: v for k, v in state_dict.items() if not k.startswith(copies)}, segmentor
        )


ann, ann_r50_d8, ann_r101_d8 = register_mmseg_builders(
    "ann", ANNHead, title="ANN", config="ann", summary="``ANNHead`` on stages 3 and 4",
    build_head=lambda widths, k, **head_kwargs: ANNHead(widths[-2:], k, **head_kwargs),
)
