"""Optional dependencies: imported where used, with a message that names the extra bringing them."""
from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message says which ``pip install`` brings it."""


def require(module: str, extra: str) -> ModuleType:
    """Import and return ``module`` (a top-level package, e.g. ``"matplotlib"``), or raise
    :class:`MissingExtraError` naming ``pip install 'visattn[<extra>]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(f"{module} is not installed: pip install 'visattn[{extra}]'", name=module) from err
