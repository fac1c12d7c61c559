"""Expectation-maximisation attention unit (EMANet): features rebuilt from a few bases found by EM.

Paper: Li, Zhong, Wu, Yang, Lin, Liu, "Expectation-Maximization Attention Networks for Semantic
Segmentation", ICCV 2019, https://arxiv.org/abs/1907.13426 ; the code followed is mmseg's
``EMAModule`` and the unit around it in ``EMAHead.forward``
(https://github.com/open-mmlab/mmsegmentation, ``mmseg/models/decode_heads/ema_head.py``), the
head of its released ``emanet_r50-d8`` / ``emanet_r101-d8`` checkpoints.

``f = W_mid x`` (1x1 conv with bias, frozen: ``requires_grad=False``, as mmseg) maps the
non-negative input to all signs. Starting from the K stored bases ``mu`` (``C x K``, unit columns),
``num_stages`` EM iterations run without gradient: E-step ``z_nk = softmax_k(f_n . mu_k)``
(the responsibilities), M-step ``mu_k = sum_n z_nk f_n / sum_n z_nk``, then each base is
l2-normalised. The features are rebuilt as ``f'_n = sum_k z_nk mu_k`` with the last ``z`` and
``mu``, and ``z = ReLU(x + BN(W_out ReLU(f')))`` (``W_out`` a 1x1 conv without bias).

In training, the bases found are averaged over the batch (and over processes when
``torch.distributed`` is initialised), l2-normalised, and the stored bases move towards them as a
moving average: ``mu <- (1 - momentum) mu + momentum mu_new``. They are a buffer (``bases``),
initialised normal(0, sqrt(2 / K)) and l2-normalised per base.

As in mmseg, the rebuilt features carry no gradient (the EM runs under ``no_grad``): the gradient
reaches ``x`` through the residual only, and ``W_mid`` gets none. The unit is not the identity at
initialisation (``W_out``'s BN starts at weight 1).

Parameter names are mmseg's: ``ema_mid_conv.conv.*``, ``ema_out_conv.conv.weight``,
``ema_out_conv.bn.*``; the bases are ``bases`` here and ``ema_module.bases`` in ``EMAHead``.

Differences from the official code (values are the same):

- The EM iterations and the reconstruction run in fp32 even under autocast or for low-precision
  inputs; the rebuilt features are returned in the dtype of ``f``.
- A training step on an empty batch leaves the bases unchanged (the official batch mean is NaN).
- The norm is ``nn.BatchNorm2d`` where mmseg's recipe uses SyncBN.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import (AttentionMap, check_input, check_positive, conv_module, no_autocast, query_cells,
                      strongest_channel_maps)

__all__ = ["EMAUnit"]


class EMAUnit(nn.Module):
    """EMANet's expectation-maximisation attention unit: ``(B, C, H, W) -> (B, C, H, W)``.

    Args:
        channels: input and output channels C (mmseg's ``ema_channels``, 512).
        num_bases: number of bases K (64).
        num_stages: EM iterations per forward pass (3).
        momentum: weight of the new bases in the moving average of training (0.1).
    """

    query_maps_drawn = ("ema_q",)
    has_softmax = True
    float32_weights = ("responsibility",)

    def __init__(self, channels: int, num_bases: int = 64, num_stages: int = 3, momentum: float = 0.1) -> None:
        super().__init__()
        check_positive("EMAUnit", "channels", channels)
        check_positive("EMAUnit", "num_bases", num_bases)
        check_positive("EMAUnit", "num_stages", num_stages)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"EMAUnit: momentum must be in [0, 1], got {momentum!r}")
        self.channels = channels
        self.num_bases = num_bases
        self.num_stages = num_stages
        self.momentum = momentum
        bases = torch.empty(1, channels, num_bases).normal_(0, math.sqrt(2.0 / num_bases))
        self.register_buffer("bases", F.normalize(bases, dim=1, p=2))
        self.ema_mid_conv = conv_module(channels, channels)
        self.ema_mid_conv.requires_grad_(False)  # the EM carries no gradient back to it
        self.ema_out_conv = conv_module(channels, channels, norm=True)

    def _expectation_maximisation(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """Responsibilities ``z`` ``(B, N, K)`` and bases ``mu`` ``(B, C, K)`` after the EM iterations (fp32)."""
        dtype = torch.promote_types(feats.dtype, torch.float32)
        with torch.no_grad(), no_autocast(feats.device.type):
            feats = feats.flatten(2).to(dtype)
            bases = self.bases.to(dtype).repeat(feats.shape[0], 1, 1)
            for _ in range(self.num_stages):
                responsibility = torch.softmax(torch.einsum("bcn,bck->bnk", feats, bases), dim=2)
                normed = F.normalize(responsibility, dim=1, p=1)
                bases = F.normalize(torch.einsum("bcn,bnk->bck", feats, normed), dim=1, p=2)
        return responsibility, bases

    @torch.no_grad()
    def _update_bases(self, bases: Tensor) -> None:
        if bases.shape[0] == 0:
            return
        bases = bases.mean(dim=0, keepdim=True)
        if dist.is_available() and dist.is_initialized():
            bases = bases / dist.get_world_size()
            dist.all_reduce(bases, op=dist.ReduceOp.SUM)
        bases = F.normalize(bases, dim=1, p=2)
        self.bases.copy_((1 - self.momentum) * self.bases + self.momentum * bases.to(self.bases.dtype))

    def forward(self, x: Tensor) -> Tensor:
        check_input("EMAUnit", x, self.channels, self)
        feats = self.ema_mid_conv(x)
        responsibility, bases = self._expectation_maximisation(feats)
        with no_autocast(x.device.type):
            recon = torch.einsum("bck,bnk->bcn", bases, responsibility)
        if self.training:
            self._update_bases(bases)
        recon = F.relu(recon.to(feats.dtype).reshape(feats.shape))
        return F.relu(x + self.ema_out_conv(recon))

    @torch.no_grad()
    def attention_weights(self, x: Tensor) -> dict[str, Tensor]:
        """``{"responsibility": (B, K, H, W)}``: each base's share ``z_nk`` of every position after the
        last E-step (they sum to 1 over K), computed without updating the bases."""
        check_input("EMAUnit", x, self.channels, self)
        responsibility, _ = self._expectation_maximisation(self.ema_mid_conv(x))
        return {"responsibility": responsibility.transpose(1, 2).reshape(x.shape[0], self.num_bases, *x.shape[-2:])}

    @torch.no_grad()
    def attention_maps(self, x: Tensor, points: Sequence[tuple[int, int]] = ()) -> list[AttentionMap]:
        """Per query point of the single feature map ``x`` ``(1, C, H, W)``: the responsibility map of
        the base that takes the largest share of that point (default point: the centre)."""
        points = query_cells("EMAUnit", x, points)
        weights = self.attention_weights(x)["responsibility"][0]  # (K, H, W)
        return strongest_channel_maps("ema_q", "EMA: base {k}, the most responsible for {p}", weights, points)

    def convert_official_state_dict(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The unit's part of an mmseg ``EMAHead`` state dict: ``ema_module.bases`` -> ``bases``, the
        convs' names as they are."""
        return {("bases" if k == "ema_module.bases" else k): v for k, v in state_dict.items()}

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, num_bases={self.num_bases}, num_stages={self.num_stages}, "
            f"momentum={self.momentum}"
        )
