"""``create_attention``: one string factory for every attention module (like timm's ``create_attn``).

Every attention class takes ``channels`` as its first argument and maps ``(B, C, H, W)`` to
``(B, C, H, W)``, so any of them fits any slot. Each also has ``attention_weights(x)`` (the
weights it computed) and ``attention_maps(x, points)`` (its pictures, see :mod:`visattn.viz`),
and declares its traits as class attributes (see :class:`AttentionTraits`), from which the tests,
``visattn explain``'s help and the table in ``docs/attention.md`` follow.
"""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, fields

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

__all__ = ["create_attention", "list_attentions", "get_attention_class", "AttentionTraits", "attention_traits"]

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


@dataclass(frozen=True)
class AttentionTraits:
    """What an attention module is, declared by its class as class attributes of these names.

    A trait left out takes the default below. Traits describe the module built with its default
    arguments (RCCA's per-pass weights, for instance, follow its ``recurrence``).

    Attributes:
        identity_at_init: ``True`` if the freshly built module returns its input unchanged (a
            residual branch scaled by a zero ``gamma`` or ending in zero weights); the name of a
            submodule if it is the identity before that submodule (FLA: ``"conv"``, its output
            conv); ``False`` otherwise.
        maps_drawn: keys of the ``attention_maps`` drawn once per feature map.
        query_maps_drawn: key prefixes of the maps drawn once per query point, keyed
            ``f"{prefix}{i}"`` for the ``i``-th point; a module with these refuses query points
            outside the feature map, one without them ignores the points.
        has_softmax: the module computes a softmax, in float32 under autocast.
        float32_weights: keys of ``attention_weights`` that are softmax maps returned in float32
            under autocast.
        output_in_autocast_dtype: the output takes autocast's dtype (its last op is a conv or it
            concatenates conv outputs); otherwise the float32 input is added to or gated, and the
            output is float32.
    """

    identity_at_init: bool | str = False
    maps_drawn: tuple[str, ...] = ()
    query_maps_drawn: tuple[str, ...] = ()
    has_softmax: bool = False
    float32_weights: tuple[str, ...] = ()
    output_in_autocast_dtype: bool = False

    def __post_init__(self) -> None:
        if not self.maps_drawn and not self.query_maps_drawn:
            raise ValueError("an attention module draws at least one map (maps_drawn or query_maps_drawn)")
        if self.float32_weights and not self.has_softmax:
            raise ValueError(f"float32_weights {self.float32_weights} without has_softmax")


def attention_traits(name: str) -> AttentionTraits:
    """The traits the class registered under ``name`` declares (case-insensitive)."""
    cls = get_attention_class(name)
    declared = {f.name: getattr(cls, f.name) for f in fields(AttentionTraits) if hasattr(cls, f.name)}
    try:
        return AttentionTraits(**declared)
    except ValueError as err:
        raise ValueError(f"{cls.__name__}: {err}") from None


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
