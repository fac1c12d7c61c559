"""Datasets and joint image/mask augmentation.

Segmentation: :class:`DigitScenes` (embedded default, no download), :class:`OccludedDigitScenes`
(embedded, labels that need context), :class:`Cityscapes`,
:class:`ADE20K`, :class:`PascalVOC`, :class:`MaskFolder`. Classification:
:class:`DigitClassification` and torchvision's ``ImageFolder``. :data:`DATASETS` names them for
configs; :class:`DataConfig` is a config's ``data`` section, and :func:`build_dataset` makes a
dataset from one.
"""
from .digits import DigitClassification, DigitScenes
from .occluded_digits import OccludedDigitScenes
from .palettes import colorize, voc_palette
from .registry import (DATASETS, DataConfig, DatasetSpec, DigitsConfig, SeededTransform, build_dataset,
                       classes_and_palette, dataset_defaults, dataset_info, dataset_spec)
from .segmentation import ADE20K, IGNORE_INDEX, Cityscapes, MaskFolder, PascalVOC, SegmentationDataset, read_image
from .transforms import IMAGENET_MEAN, IMAGENET_STD, image_to_tensor

__all__ = ["DigitScenes", "OccludedDigitScenes", "DigitClassification", "Cityscapes", "ADE20K", "PascalVOC",
           "MaskFolder", "SegmentationDataset", "SeededTransform", "DATASETS", "DatasetSpec", "dataset_spec",
           "dataset_defaults", "DataConfig", "DigitsConfig",
           "build_dataset", "dataset_info", "classes_and_palette", "colorize", "voc_palette", "read_image",
           "image_to_tensor", "IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD"]
