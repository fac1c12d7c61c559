"""visattn: attention mechanisms that made CNNs see context, exact and lean.

The public names are imported on first use (PEP 562), so ``import visattn`` and ``visattn --help``
do not import torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "create_attention": "visattn.attention",
    "get_attention_class": "visattn.attention",
    "list_attentions": "visattn.attention",
    "create_model": "visattn.models",
    "list_models": "visattn.models",
    "insert_attention": "visattn.models.insert",
    "timm_attn_layer": "visattn.models.insert",
    "load_official": "visattn.weights",
    "from_pretrained": "visattn.trained",
    "push_to_hub": "visattn.hub",
    "save_pretrained": "visattn.hub",
    "compare": "visattn.comparison",
    "Predictor": "visattn.engine.predictor",
}

__all__ = [
    "Predictor",
    "compare",
    "create_attention",
    "create_model",
    "from_pretrained",
    "get_attention_class",
    "insert_attention",
    "list_attentions",
    "list_models",
    "load_official",
    "push_to_hub",
    "save_pretrained",
    "timm_attn_layer",
    "__version__",
]

if TYPE_CHECKING:  # the same names for type checkers and IDEs
    from .attention import create_attention, get_attention_class, list_attentions
    from .comparison import compare
    from .engine.predictor import Predictor
    from .hub import push_to_hub, save_pretrained
    from .trained import from_pretrained
    from .models import create_model, list_models
    from .models.insert import insert_attention, timm_attn_layer
    from .weights import load_official


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
