"""Training, evaluation and inference: the machinery behind ``visattn train/eval/predict``.

:mod:`~visattn.engine.config` (typed run configuration), :mod:`~visattn.engine.build` (model,
optimizer, schedule), :mod:`~visattn.engine.trainer` (:class:`Trainer`, :func:`train`),
:mod:`~visattn.engine.run_dir` (a run directory's files),
:mod:`~visattn.engine.inference` (:func:`segment`), :mod:`~visattn.engine.predictor` (:class:`Predictor`), :mod:`~visattn.engine.metrics`
(:func:`evaluate`, :func:`format_table`), :mod:`~visattn.engine.losses`.

The names below are imported on first use (PEP 562): importing one submodule does not import them
all, so the submodules can import each other's modules without going round this package.
"""
from __future__ import annotations

import importlib
from typing import Any

# public name -> the submodule that defines it
_LAZY = {
    **dict.fromkeys(["LRSchedule", "build_model", "build_optimizer", "build_scheduler"], "build"),
    **dict.fromkeys(["Config", "ConfigError", "load_config"], "config"),
    "segment": "inference",
    **dict.fromkeys(["LossTerms", "cross_entropy", "dice_loss", "focal_loss", "lovasz_softmax", "ohem_cross_entropy",
                     "weighted_loss"], "losses"),
    **dict.fromkeys(["ClassificationMetrics", "SegmentationMetrics", "evaluate", "format_table"], "metrics"),
    "RunDir": "run_dir",
    **dict.fromkeys(["Trainer", "train"], "trainer"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
