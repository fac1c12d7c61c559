"""Segmentors = dilated timm encoder + head (+ auxiliary FCN head) + bilinear upsampling to the input size.

Registered builders: generic ``fcn``, ``danet``, ``ccnet``, ``flanet``, ``attnet`` (any timm
encoder through ``encoder=``; ``attnet`` puts any registered attention module in the head), and
the paper variants ``{fcn,danet,ccnet,flanet}_r{50,101}_d8`` on the authors' backbone layouts:

=================  ===========================================================================
``fcn_r*_d8``      timm ``resnet50``/``resnet101`` (torchvision layout), the dilated-FCN baseline
``danet_r101_d8``  ``resnet101`` with stage-4 multi-grid dilations (4, 8, 16): the released DANet101
                   (``--no-deepstem --multi-grid --multi-dilation 4 8 16``); ``danet_r50_d8``:
                   plain dilated ``resnet50`` (the paper's ResNet-50 ablations, no multi-grid)
``ccnet_r*_d8``    deep-stem ``resnet50s``/``resnet101s``, first blocks fully dilated, ceil-mode
                   stem pool (CCNet's own ResNet); auxiliary FCN head on stage 3, weight 0.4
``flanet_r*_d8``   deep-stem ``resnet50s``/``resnet101s``, first blocks fully dilated (FLANet's ResNet)
=================  ===========================================================================

``pretrained=True`` loads ImageNet weights into the encoder through timm (or ``pretrained_file=``
a local file); the authors' segmentation checkpoints load with ``visattn.load_official``.

Forward contract: eval mode returns the main logits ``(B, K, H, W)`` at the input size; training
mode returns ``{"out": ..., <auxiliary names>: ...}``, all at the input size, and
``model.loss_weights`` has one weight per key (DANet: out/pam/cam 1; CCNet: out 1, aux 0.4;
FLANet: out/aux2/aux3 1). Upsampling is bilinear with ``align_corners=True`` as in all three
official codes.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import create_encoder
from .heads import AttentionHead, CCNetHead, DANetHead, FCNHead, FLANetHead, LeakyReLU
from .registry import register_model

__all__ = ["Segmentor"]

# InPlace-ABN normalises with |weight| + eps (mapillary/inplace_abn, all versions)
_INPLACE_ABN_EPS = 1e-5


class Segmentor(nn.Module):
    """``encoder -> head`` (+ ``aux`` on the encoder's features), logits upsampled to the input size.

    Args:
        encoder: returns a list of feature maps (``create_encoder``).
        head: maps the feature list to logits; heads with several outputs return a dict in
            training mode and expose ``loss_weights``.
        aux: optional auxiliary head on the same feature list (output ``"aux"``).
        aux_weight: loss weight of ``"aux"``.
        align_corners: bilinear upsampling mode (``True`` in the official codes).
    """

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Module,
        aux: nn.Module | None = None,
        aux_weight: float = 0.4,
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.aux = aux
        self.align_corners = align_corners
        self.loss_weights: dict[str, float] = dict(getattr(head, "loss_weights", {"out": 1.0}))
        if aux is not None:
            self.loss_weights["aux"] = float(aux_weight)

    def extra_repr(self) -> str:
        return f"loss_weights={self.loss_weights}, align_corners={self.align_corners}"

    def _resize(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        if x.dim() != 4:
            raise ValueError(f"{type(self).__name__} expects (B, C, H, W) images, got shape {tuple(x.shape)}")
        size = x.shape[-2:]
        features = self.encoder(x)
        out = self.head(features)
        if not self.training:
            return self._resize(out, size)
        outs = dict(out) if isinstance(out, Mapping) else {"out": out}
        if self.aux is not None:
            outs["aux"] = self.aux(features)
        return {name: self._resize(logits, size) for name, logits in outs.items()}

    def convert_official_state_dict(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Rename an authors' checkpoint (DANet, CCNet or FLANet layout, by head type) to ours.

        - DANet (junfu1115/DANet): ``pretrained.*`` -> ``encoder.*``; ``head.*`` as is; the backbone's
          unused ImageNet classifier ``pretrained.fc.*`` (kept in 2018 checkpoints) is dropped.
        - CCNet (speedinghzl/CCNet): stem ``conv1/bn1/conv2/bn2/conv3/bn3`` -> ``encoder.conv1.{0,1,3,4,6}``
          / ``encoder.bn1``; ``layerN.*`` -> ``encoder.layerN.*``; ``head.cca.*`` -> ``head.rcca.cca.*``;
          ``dsn.*`` -> ``aux.*``; loss-module buffers (``criterion.*``) dropped. Every BN there is
          InPlace-ABN, which scales by ``|weight| + 1e-5``: weights are converted to that value.
        - FLANet (maggiesong7/FullyAttentional): ``backbone.*`` -> ``encoder.*``, the rest -> ``head.*``.

        Other heads have no official layout: the state dict is returned unchanged.
        """
        if isinstance(self.head, DANetHead):
            return _convert_danet(state_dict)
        if isinstance(self.head, CCNetHead):
            return self._convert_ccnet(state_dict)
        if isinstance(self.head, FLANetHead):
            return {
                (f"encoder.{k[len('backbone.'):]}" if k.startswith("backbone.") else f"head.{k}"): v
                for k, v in state_dict.items()
            }
        return dict(state_dict)

    def _convert_ccnet(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        stem = {
            "conv1": "conv1.0", "bn1": "conv1.1", "conv2": "conv1.3", "bn2": "conv1.4", "conv3": "conv1.6", "bn3": "bn1"
        }
        batch_norms = {name for name, m in self.named_modules() if isinstance(m, nn.BatchNorm2d)}
        out = {}
        for key, value in state_dict.items():
            first, rest = key.split(".", 1)
            if first == "criterion":
                continue
            if first in stem:
                key = f"encoder.{stem[first]}.{rest}"
            elif first.startswith("layer"):
                key = f"encoder.{key}"
            elif first == "dsn":
                key = f"aux.{rest}"
            elif key.startswith("head.cca."):
                key = f"head.rcca.{key[len('head.'):]}"
            module, param = key.rsplit(".", 1)
            if param == "weight" and module in batch_norms:
                value = value.abs() + _INPLACE_ABN_EPS
            out[key] = value
        return out


def _convert_danet(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in state_dict.items():
        if key.startswith("pretrained.fc."):
            continue
        out[f"encoder.{key[len('pretrained.'):]}" if key.startswith("pretrained.") else key] = value
    return out


def _check_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return num_classes


def _build(
    make_head: Callable[[list[int], int], nn.Module],
    num_classes: int,
    pretrained: bool,
    encoder: str,
    output_stride: int,
    aux: bool,
    aux_weight: float,
    pretrained_file: str | Path | None,
    encoder_kwargs: Mapping | None,
    aux_head: Callable[[int, int], nn.Module] | None = None,
) -> Segmentor:
    num_classes = _check_classes(num_classes)
    enc = create_encoder(
        encoder, output_stride, pretrained=pretrained, pretrained_file=pretrained_file, **(encoder_kwargs or {})
    )
    channels = enc.feature_info.channels()
    aux_module = None
    if aux:
        aux_module = (aux_head or (lambda c, k: FCNHead(c, k, in_index=-2)))(channels[-2], num_classes)
    return Segmentor(enc, make_head(channels, num_classes), aux_module, aux_weight)


_COMMON_ARGS = """
    Args:
        num_classes: output classes (19: Cityscapes).
        pretrained: ImageNet weights for the encoder, through timm.
        encoder: any timm model supporting ``features_only`` and ``output_stride``.
        output_stride: 8 or 16.
        aux: add the auxiliary FCN head on stage 3 (training output ``"aux"``).
        aux_weight: its loss weight.
        pretrained_file: local encoder weights (implies ``pretrained``).
        encoder_kwargs: more arguments for ``create_encoder`` (``full_first_dilation``,
            ``multi_grid``, ``ceil_maxpool``, timm arguments)."""


def _doc(text: str) -> Callable:
    def wrap(fn: Callable) -> Callable:
        fn.__doc__ = text + "\n" + _COMMON_ARGS
        return fn

    return wrap


@register_model
@_doc("Dilated FCN: ``FCNHead`` on the last feature map. ``**head_kwargs``: ``FCNHead`` (``channels``, ``dropout``).")
def fcn(
    num_classes: int = 19,
    pretrained: bool = False,
    encoder: str = "resnet50",
    output_stride: int = 8,
    aux: bool = False,
    aux_weight: float = 0.4,
    pretrained_file: str | Path | None = None,
    encoder_kwargs: Mapping | None = None,
    **head_kwargs,
) -> Segmentor:
    return _build(
        lambda c, k: FCNHead(c[-1], k, **head_kwargs),
        num_classes, pretrained, encoder, output_stride, aux, aux_weight, pretrained_file, encoder_kwargs,
    )


@register_model
@_doc(
    "DANet: ``DANetHead`` (outputs out/pam/cam, weights 1). "
    "``**head_kwargs``: ``channels``, ``reduction``, ``dropout``."
)
def danet(
    num_classes: int = 19,
    pretrained: bool = False,
    encoder: str = "resnet50",
    output_stride: int = 8,
    aux: bool = False,
    aux_weight: float = 0.4,
    pretrained_file: str | Path | None = None,
    encoder_kwargs: Mapping | None = None,
    **head_kwargs,
) -> Segmentor:
    return _build(
        lambda c, k: DANetHead(c[-1], k, **head_kwargs),
        num_classes, pretrained, encoder, output_stride, aux, aux_weight, pretrained_file, encoder_kwargs,
    )


def _ccnet_aux(in_channels: int, num_classes: int) -> FCNHead:
    # official ``dsn``: 3x3 conv with bias to in // 2 (1024 -> 512), InPlace-ABN (BN + LeakyReLU)
    return FCNHead(in_channels, num_classes, channels=in_channels // 2, in_index=-2, conv_bias=True, act_layer=LeakyReLU)


@register_model
@_doc(
    "CCNet: ``CCNetHead`` (``recurrence=2``) and CCNet's auxiliary head on stage 3 (weight 0.4). "
    "``**head_kwargs``: ``recurrence``, ``channels``, ``reduction``, ``dropout``."
)
def ccnet(
    num_classes: int = 19,
    pretrained: bool = False,
    encoder: str = "resnet50",
    output_stride: int = 8,
    aux: bool = True,
    aux_weight: float = 0.4,
    pretrained_file: str | Path | None = None,
    encoder_kwargs: Mapping | None = None,
    **head_kwargs,
) -> Segmentor:
    return _build(
        lambda c, k: CCNetHead(c[-1], k, **head_kwargs),
        num_classes, pretrained, encoder, output_stride, aux, aux_weight, pretrained_file, encoder_kwargs,
        aux_head=_ccnet_aux,
    )


@register_model
@_doc(
    "FLANet: ``FLANetHead`` with its own auxiliary outputs aux2/aux3 on stages 2 and 3 (weights 1). "
    "``**head_kwargs``: ``channels``, ``aux_channels``, ``dropout``."
)
def flanet(
    num_classes: int = 19,
    pretrained: bool = False,
    encoder: str = "resnet50",
    output_stride: int = 8,
    aux: bool = False,
    aux_weight: float = 0.4,
    pretrained_file: str | Path | None = None,
    encoder_kwargs: Mapping | None = None,
    **head_kwargs,
) -> Segmentor:
    return _build(
        lambda c, k: FLANetHead(c, k, **head_kwargs),
        num_classes, pretrained, encoder, output_stride, aux, aux_weight, pretrained_file, encoder_kwargs,
    )


@register_model
@_doc(
    "Attention head: ``reduce -> attention -> classifier`` with any name of ``visattn.list_attentions()`` "
    "(``attention=``). ``**head_kwargs``: ``channels``, ``dropout`` and the attention module's arguments."
)
def attnet(
    num_classes: int = 19,
    pretrained: bool = False,
    encoder: str = "resnet50",
    output_stride: int = 8,
    aux: bool = False,
    aux_weight: float = 0.4,
    pretrained_file: str | Path | None = None,
    encoder_kwargs: Mapping | None = None,
    attention: str = "pam",
    **head_kwargs,
) -> Segmentor:
    return _build(
        lambda c, k: AttentionHead(c[-1], k, attention, **head_kwargs),
        num_classes, pretrained, encoder, output_stride, aux, aux_weight, pretrained_file, encoder_kwargs,
    )


# the authors' backbones (see backbones.py)
_CCNET_ENCODER = {"full_first_dilation": True, "ceil_maxpool": True}
_FLANET_ENCODER = {"full_first_dilation": True}
_DANET101_ENCODER = {"multi_grid": (4, 8, 16)}


def _variant(builder: Callable[..., Segmentor], encoder: str, encoder_kwargs: Mapping, kwargs: dict) -> Segmentor:
    kwargs.setdefault("encoder", encoder)
    kwargs["encoder_kwargs"] = {**encoder_kwargs, **(kwargs.get("encoder_kwargs") or {})}
    return builder(**kwargs)


@register_model
def fcn_r50_d8(num_classes: int = 19, pretrained: bool = False, **kwargs) -> Segmentor:
    """Dilated FCN, ResNet-50 (torchvision layout), output stride 8."""
    return _variant(fcn, "resnet50", {}, dict(kwargs, num_classes=num_classes, pretrained=pretrained))


@register_model
def fcn_r101_d8(num_classes: int = 19, pretrained: bool = False, **kwargs) -> Segmentor:
    """Dilated FCN, ResNet-101 (torchvision layout), output stride 8."""
    return _variant(fcn, "resnet101", {}, dict(kwargs, num_classes=num_classes, pretrained=pretrained))


@register_model
def danet_r50_d8(num_classes: int = 19, pretrained: bool = False, **kwargs) -> Segmentor:
    """DANet, dilated ResNet-50 (torchvision layout), output stride 8."""
    return _variant(danet, "resnet50", {}, dict(kwargs, num_classes=num_classes, pretrained=pretrained))


@register_model
def danet_r101_d8(num_classes: int = 19, pretrained: bool = False, **kwargs) -> Segmentor:
    """DANet, ResNet-101 with multi-grid (4, 8, 16): the layout of the released DANet101 checkpoint."""
    return _variant(danet, "resnet101", _DANET101_ENCODER, dict(kwargs, num_classes=num_classes, pretrained=pretrained))


@register_model
def ccnet_r50_d8(num_classes: int = 19, pretrained: bool = False, **kwargs) -> Segmentor:
    """CCNet (R=2, aux 0.4), CCNet's deep-stem ResNet-50, output stride 8."""
    return _variant(ccnet, "resnet50s", _CCNET_ENCODER, dict(kwargs, num_classes=num_classes, pretrained=pretrained))


@register_model
def ccnet_r101_d8(num_classes: int = 19, pretrained: bool = False, **kwargs) -> Segmentor:
    """CCNet (R=2, aux 0.4), CCNet's deep-stem ResNet-101 (the released models' layout), output stride 8."""
    return _variant(ccnet, "resnet101s", _CCNET_ENCODER, dict(kwargs, num_classes=num_classes, pretrained=pretrained))


@register_model
def flanet_r50_d8(num_classes: int = 19, pretrained: bool = False, **kwargs) -> Segmentor:
    """FLANet, FLANet's deep-stem ResNet-50, output stride 8."""
    return _variant(flanet, "resnet50s", _FLANET_ENCODER, dict(kwargs, num_classes=num_classes, pretrained=pretrained))


@register_model
def flanet_r101_d8(num_classes: int = 19, pretrained: bool = False, **kwargs) -> Segmentor:
    """FLANet, FLANet's deep-stem ResNet-101 (the official ``compile_model``), output stride 8."""
    return _variant(flanet, "resnet101s", _FLANET_ENCODER, dict(kwargs, num_classes=num_classes, pretrained=pretrained))
