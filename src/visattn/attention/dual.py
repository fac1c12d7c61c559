"""DANet's dual attention (position + channel) as one same-shape plug-in block.

Paper: Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019,
https://arxiv.org/abs/1809.02983 ; official code: https://github.com/junfu1115/DANet

The two DANet branches run in parallel on the same input and their attention outputs are summed:
``y = x + gamma_p * O_pam + gamma_c * O_cam``, i.e. ``pam(x) + cam(x) - x``. Both gammas start at
0, so the block is the identity at initialisation and drops into a pretrained network unchanged.

Difference from DANet: the DANet head (``visattn.models``) runs each branch on its own features
(3x3 conv + BN + ReLU before, and after, each of PAM and CAM, with ``in // 4`` channels) and sums
the two branch outputs after those convolutions. This block has no convolutions: it is the pair
of attention modules on one feature map, for use inside a backbone. Submodules ``pam`` and ``cam``
carry the official parameter names, so ``pam.*`` / ``cam.*`` checkpoints of the two modules load.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .cam import ChannelAttention
from ._common import AttentionMap, check_input
from .pam import PositionAttention

__all__ = ["DualAttention"]


class DualAttention(nn.Module):
    """Parallel PAM + CAM: ``(B, C, H, W) -> (B, C, H, W)``.

    Args:
        channels: input and output channels C.
        reduction: PAM query/key width is ``C // reduction`` (8 in DANet).
        chunk_size: PAM query positions per chunk (``None``: bounded memory, see
            :class:`PositionAttention`).
    """

    identity_at_init = True
    maps_drawn = ("cam_matrix",)
    query_maps_drawn = ("pam_q", "cam_q")
    has_softmax = True
    float32_weights = ("position", "channel")

    def __init__(self, channels: int, reduction: int = 8, chunk_size: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.pam = PositionAttention(channels, reduction, chunk_size)
        self.cam = ChannelAttention(channels)

    def forward(self, x: Tensor) -> Tensor:
        check_input("DualAttention", x, self.channels, self)
        return x + self.pam.gamma * self.pam.attend(x) + self.cam.gamma * self.cam.attend(x)

    @torch.no_grad()
    def attention_weights(self, x: Tensor, queries: list[tuple[int, int]] | None = None) -> dict[str, Tensor]:
        """``{"position": (B, Q, H, W), "channel": (B, C, C)}``; ``queries`` as in PAM."""
        check_input("DualAttention", x, self.channels, self)
        return {**self.pam.attention_weights(x, queries), **self.cam.attention_weights(x)}

    @torch.no_grad()
    def attention_maps(self, x: Tensor, points: Sequence[tuple[int, int]] = ()) -> list[AttentionMap]:
        """PAM's maps (``pam_q{i}``) then CAM's (``cam_matrix``, ``cam_q{i}``), see
        :meth:`PositionAttention.attention_maps` and :meth:`ChannelAttention.attention_maps`."""
        check_input("DualAttention", x, self.channels, self)
        return self.pam.attention_maps(x, points) + self.cam.attention_maps(x, points)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
