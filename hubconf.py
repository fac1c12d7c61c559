"""``torch.hub`` entry points: every registered visattn model.

    model = torch.hub.load("<owner>/visattn", "danet_r101_d8", num_classes=19)
    model = torch.hub.load("path/to/visattn", "danet", source="local", encoder="resnet18", num_classes=3)

Each entry point is ``visattn.create_model(name, **kwargs)``; ``torch.hub.list`` shows the names of
``visattn.list_models()``.
"""
import sys as _sys
from pathlib import Path as _Path

dependencies = ["torch", "torchvision", "timm", "safetensors", "numpy"]

_SRC = str(_Path(__file__).resolve().parent / "src")
if _SRC not in _sys.path:
    _sys.path.insert(0, _SRC)

from visattn.models import create_model as _create_model  # noqa: E402
from visattn.models import list_models as _list_models  # noqa: E402


def _entry_point(name):
    def entry_point(**kwargs):
        return _create_model(name, **kwargs)

    entry_point.__name__ = entry_point.__qualname__ = name
    entry_point.__doc__ = f"visattn.create_model({name!r}, **kwargs): keyword arguments as create_model's."
    return entry_point


globals().update({_name: _entry_point(_name) for _name in _list_models()})
