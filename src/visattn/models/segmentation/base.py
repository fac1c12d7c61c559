"""What every segmentor shares: :class:`Segmentor`, :func:`build_segmentor`, and the head blocks.

Paper of the common structure: Long et al., "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015, https://arxiv.org/abs/1411.4038, on a dilated encoder (Yu & Koltun,
ICLR 2016, https://arxiv.org/abs/1511.07122): DANet, CCNet and FLANet are this network with
another head. Each network's file holds its head, the renaming of its authors' checkpoints, its
generic builder and its registered paper variants.

Every head takes the encoder's feature list ``[stage2, stage3, stage4]`` and returns logits at
feature resolution: in eval mode the main logits tensor, in training mode (heads with auxiliary
outputs) a dict ``name -> logits`` with ``"out"`` first and ``loss_weights`` naming a weight for
each key. Module names follow the official code so authors' checkpoints map by prefix only.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from .encoders import create_encoder

__all__ = [
    "Segmentor",
    "build_segmentor",
    "on_last_map",
    "build_variant",
    "FCNHead",
    "BatchNormAct2d",
    "LeakyReLU",
    "conv_bn_act",
    "classifier",
    "head_width",
]

LeakyReLU = partial(nn.LeakyReLU, 0.01)


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm then an activation, with BatchNorm's parameter names.

    The layout of InPlace-ABN (CCNet's ``InPlaceABNSync``: BN + LeakyReLU(0.01)), whose checkpoints
    keep ``weight``/``bias``/``running_mean``/``running_var`` on the module itself.
    """

    def __init__(self, num_features: int, act_layer: Callable[[], nn.Module] = nn.ReLU) -> None:
        super().__init__(num_features)
        self.act = act_layer()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(super().forward(x))


def conv_bn_act(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    """``conv (no bias) -> BN -> ReLU`` with keys ``0`` (conv) and ``1`` (BN), as DANet's."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def classifier(in_channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """``Dropout2d -> 1x1 conv (bias)``: keys ``1.weight``/``1.bias`` as DANet's ``conv6/7/8``."""
    return nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(in_channels, num_classes, 1))


def head_width(channels: int | None, default: int, name: str) -> int:
    """``channels``, or ``default`` when ``None``; ``ValueError`` naming the head ``name`` unless positive."""
    channels = default if channels is None else channels
    if channels < 1:
        raise ValueError(f"{name}: head width must be positive, got {channels}")
    return channels


class FCNHead(nn.Sequential):
    """Dilated-FCN head: ``3x3 conv -> BN -> act -> Dropout2d -> 1x1 conv`` on ``features[in_index]``.

    The baseline head (``in_index=-1``) and the auxiliary head on stage 3 (``in_index=-2``) of
    every segmentor. ``(B, in_channels, h, w) -> (B, num_classes, h, w)``.

    Args:
        in_channels: channels of the input feature map.
        num_classes: output channels.
        channels: hidden width (``in_channels // 4`` by default).
        in_index: which feature map of the encoder's list to use.
        conv_bias: bias on the 3x3 conv (CCNet's auxiliary ``dsn`` head has one).
        act_layer: activation after BN (``LeakyReLU`` for CCNet's InPlace-ABN).
        dropout: Dropout2d probability.

    Keys: ``0`` (3x3 conv), ``1`` (BN), ``3`` (classifier): CCNet's ``dsn`` layout.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int | None = None,
        in_index: int = -1,
        conv_bias: bool = False,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
        dropout: float = 0.1,
    ) -> None:
        channels = head_width(channels, in_channels // 4, "FCNHead")
        super().__init__(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=conv_bias),
            BatchNormAct2d(channels, act_layer),
            nn.Dropout2d(dropout),
            nn.Conv2d(channels, num_classes, 1),
        )
        self.in_index = in_index

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return super().forward(features[self.in_index])


class Segmentor(nn.Module):
    """``encoder -> head`` (+ ``aux`` on the encoder's features), logits upsampled to the input size.

    Shapes: ``(B, 3, H, W)`` in; in eval mode the main logits ``(B, num_classes, H, W)``; in
    training mode a dict ``{"out": ..., <the head's auxiliary outputs>, "aux": ...}`` of
    ``(B, num_classes, H, W)`` logits, and ``loss_weights`` has one weight per key.

    Differences from the official code (DANet, CCNet, FLANet): one network class for all heads,
    where each official code has its own; the official networks return their outputs
    positionally, here they are named. Upsampling is bilinear with ``align_corners=True`` as in
    all three.

    Args:
        encoder: returns a list of feature maps (``create_encoder``).
        head: maps the feature list to logits; heads with several outputs return a dict in
            training mode and expose ``loss_weights``. A head whose network has an official
            checkpoint layout defines ``convert_official_state_dict(state_dict, segmentor)``,
            which renames the whole network's checkpoint to this segmentor's keys.
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
        """Rename an authors' checkpoint to our keys, as the head's network defines it.

        Heads of networks with no official layout (FCN, attention heads) leave it unchanged.
        """
        convert = getattr(self.head, "convert_official_state_dict", None)
        return dict(state_dict) if convert is None else convert(state_dict, self)


def _check_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return num_classes


def _encoder_pretrained(encoder_weights: str | os.PathLike | None) -> bool | str | os.PathLike:
    """:func:`create_encoder`'s ``pretrained`` for a segmentor's ``encoder_weights``."""
    if encoder_weights is None or encoder_weights == "imagenet":
        return encoder_weights is not None
    if not isinstance(encoder_weights, (str, os.PathLike)):
        raise TypeError(f"encoder_weights must be None, 'imagenet' or a file path, got {encoder_weights!r}")
    return encoder_weights


def on_last_map(head_class: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """A ``head`` for :func:`build_segmentor`: ``head_class(channels of the last map, num_classes, **head_kwargs)``."""
    return lambda widths, num_classes, **head_kwargs: head_class(widths[-1], num_classes, **head_kwargs)


def build_segmentor(
    head: Callable[..., nn.Module],
    *,
    num_classes: int = 19,
    encoder_weights: str | os.PathLike | None = None,
    encoder: str = "resnet50",
    output_stride: int = 8,
    aux: bool = False,
    aux_weight: float = 0.4,
    pretrained_file: str | os.PathLike | None = None,
    encoder_kwargs: Mapping | None = None,
    aux_head: Callable[[int, int], nn.Module] | None = None,
    **head_kwargs,
) -> Segmentor:
    """The :class:`Segmentor` every registered segmentor builds; its arguments are theirs.

    Args:
        head: called as ``head(widths, num_classes, **head_kwargs)``, with
            ``widths`` the channels of the encoder's three feature maps (stages 2, 3, 4).
        num_classes: output classes (19: Cityscapes).
        encoder_weights: ``"imagenet"``: timm's ImageNet weights for the encoder (the encoder
            name's pretrained tag, e.g. ``resnet50.a1_in1k``, picks which); a path: a local
            encoder weights file, as ``pretrained_file``; ``None``: a random encoder.
        encoder: any timm model supporting ``features_only`` and ``output_stride``, with a
            pretrained tag or as ``hf-hub:<repo>`` if wanted.
        output_stride: 8 or 16.
        aux: add the auxiliary FCN head on stage 3 (training output ``"aux"``).
        aux_weight: its loss weight.
        pretrained_file: local encoder weights, a timm state dict (loaded strictly; see
            :func:`create_encoder`).
        encoder_kwargs: more arguments for ``create_encoder`` (``full_first_dilation``,
            ``multi_grid``, ``ceil_maxpool``, timm arguments).
        aux_head: builds the auxiliary head as ``aux_head(stage3_channels, num_classes)``
            (``FCNHead(..., in_index=-2)`` by default).
        **head_kwargs: the head's own arguments.
    """
    num_classes = _check_classes(num_classes)
    enc = create_encoder(
        encoder, output_stride, pretrained=_encoder_pretrained(encoder_weights), pretrained_file=pretrained_file,
        **(encoder_kwargs or {}),
    )
    channels = enc.feature_info.channels()
    aux_module = None
    if aux:
        aux_module = (aux_head or partial(FCNHead, in_index=-2))(channels[-2], num_classes)
    return Segmentor(enc, head(channels, num_classes, **head_kwargs), aux_module, aux_weight)


def build_variant(
    builder: Callable[..., Segmentor], encoder: str, encoder_kwargs: Mapping, /, **kwargs
) -> Segmentor:
    """``builder(**kwargs)`` on a paper's encoder: ``encoder`` unless given, ``encoder_kwargs``
    under the caller's own."""
    kwargs.setdefault("encoder", encoder)
    kwargs["encoder_kwargs"] = {**encoder_kwargs, **(kwargs.get("encoder_kwargs") or {})}
    return builder(**kwargs)
