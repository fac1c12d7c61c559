"""The authors' (official) code, transcribed: the independent reference of the tests and the naive
baseline of ``visattn bench`` and ``benchmarks/``. Private: the visattn modules never import it.

One module per upstream repository (``danet.py``, ``ccnet.py``, ``flanet.py``,
``attention_module.py``, ``epsanet.py``, ``pytorchinsight.py``, ...). Each keeps the official
computation step by step (permutes, copies, ``repeat``, per-call ``-inf`` tensors), the official
class and parameter names (which are also visattn's, so state dicts load both ways); only device
handling is changed, as each module's docstring says.

Each module declares ``COUNTERPARTS``: visattn attention registry name -> :class:`Counterpart`.
:func:`counterparts` merges those of every module of this package, so a new upstream file registers
itself with no other edit.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["Counterpart", "counterparts", "load_from", "require"]


@dataclass(frozen=True)
class Counterpart:
    """How to build the official module that computes what a visattn attention module computes.

    Attributes:
        build: the official module for a visattn module ``m``, with ``m``'s weights loaded.
        visattn_kwargs: visattn constructor arguments under which both agree (BAM:
            ``{"combine": "product"}``).
        batch_independent: ``False`` when the official code agrees only at batch size 1 (FLA's
            ``repeat`` mixes batch items).
        square_only: ``True`` when the official code needs ``H == W`` (BAM's ``H x H`` pooling).
        sdpa: the same computation through ``F.scaled_dot_product_attention`` with the official
            projections, for ``m``'s weights: what a user would write with PyTorch's fused
            attention instead (not the authors' code; a baseline of ``visattn bench``).
    """

    build: Callable[[nn.Module], nn.Module]
    visattn_kwargs: Mapping[str, Any] = field(default_factory=dict)
    batch_independent: bool = True
    square_only: bool = False
    sdpa: Callable[[nn.Module], nn.Module] | None = None


def counterparts() -> dict[str, Counterpart]:
    """Every module's ``COUNTERPARTS`` merged: visattn attention name -> :class:`Counterpart`."""
    merged: dict[str, Counterpart] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for name, counterpart in getattr(module, "COUNTERPARTS", {}).items():
            if name in merged:
                raise RuntimeError(f"two official counterparts registered for {name!r} ({info.name})")
            merged[name] = counterpart
    return merged


def load_from(official: nn.Module, m: nn.Module) -> nn.Module:
    """``official`` with ``m``'s state dict loaded (same key names by design), in ``m``'s mode, on
    ``m``'s device and dtype."""
    official.load_state_dict(m.state_dict())
    official.train(m.training)
    param = next(m.parameters(), None)
    return official if param is None else official.to(param.device, param.dtype)


def require(m: nn.Module, official: str, **fixed: Any) -> None:
    """Raise ``ValueError`` unless ``m``'s hyperparameters equal the values the official code fixes."""
    for attr, value in fixed.items():
        if getattr(m, attr) != value:
            raise ValueError(f"the official {official} has {attr}={value!r}; this module has {getattr(m, attr)!r}")
