"""Any registered attention module as a segmentation head, to compare mechanisms on one network.

Not a paper's network: the dilated-FCN baseline (``fcn.py``) with an attention module between its
reduction conv and its classifier, so BAM, PSA, SGE, CBAM, ... (papers in ``visattn.attention``)
can be compared as heads against FCN (the same head without attention).
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ...attention import create_attention
from ..registry import register_model
from .base import Segmentor, build_segmentor, classifier, conv_bn_act, head_width, on_last_map

__all__ = ["AttentionHead", "attnet"]


class AttentionHead(nn.Module):
    """Any registered attention module as a head: ``reduce -> attention -> classifier``.

    ``reduce``: 3x3 conv + BN + ReLU to ``in // 4``; ``attention``: ``create_attention(name, in // 4,
    **attention_kwargs)``; ``classifier``: Dropout2d(0.1) + 1x1 conv.
    ``[..., (B, in_channels, h, w)] -> (B, num_classes, h, w)``.

    Args:
        in_channels: channels of the last feature map.
        num_classes: output channels.
        attention: a name from ``visattn.list_attentions()``.
        channels: width around the attention module (``in_channels // 4``).
        dropout: Dropout2d probability (0.1).
        **attention_kwargs: passed to the attention module.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        attention: str = "pam",
        channels: int | None = None,
        dropout: float = 0.1,
        **attention_kwargs,
    ) -> None:
        super().__init__()
        channels = head_width(channels, in_channels // 4, "AttentionHead")
        self.attention_name = attention
        self.reduce = conv_bn_act(in_channels, channels)
        self.attention = create_attention(attention, channels, **attention_kwargs)
        self.classifier = classifier(channels, num_classes, dropout)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return self.classifier(self.attention(self.reduce(features[-1])))

    def extra_repr(self) -> str:
        return f"attention={self.attention_name!r}"


@register_model
def attnet(num_classes: int = 19, **kwargs) -> Segmentor:
    """Attention head: ``reduce -> attention -> classifier`` with any name of ``visattn.list_attentions()``.

    Head arguments: ``attention`` (``"pam"``), ``channels``, ``dropout`` and the attention module's
    arguments (:class:`AttentionHead`); the others are :func:`build_segmentor`'s
    (``encoder="resnet50"``, ``output_stride=8``, ``aux=False``, ...).
    """
    return build_segmentor(on_last_map(AttentionHead), num_classes=num_classes, **kwargs)
