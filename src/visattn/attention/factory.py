"""``create_attention``: one string factory for every attention module (like timm's ``create_attn``).

Every attention class takes ``channels`` as its first argument and maps ``(B, C, H, W)`` to
``(B, C, H, W)``, so any of them fits any slot. Classes are imported lazily: naming a module
costs only the import of its own file.
"""
from __future__ import annotations

import difflib
import importlib
import inspect

from torch import nn

__all__ = ["create_attention", "list_attentions", "get_attention_class"]

# name -> (module path, class name)
_ATTENTIONS: dict[str, tuple[str, str]] = {
    "pam": ("visattn.attention.pam", "PositionAttention"),
    "cam": ("visattn.attention.cam", "ChannelAttention"),
    "dual": ("visattn.attention.dual", "DualAttention"),
    "cca": ("visattn.attention.cca", "CrissCrossAttention"),
    "rcca": ("visattn.attention.cca", "RecurrentCrissCrossAttention"),
    "fla": ("visattn.attention.fla", "FullyAttentional"),
    "bam": ("visattn.attention.bam", "BAM"),
    "sge": ("visattn.attention.sge", "SpatialGroupEnhance"),
    "psa": ("visattn.attention.psa", "PyramidSqueezeAttention"),
    "se": ("visattn.attention.se", "SqueezeExcite"),
    "cbam": ("visattn.attention.cbam", "CBAM"),
    "nonlocal": ("visattn.attention.non_local", "NonLocal2d"),
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
    module_path, class_name = _ATTENTIONS[key]
    return getattr(importlib.import_module(module_path), class_name)


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
            raise ValueError(
                f"{name}: unknown argument(s) {', '.join(bad)}; valid arguments: {', '.join(valid)}"
            )
    return cls(channels, **kwargs)
