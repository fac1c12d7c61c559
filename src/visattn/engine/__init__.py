"""Training, evaluation and inference: the machinery behind ``visattn train/eval/predict``."""
from .config import DEFAULTS, ConfigError, load_config
from .evaluate import ClassificationMetrics, SegmentationMetrics, evaluate, format_table, segment
from .inference import load_trained
from .losses import cross_entropy, ohem_cross_entropy, weighted_loss
from .trainer import LRSchedule, build_model, train

__all__ = ["DEFAULTS", "ConfigError", "load_config", "train", "build_model", "LRSchedule", "evaluate", "segment",
           "format_table", "SegmentationMetrics", "ClassificationMetrics", "load_trained", "cross_entropy",
           "ohem_cross_entropy", "weighted_loss"]
