"""Model registry: ``@register_model`` on a builder function, ``create_model(name, ...)`` to build.

Builders take ``num_classes``, ``pretrained`` and keyword arguments, like timm's and
torchvision's; the registry knows nothing else about them.
"""
from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Callable

from torch import nn

__all__ = ["register_model", "create_model", "list_models", "is_model"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
# One line per network file: importing it registers its builders. Imported on first use of the
# registry, so ``import visattn`` stays light and a misspelt or broken file fails loudly.
_BUILDER_MODULES = (
    "visattn.models.resnet",
    "visattn.models.epsanet",
    "visattn.models.segmentation.fcn",
    "visattn.models.segmentation.danet",
    "visattn.models.segmentation.ccnet",
    "visattn.models.segmentation.flanet",
    "visattn.models.segmentation.attnet",
    "visattn.models.segmentation.nlnet",
)


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn`` under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def _load_builders() -> None:
    for module in _BUILDER_MODULES:
        importlib.import_module(module)


def list_models(pattern: str = "") -> list[str]:
    """Registered model names containing ``pattern``, sorted."""
    _load_builders()
    return sorted(n for n in _MODELS if pattern in n)


def is_model(name: str) -> bool:
    _load_builders()
    return name in _MODELS


def create_model(
    name: str, num_classes: int | None = None, pretrained: bool | str | os.PathLike = False, **kwargs
) -> nn.Module:
    """Build the registered model ``name``.

    ``num_classes`` defaults to the builder's own (1000 for classifiers, 19 for Cityscapes
    segmentors); ``pretrained`` is ``True`` (the builder's default weights), ``False`` or the path
    of a local weights file; other keyword arguments go to the builder. Unknown names raise ``ValueError``
    with close matches.
    """
    _load_builders()
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=4, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} See visattn.list_models() for all {len(_MODELS)} names.")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return _MODELS[name](pretrained=pretrained, **kwargs)
