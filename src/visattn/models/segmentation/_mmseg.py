"""What every mmsegmentation-style network shares: the decode-head base, the builders, the checkpoint renaming.

mmsegmentation (https://github.com/open-mmlab/mmsegmentation) builds its heads on
``BaseDecodeHead`` (``mmseg/models/decode_heads/decode_head.py``: the input index, ``dropout``,
the ``conv_seg`` classifier) from mmcv's ``ConvModule`` (:func:`~visattn.attention._common.conv_module`),
and saves checkpoints as ``backbone.*`` (ResNetV1c), ``decode_head.*`` and ``auxiliary_head.*``.
The networks on mmseg's recipes keep mmseg's module names in their heads, so a checkpoint
converts by renaming prefixes only.

A network on an mmseg recipe is its head (a :class:`DecodeHead`) and one call of
:func:`register_mmseg_builders`, which registers the recipe's builders. What they share:

- The encoder of the released checkpoints is mmseg's ``ResNetV1c`` (deep stem 3->32->32->64,
  stride on the 3x3 conv, stages 3 and 4 dilated 2 and 4 with the first block at half the rate):
  timm's ``resnet50c`` / ``resnet101c`` at output stride 8 have that layout.
- The recipe adds mmseg's auxiliary ``FCNHead`` on stage 3 (1024 -> 256, one ConvModule, no
  concat, loss weight 0.4) and upsamples the logits with ``align_corners=False``.
- Module names are mmseg's (``convs.0.conv``, ``convs.0.bn``, ``conv_cat``, ``conv_seg``, ...),
  so a checkpoint's ``decode_head.*`` loads into the head as it is (a head whose names differ
  lists them in ``head_keys``); the head's ``convert_official_state_dict`` renames a whole
  ``<network>_r*-d8`` checkpoint (what ``visattn.load_official`` calls).

Differences from the official code: mmseg's SyncBN is ``nn.BatchNorm2d`` (convert the model with
``nn.SyncBatchNorm.convert_sync_batchnorm`` for multi-GPU training); the ImageNet weights of
``encoder_weights="imagenet"`` are timm's ``resnet*c`` ones, not mmseg's ``open-mmlab://resnet50_v1c``.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor, nn

from ...attention._common import conv_module
from ..registry import Weights, register_model
from .base import FCNHead, Segmentor, build_segmentor, build_variant, head_width, on_last_map

__all__ = [
    "rename", "AUX_KEYS", "STEM_KEYS", "init_conv_seg", "convert_mmseg_state_dict", "ExportableAdaptiveAvgPool2d",
    "pooling_matrix", "DecodeHead", "ConcatInputBlockHead", "register_mmseg_builders",
]

# mmseg's auxiliary FCNHead (one ConvModule, no concat) -> heads.FCNHead's Sequential indices
AUX_KEYS = {"convs.0.conv.": "0.", "convs.0.bn.": "1.", "conv_seg.": "3."}
# mmseg's ResNetV1c deep stem -> timm's resnet*c (``stem.2/.5/.8`` are ReLUs)
STEM_KEYS = {"stem.0.": "conv1.0.", "stem.1.": "conv1.1.", "stem.3.": "conv1.3.", "stem.4.": "conv1.4.",
             "stem.6.": "conv1.6.", "stem.7.": "bn1."}


def pooling_matrix(size_in, size_out: int, like: Tensor) -> Tensor:
    """``(size_out, size_in)``: row ``i`` averages ``[floor(i * n / s), ceil((i + 1) * n / s))``, the
    bins of adaptive average pooling, built from (possibly symbolic) sizes."""
    i = torch.arange(size_out, device=like.device)
    start = torch.div(i * size_in, size_out, rounding_mode="floor")
    end = torch.div((i + 1) * size_in + size_out - 1, size_out, rounding_mode="floor")
    j = torch.arange(size_in, device=like.device)
    inside = (j >= start[:, None]) & (j < end[:, None])
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


class ExportableAdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` (an int output size) that exports to ONNX for any input size.

    Eager and compiled code run PyTorch's kernel. Under ``torch.export`` (and so ONNX export) the
    pooling is two products with the bins' averaging matrices, built from the input's symbolic
    sizes: the ONNX translation of the kernel keeps the bins of the traced size, which gives wrong
    values or an indexing error at other sizes. Both are the same average (up to rounding).
    """

    def forward(self, x: Tensor) -> Tensor:
        if not torch.compiler.is_exporting():
            return super().forward(x)
        size = self.output_size
        rows = pooling_matrix(x.shape[-2], size, x)
        cols = pooling_matrix(x.shape[-1], size, x)
        return rows @ x @ cols.transpose(0, 1)


def init_conv_seg(conv_seg: nn.Conv2d) -> nn.Conv2d:
    """mmseg's decode-head classifier init: weights normal (std 0.01), bias zero."""
    nn.init.normal_(conv_seg.weight, std=0.01)
    nn.init.zeros_(conv_seg.bias)
    return conv_seg


def rename(key: str, table: Mapping[str, str]) -> str:
    """``key`` with the first prefix of ``table`` it starts with replaced by its new name."""
    for old, new in table.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def convert_mmseg_state_dict(
    state_dict: Mapping[str, Tensor], head_keys: Mapping[str, str] | None = None
) -> dict[str, Tensor]:
    """Rename an mmseg ``*_r*-d8`` checkpoint to a :class:`~.base.Segmentor`'s keys.

    ``decode_head.*`` -> ``head.*`` (renamed by ``head_keys`` where the head's names differ from
    mmseg's); ``auxiliary_head.convs.0.conv/.bn`` and ``.conv_seg`` -> ``aux.0`` / ``aux.1`` /
    ``aux.3``; ``backbone.stem.{0,1,3,4,6}`` -> ``encoder.conv1.{0,1,3,4,6}``, ``backbone.stem.7``
    -> ``encoder.bn1``, ``backbone.layerN.*`` -> ``encoder.layerN.*``. Other keys are kept, so a
    strict load reports them.
    """
    out = {}
    for key, value in state_dict.items():
        first, _, rest = key.partition(".")
        if first == "decode_head":
            key = f"head.{rename(rest, head_keys or {})}"
        elif first == "auxiliary_head":
            key = f"aux.{rename(rest, AUX_KEYS)}"
        elif first == "backbone":
            key = f"encoder.{rename(rest, STEM_KEYS)}"
        out[key] = value
    return out


class DecodeHead(nn.Module):
    """mmseg's ``BaseDecodeHead``: what every head on an mmseg recipe has beside its own modules.

    ``in_index`` (which map of the encoder's feature list the head reads), ``dropout``
    (Dropout2d), ``conv_seg`` (the 1x1 classifier, mmseg's init) with :meth:`cls_seg`, and
    :meth:`convert_official_state_dict` (``decode_head.*`` -> ``head.*``, renamed by the class's
    ``head_keys`` where its names differ from mmseg's). A head passes ``dropout`` and ``in_index``
    on to ``super().__init__``, builds its own modules, then :meth:`add_conv_seg`: the classifier
    comes last in the state dict and in the initialisation order.

    The heads' arguments in common: ``in_channels`` (channels of the input feature map, 2048 for
    ResNet-50/101), ``num_classes`` (output channels), ``dropout`` (Dropout2d probability before
    ``conv_seg``, 0.1) and ``in_index`` (which feature map of the encoder's list to use, the last).

    Differences from the official code: mmseg's base also owns the loss and the resizing of the
    logits; here :class:`~.base.Segmentor` and the training loop do.
    """

    # mmseg's names of the head's modules -> ours, where they differ
    head_keys: ClassVar[Mapping[str, str]] = {}

    def __init__(self, dropout: float = 0.1, in_index: int = -1) -> None:
        super().__init__()
        self.in_index = in_index
        self.dropout = nn.Dropout2d(dropout)

    def add_conv_seg(self, channels: int, num_classes: int) -> None:
        """Add ``conv_seg``, the classifier (``channels`` -> ``num_classes``)."""
        self.conv_seg = init_conv_seg(nn.Conv2d(channels, num_classes, 1))

    def cls_seg(self, x: Tensor) -> Tensor:
        """The logits of the head's last feature map: ``conv_seg(dropout(x))``."""
        return self.conv_seg(self.dropout(x))

    def convert_official_state_dict(self, state_dict: Mapping[str, Tensor], segmentor: nn.Module) -> dict[str, Tensor]:
        """Rename a whole mmseg checkpoint of this head's network to the :class:`~.base.Segmentor`'s keys
        (see :func:`convert_mmseg_state_dict`)."""
        return convert_mmseg_state_dict(state_dict, self.head_keys)


class ConcatInputBlockHead(DecodeHead):
    """mmseg's ``FCNHead`` with two convs and ``concat_input`` around a context block.

    ``convs.0`` (3x3 ConvModule, C_in -> ``channels``) -> the block -> ``convs.1`` (3x3
    ConvModule) -> ``conv_cat`` (concat(input, ``convs.1`` output) -> 3x3 ConvModule to
    ``channels``) -> :meth:`~DecodeHead.cls_seg`. mmseg's ``NLHead``, ``GCHead`` and ``DNLHead``
    are this head with another block, under another name (``nl_block``, ``gc_block``, ``dnl_block``).

    Args:
        block_name: the block's attribute (mmseg's name, and so its checkpoint keys).
        block: builds the block from ``channels``.
        channels: width of the convs and of the block (512).
        in_channels, num_classes, dropout, in_index: as :class:`DecodeHead`'s.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        block_name: str,
        block: Callable[[int], nn.Module],
        channels: int = 512,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        channels = head_width(channels, 512, type(self).__name__)
        self.block_name = block_name
        self.convs = nn.Sequential(
            conv_module(in_channels, channels, 3, norm=True, act=True),
            conv_module(channels, channels, 3, norm=True, act=True),
        )
        self.add_module(block_name, block(channels))
        self.conv_cat = conv_module(in_channels + channels, channels, 3, norm=True, act=True)
        self.add_conv_seg(channels, num_classes)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        x = features[self.in_index]
        out = self.convs[1](getattr(self, self.block_name)(self.convs[0](x)))
        return self.cls_seg(self.conv_cat(torch.cat([x, out], 1)))


def register_mmseg_builders(
    name: str,
    head_class: type[nn.Module],
    *,
    title: str,
    config: str,
    summary: str | None = None,
    build_head: Callable[..., nn.Module] | None = None,
    aux: bool = True,
    encoder_kwargs: Mapping | None = None,
) -> tuple[Callable[..., Segmentor], Callable[..., Segmentor], Callable[..., Segmentor]]:
    """Register the builders of a network on an mmseg recipe: ``name``, ``name_r50_d8``, ``name_r101_d8``.

    ``name(num_classes=19, **kwargs)`` builds the head on :func:`~.base.build_segmentor` with
    mmseg's defaults: ``encoder="resnet50c"`` (mmseg's ResNetV1c layout) at output stride 8,
    upsampling with ``align_corners=False`` and, with ``aux``, mmseg's auxiliary FCN head (256
    wide, weight 0.4) on stage 3 (``in_index=-2``), on by default. The ``_r50_d8`` / ``_r101_d8``
    variants are it on ``resnet50c`` / ``resnet101c``, with the released weights of mmseg's
    ``configs/<config>``. The builders are the head's module's (their ``__module__``) and their
    docstrings name the head's keyword arguments.

    Args:
        name: the short name; the variants add ``_r50_d8`` and ``_r101_d8``.
        head_class: the head; built as ``head_class(widths[-1], num_classes, **head_kwargs)``
            (``widths``: the channels of the encoder's feature maps) unless ``build_head`` is given.
        title: the network's name in the docstrings ("PSPNet").
        config: mmseg's ``configs/`` folder of the recipe.
        summary: the head and its inputs in the builder's docstring (default: the head's name).
        build_head: builds the head as ``build_head(widths, num_classes, **head_kwargs)``, for a
            head on other inputs than the last map.
        aux: the recipe has the auxiliary FCN head.
        encoder_kwargs: encoder arguments the head needs, added to the caller's (DeepLabV3+'s ``stages``).
    """
    weights = Weights(f"https://github.com/open-mmlab/mmsegmentation/tree/main/configs/{config} (links in its README)")
    head = build_head or on_last_map(head_class)

    def build(num_classes: int = 19, **kwargs) -> Segmentor:
        kwargs.setdefault("encoder", "resnet50c")
        if aux:
            kwargs.setdefault("aux", True)
        if encoder_kwargs:
            kwargs["encoder_kwargs"] = {**(kwargs.get("encoder_kwargs") or {}), **encoder_kwargs}
        model = build_segmentor(
            head, num_classes=num_classes, aux_head=partial(FCNHead, channels=256, in_index=-2) if aux else None,
            **kwargs,
        )
        model.align_corners = False
        return model

    module = head_class.__module__
    summary = summary or f"``{head_class.__name__}``"
    aux_doc = ", and mmseg's auxiliary head on stage 3 (256 wide, weight 0.4)" if aux else ""
    head_arguments = ", ".join(dict.fromkeys(  # the head's and those it passes on to its bases
        f"``{p.name}``"
        for cls in head_class.__mro__ if "__init__" in vars(cls) and cls.__module__.startswith("visattn")
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.default is not p.empty and p.name != "in_index"
    ))
    build = _named(build, name, module, (
        f"{title}: {summary}{aux_doc}.\n\nLogits are upsampled with ``align_corners=False`` as mmseg. "
        f"Head arguments: {head_arguments} (:class:`{head_class.__name__}`); the others are "
        f":func:`build_segmentor`'s (``encoder=\"resnet50c\"``, ``output_stride=8``, ``aux={aux}``, ...)."
    ))
    register_model(build)
    variants = tuple(
        register_model(_named(
            _on_encoder(build, f"resnet{depth}c"), f"{name}_r{depth}_d8", module,
            f"{title}, ResNet-{depth}-C (mmseg's ResNetV1c layout, timm ``resnet{depth}c``), output stride 8.",
        ), weights=weights)
        for depth in (50, 101)
    )
    return (build, *variants)


def _on_encoder(build: Callable[..., Segmentor], encoder: str) -> Callable[..., Segmentor]:
    """``build`` on ``encoder`` unless the caller names another."""

    def build_on_encoder(num_classes: int = 19, **kwargs) -> Segmentor:
        return build_variant(build, encoder, {}, num_classes=num_classes, **kwargs)

    return build_on_encoder


def _named(fn: Callable, name: str, module: str, doc: str) -> Callable:
    """``fn`` under the name ``name`` of ``module``, documented by ``doc`` (what the registry and ``help`` show)."""
    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = module
    fn.__doc__ = doc
    return fn
