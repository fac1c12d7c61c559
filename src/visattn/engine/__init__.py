"""Training, evaluation and inference: the machinery behind ``visattn train/eval/predict``.

:mod:`~visattn.engine.config` (typed run configuration), :mod:`~visattn.engine.build` (model,
optimizer, schedule), :mod:`~visattn.engine.trainer` (:class:`Trainer`, :func:`train`),
:mod:`~visattn.engine.run_dir` (a run directory's files),
:mod:`~visattn.engine.inference` (:func:`segment`), :mod:`~visattn.engine.metrics`
(:func:`evaluate`, :func:`format_table`), :mod:`~visattn.engine.losses`.
"""
from .build import LRSchedule, build_model, build_optimizer, build_scheduler
from .config import Config, ConfigError, load_config
from .inference import segment
from .losses import LossTerms, cross_entropy, dice_loss, focal_loss, lovasz_softmax, ohem_cross_entropy, weighted_loss
from .metrics import ClassificationMetrics, SegmentationMetrics, evaluate, format_table
from .run_dir import RunDir
from .trainer import Trainer, train

__all__ = ["Config", "ConfigError", "load_config", "train", "Trainer", "RunDir", "build_model",
           "build_optimizer", "build_scheduler", "LRSchedule", "evaluate", "segment", "format_table",
           "SegmentationMetrics", "ClassificationMetrics", "cross_entropy", "ohem_cross_entropy", "focal_loss", "dice_loss",
           "lovasz_softmax", "LossTerms", "weighted_loss"]
