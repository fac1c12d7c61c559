"""What every mmsegmentation-style network shares: mmcv's ``ConvModule`` and the renaming of mmseg checkpoints.

mmsegmentation (https://github.com/open-mmlab/mmsegmentation) builds its heads from mmcv's
``ConvModule`` (conv without bias, ``bn``, ``activate``) and saves checkpoints as ``backbone.*``
(ResNetV1c), ``decode_head.*`` and ``auxiliary_head.*``. The networks on mmseg's recipes keep
mmseg's module names in their heads, so a checkpoint converts by renaming prefixes only.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = [
    "conv_module", "rename", "AUX_KEYS", "STEM_KEYS", "init_conv_seg", "convert_mmseg_state_dict",
    "ExportableAdaptiveAvgPool2d",
]

# mmseg's auxiliary FCNHead (one ConvModule, no concat) -> heads.FCNHead's Sequential indices
AUX_KEYS = {"convs.0.conv.": "0.", "convs.0.bn.": "1.", "conv_seg.": "3."}
# mmseg's ResNetV1c deep stem -> timm's resnet*c (``stem.2/.5/.8`` are ReLUs)
STEM_KEYS = {"stem.0.": "conv1.0.", "stem.1.": "conv1.1.", "stem.3.": "conv1.3.", "stem.4.": "conv1.4.",
             "stem.6.": "conv1.6.", "stem.7.": "bn1."}


def conv_module(
    in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    """mmcv's ``ConvModule`` with BN (and ReLU unless ``act=False``): ``conv`` (no bias), ``bn``, ``activate``.

    The padding keeps the size (``dilation * (kernel_size // 2)``), as every mmseg head sets it.
    """
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation,
        groups=groups, bias=False,
    )
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # ConvModule's init
    layers = OrderedDict(conv=conv, bn=nn.BatchNorm2d(out_channels))
    if act:
        layers["activate"] = nn.ReLU(inplace=True)
    return nn.Sequential(layers)


def _pooling_matrix(size_in, size_out: int, like: Tensor) -> Tensor:
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
        rows = _pooling_matrix(x.shape[-2], size, x)
        cols = _pooling_matrix(x.shape[-1], size, x)
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
