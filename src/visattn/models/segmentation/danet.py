"""DANet: position (PAM) and channel (CAM) attention branches on a dilated ResNet.

Paper: Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019,
https://arxiv.org/abs/1809.02983; official code: junfu1115/DANet.

Variants: ``danet_r101_d8`` is the released DANet101, ``resnet101`` with ``multi_grid=(4, 8, 16)``
(see ``encoders.py``); ``danet_r50_d8`` is a plain dilated ``resnet50`` (the paper's ResNet-50
ablations, no multi-grid).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from ...attention import create_attention
from ..registry import Weights, register_model
from .base import Segmentor, build_segmentor, build_variant, classifier, conv_bn_act, head_width, on_last_map

__all__ = ["DANetHead", "danet", "danet_r50_d8", "danet_r101_d8"]


class DANetHead(nn.Module):
    """DANet head: position and channel attention branches, three outputs.

    ``conv5a -> PAM (sa) -> conv51``, ``conv5c -> CAM (sc) -> conv52`` (3x3 conv + BN + ReLU to
    ``in // 4``); ``conv6``/``conv7`` classify each branch (``"pam"``/``"cam"``, training only),
    ``conv8`` their sum (``"out"``). Official keys (``junfu1115/DANet`` ``DANetHead``) exactly.
    Official training sums the three cross-entropies with weight 1.
    ``[..., (B, in_channels, h, w)] -> (B, num_classes, h, w)`` (or the three outputs in training).

    Args:
        in_channels: channels of the last feature map (2048 for ResNet-50/101).
        num_classes: output channels.
        channels: branch width (``in_channels // 4``).
        reduction: PAM's query/key reduction (8).
        dropout: Dropout2d before each classifier (0.1).
    """

    def __init__(
        self, in_channels: int, num_classes: int, channels: int | None = None, reduction: int = 8, dropout: float = 0.1
    ) -> None:
        super().__init__()
        inter = head_width(channels, in_channels // 4, "DANetHead")
        self.conv5a = conv_bn_act(in_channels, inter)
        self.conv5c = conv_bn_act(in_channels, inter)
        self.sa = create_attention("pam", inter, reduction=reduction)
        self.sc = create_attention("cam", inter)
        self.conv51 = conv_bn_act(inter, inter)
        self.conv52 = conv_bn_act(inter, inter)
        self.conv6 = classifier(inter, num_classes, dropout)
        self.conv7 = classifier(inter, num_classes, dropout)
        self.conv8 = classifier(inter, num_classes, dropout)
        self.loss_weights = {"out": 1.0, "pam": 1.0, "cam": 1.0}

    def forward(self, features: Sequence[Tensor]) -> Tensor | dict[str, Tensor]:
        x = features[-1]
        sa = self.conv51(self.sa(self.conv5a(x)))
        sc = self.conv52(self.sc(self.conv5c(x)))
        out = self.conv8(sa + sc)
        if not self.training:
            return out
        return {"out": out, "pam": self.conv6(sa), "cam": self.conv7(sc)}

    def convert_official_state_dict(self, state_dict: Mapping[str, Tensor], segmentor: nn.Module) -> dict[str, Tensor]:
        """junfu1115/DANet's ``DANet`` checkpoint to the segmentor's keys.

        ``pretrained.*`` -> ``encoder.*``; ``head.*`` as is; the backbone's unused ImageNet
        classifier ``pretrained.fc.*`` (kept in 2018 checkpoints) is dropped.
        """
        out = {}
        for key, value in state_dict.items():
            if key.startswith("pretrained.fc."):
                continue
            out[f"encoder.{key.removeprefix('pretrained.')}" if key.startswith("pretrained.") else key] = value
        return out


@register_model
def danet(num_classes: int = 19, **kwargs) -> Segmentor:
    """DANet: ``DANetHead`` (outputs out/pam/cam, weights 1).

    Head arguments: ``channels``, ``reduction``, ``dropout`` (:class:`DANetHead`); the others are
    :func:`build_segmentor`'s (``encoder="resnet50"``, ``output_stride=8``, ``aux=False``, ...).
    """
    return build_segmentor(on_last_map(DANetHead), num_classes=num_classes, **kwargs)


@register_model
def danet_r50_d8(num_classes: int = 19, **kwargs) -> Segmentor:
    """DANet, dilated ResNet-50 (torchvision layout), output stride 8."""
    return build_variant(danet, "resnet50", {}, num_classes=num_classes, **kwargs)


@register_model(weights=Weights("https://github.com/junfu1115/DANet (DANet101 on Cityscapes, link in its README)"))
def danet_r101_d8(num_classes: int = 19, **kwargs) -> Segmentor:
    """DANet, ResNet-101 with multi-grid (4, 8, 16): the layout of the released DANet101 checkpoint."""
    return build_variant(danet, "resnet101", {"multi_grid": (4, 8, 16)}, num_classes=num_classes, **kwargs)
