"""Helpers shared by the attention modules: argument and input checks, the fp32 scope, the pictures.

Every error names the module, the bad value and what was expected, so a wrong channel count
surfaces at the call site rather than as a shape error deep inside a matmul.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "reduced_channels", "check_divisible", "check_positive", "check_input", "no_autocast", "AttentionMap",
    "check_one_map", "query_cells", "query_rows", "strongest_channel_maps", "to_numpy", "query_key_value_convs",
    "conv_module",
]


def check_positive(module: str, name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{module}: {name} must be a positive integer, got {value!r}")
    return value


def reduced_channels(module: str, channels: int, reduction: int, name: str = "reduction") -> int:
    """``channels // reduction`` (floor, as the official code), refusing to reach 0 channels."""
    check_positive(module, "channels", channels)
    check_positive(module, name, reduction)
    hidden = channels // reduction
    if hidden < 1:
        raise ValueError(
            f"{module}: channels={channels} with {name}={reduction} leaves {hidden} hidden channels "
            f"(channels // {name} must be >= 1)"
        )
    return hidden


def check_divisible(module: str, channels: int, groups: int, what: str = "groups") -> None:
    check_positive(module, what, groups)
    if channels % groups:
        raise ValueError(f"{module}: channels={channels} is not divisible by {what}={groups}")


def check_input(module: str, x: Tensor, channels: int, owner: nn.Module | None = None) -> None:
    """Input must be a floating-point ``(B, channels, H, W)`` with ``H, W >= 1`` (``B`` may be 0).

    With ``owner`` (the module itself), the input's dtype must also be its parameters' unless
    autocast is on: a mismatch is a ``ValueError`` here, not a dtype error inside a conv or matmul.
    """
    if x.dim() != 4:
        raise ValueError(
            f"{module}: expected a 4-D input (B, C, H, W), got {x.dim()}-D shape {tuple(x.shape)}"
        )
    if x.shape[1] != channels:
        raise ValueError(
            f"{module}: expected {channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)})"
        )
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{module}: empty feature map, shape {tuple(x.shape)} (H and W must be at least 1)")
    if not x.is_floating_point():
        raise ValueError(f"{module}: expected a floating-point input, got {x.dtype}")
    if owner is None or (x.device.type != "meta" and torch.is_autocast_enabled(x.device.type)):
        return
    param = next(owner.parameters(), None)
    if param is not None and param.dtype != x.dtype:
        raise ValueError(
            f"{module}: input dtype {x.dtype} does not match the module's parameters ({param.dtype}); "
            f"use torch.autocast or module.to({x.dtype})"
        )


def no_autocast(device_type: str):
    """Disable autocast (only if it is on): softmaxes and the matmuls around them must stay fp32."""
    if device_type != "meta" and torch.is_autocast_enabled(device_type):  # meta: shapes only, no autocast
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


@dataclass
class AttentionMap:
    """One picture's data.

    ``values`` is ``(h, w)`` at feature resolution when ``spatial`` (drawn over the image), else a
    matrix drawn as it is (``xlabel``/``ylabel`` name its axes). ``point`` is the query's feature
    cell ``(row, column)``, if the map belongs to one, on a feature map of size ``grid``
    (``values.shape`` for spatial maps).
    """

    key: str
    title: str
    values: np.ndarray
    spatial: bool = True
    point: tuple[int, int] | None = None
    xlabel: str = ""
    ylabel: str = ""
    grid: tuple[int, int] | None = None
    yticklabels: tuple[str, ...] | None = None  # names of a matrix's rows (e.g. PSA's kernels)


def check_one_map(module: str, x: Tensor) -> None:
    """``attention_maps`` draws one feature map: ``x`` must be ``(1, C, H, W)``."""
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"{module}: attention_maps expects one feature map (1, C, H, W), got {tuple(x.shape)}")


def query_cells(module: str, x: Tensor, points: Sequence[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """The query cells ``(row, col)`` of ``attention_maps`` on one feature map ``x``: ``points``
    (each inside the map), or the centre cell if none are given."""
    check_one_map(module, x)
    h, w = x.shape[-2:]
    cells = [(int(p[0]), int(p[1])) for p in points] or [(h // 2, w // 2)]
    outside = [p for p in cells if not (0 <= p[0] < h and 0 <= p[1] < w)]
    if outside:
        raise ValueError(f"{module}: query cells {outside} outside the {h}x{w} feature map")
    return cells


def query_rows(module: str, t: Tensor, queries: Sequence[tuple[int, int]] | None, h: int, w: int) -> Tensor:
    """The rows of ``t`` ``(B, H*W, ...)`` (positions in row-major order) at the ``(row, column)``
    ``queries`` of an ``h x w`` map; all of ``t`` for ``None``. A query outside the map is a
    ``ValueError`` naming ``module``."""
    if queries is None:
        return t
    bad = [p for p in queries if not (0 <= p[0] < h and 0 <= p[1] < w)]
    if bad:
        raise ValueError(f"{module}: query positions {bad} outside the {h}x{w} map")
    return t[:, [r * w + col for r, col in queries]]


def strongest_channel_maps(prefix: str, describe: str, weights: Tensor,
                           points: Sequence[tuple[int, int]]) -> list[AttentionMap]:
    """One map per query point: the channel of ``weights`` ``(K, H, W)`` largest at that point,
    keyed ``f"{prefix}{i}"`` and titled ``describe.format(k=channel, p=point)``."""
    maps = []
    for i, p in enumerate(points):
        k = int(weights[:, p[0], p[1]].argmax())
        maps.append(AttentionMap(f"{prefix}{i}", describe.format(k=k, p=p), to_numpy(weights[k]), point=p))
    return maps


def to_numpy(t: Tensor) -> np.ndarray:
    """A map's values as a float32 array on the CPU."""
    return t.detach().float().cpu().numpy()


def query_key_value_convs(channels: int, hidden: int) -> tuple[nn.Conv2d, nn.Conv2d, nn.Conv2d]:
    """The 1x1 projections of DANet's and CCNet's attention: query and key ``C -> hidden``, value
    ``C -> C``, all with bias (the official ``query_conv``, ``key_conv``, ``value_conv``)."""
    return nn.Conv2d(channels, hidden, 1), nn.Conv2d(channels, hidden, 1), nn.Conv2d(channels, channels, 1)


def conv_module(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 1,
    *,
    dilation: int = 1,
    groups: int = 1,
    norm: bool | Callable[[int], nn.Module] = False,
    act: bool = False,
    init: bool = True,
) -> nn.Sequential:
    """mmcv's ``ConvModule``: ``conv`` (bias unless normed), then ``bn`` and ``activate`` (ReLU) if asked.

    ``norm``: ``True`` for ``nn.BatchNorm2d``, or a norm class called with ``out_channels``; mmcv
    names any norm ``bn`` in its checkpoints. The padding keeps the size (``dilation * (kernel_size
    // 2)``), as every mmseg head sets it. Initialised as mmcv: Kaiming-normal conv weights
    (fan-out, ReLU gain), zero bias, the norm's own init; ``init=False`` leaves PyTorch's default
    init, for a caller that initialises the conv itself (no draws spent on values it replaces).
    The keys (``conv.weight``, ``bn.*``) are those of mmcv/mmseg checkpoints.
    """
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation,
        groups=groups, bias=norm is False,
    )
    if init:
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
    layers = OrderedDict(conv=conv)
    if norm is not False:
        layers["bn"] = (nn.BatchNorm2d if norm is True else norm)(out_channels)
    if act:
        layers["activate"] = nn.ReLU(inplace=True)
    return nn.Sequential(layers)
