"""``create_attention``: one string factory for every attention module (like timm's ``create_attn``).

Every attention class takes ``channels`` as its first argument and maps ``(B, C, H, W)`` to
``(B, C, H, W)``, so any of them fits any slot. Each also has ``attention_weights(x)`` (the
weights it computed) and ``attention_maps(x, points)`` (its pictures, see :mod:`visattn.viz`).
"""
from __future__ import annotations

import difflib
import inspect

from torch import nn

from .bam import BAM
from .cam import ChannelAttention
from .cbam import CBAM
from .cca import CrissCrossAttention, RecurrentCrissCrossAttention
from .dnl import DisentangledNonLocal2d
from .dual import DualAttention
from .ema import EMAUnit
from .external import ExternalAttention
from .fla import FullyAttentional
from .gc import GlobalContextBlock
from .isa import InterlacedSparseAttention
from .non_local import NonLocal2d
from .pam import PositionAttention
from .psa import PyramidSqueezeAttention
from .se import SqueezeExcite
from .sge import SpatialGroupEnhance

__all__ = ["create_attention", "list_attentions", "get_attention_class"]

_ATTENTIONS: dict[str, type[nn.Module]] = {
    "pam": PositionAttention,
    "cam": ChannelAttention,
    "dual": DualAttention,
    "cca": CrissCrossAttention,
    "rcca": RecurrentCrissCrossAttention,
    "fla": FullyAttentional,
    "bam": BAM,
    "sge": SpatialGroupEnhance,
    "psa": PyramidSqueezeAttention,
    "se": SqueezeExcite,
    "cbam": CBAM,
    "nonlocal": NonLocal2d,
    "gc": GlobalContextBlock,
    "ema": EMAUnit,
    "isa": InterlacedSparseAttention,
    "dnl": DisentangledNonLocal2d,
    "external": ExternalAttention,
}


def list_attentions() -> list[str]:
    """Names accepted by :func:`create_attention`, sorted."""
    return sorted(_ATTENTIONS)


def _unknown(name: object) -> ValueError:
    close = difflib.get_close_matches(str(name).lower(), list(_ATTENTIONS), n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return ValueError(f"unknown attention {name!r}.{hint} Valid choices: {', '.join(list_attentions())}")


def get_attention_class(name: str) -> type[nn.Module]:
    """The class registered under ``name`` (case-insensitive)."""
    key = name.lower() if isinstance(name, str) else name
    if key not in _ATTENTIONS:
        raise _unknown(name)
    return _ATTENTIONS[key]


def create_attention(name: str, channels: int, **kwargs) -> nn.Module:
    """Build the attention module ``name`` for ``channels`` input channels.

    Example: ``create_attention("pam", 512)``; keyword arguments go to the class constructor.
    Unknown names and keyword arguments raise ``ValueError`` listing the valid choices.
    """
    cls = get_attention_class(name)
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        valid = [p for p in params if p not in ("self", "channels")]
        bad = sorted(set(kwargs) - set(valid))
        if bad:
            accepted = f"valid arguments: {', '.join(valid)}" if valid else f"{name} takes no arguments besides channels"
            raise ValueError(f"{name}: unknown argument(s) {', '.join(bad)}; {accepted}")
    return cls(channels, **kwargs)
