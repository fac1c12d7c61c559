"""The authors' code, transcribed step by step, one file per upstream repository (private)."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["Counterpart"]


@dataclass(frozen=True)
class Counterpart:
    """The official module a visattn attention module agrees with.

    ``build(m)`` constructs the official module from ``m``'s hyperparameters with ``m``'s weights
    loaded; the two agree under ``visattn_kwargs``, at every batch size unless
    ``batch_independent`` is False, and on non-square maps unless ``square_only``.
    """

    build: Callable[[nn.Module], nn.Module]
    visattn_kwargs: Mapping[str, Any] = field(default_factory=dict)
    batch_independent: bool = True
    square_only: bool = False
