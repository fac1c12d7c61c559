"""Datasets and joint image/mask augmentation.

Segmentation: :class:`DigitScenes` (embedded default, no download), :class:`Cityscapes`,
:class:`ADE20K`, :class:`PascalVOC`, :class:`MaskFolder`. Classification:
:class:`DigitClassification` and torchvision's ``ImageFolder``. :func:`build_dataset` makes one
from a config ``data`` section.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import Dataset

from .digits import DigitClassification, DigitScenes
from .palettes import colorize, voc_palette
from .segmentation import ADE20K, IGNORE_INDEX, Cityscapes, MaskFolder, PascalVOC, SegmentationDataset, read_image
from .transforms import classification_transforms, segmentation_transforms

__all__ = ["DigitScenes", "DigitClassification", "Cityscapes", "ADE20K", "PascalVOC", "MaskFolder",
           "SegmentationDataset", "SeededTransform", "build_dataset", "dataset_info", "classes_and_palette", "colorize", "read_image",
           "IGNORE_INDEX", "SEGMENTATION_DATASETS", "CLASSIFICATION_DATASETS"]

SEGMENTATION_DATASETS = ("digits", "cityscapes", "ade20k", "voc", "folder")
CLASSIFICATION_DATASETS = ("digits_cls", "imagefolder")


class SeededTransform(Dataset):
    """Apply ``transform`` to ``dataset[i]`` with the global RNG seeded from ``(seed, epoch, i)``.

    Augmentation then depends only on the sample and the epoch — not on the worker, the process
    or where a run was resumed — which is what makes ``--resume`` and DDP runs reproduce exactly.
    The caller's RNG state is left untouched.
    """

    def __init__(self, dataset: Dataset, transform, seed: int = 0) -> None:
        self.dataset, self.transform, self.seed, self.epoch = dataset, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
            return self.transform(*sample)


def _base_dataset(cfg: Mapping[str, Any], split: str) -> Dataset:
    name, root = cfg["dataset"], cfg.get("root")
    if name == "digits":
        d = cfg["digits"]
        return DigitScenes(split, length=d["train_length"] if split == "train" else d["val_length"], size=d["size"],
                           digits_per_image=tuple(d["digits_per_image"]), digit_size=tuple(d["digit_size"]),
                           seed=d["seed"])
    if name == "digits_cls":
        d = cfg["digits"]
        return DigitClassification(split, size=d["size"], digit_size=tuple(d["digit_size"]), seed=d["seed"])
    if root is None:
        raise ValueError(f"dataset {name!r} needs data.root (the dataset directory)")
    if name == "cityscapes":
        return Cityscapes(root, split)
    if name == "ade20k":
        return ADE20K(root, split)
    if name == "voc":
        return PascalVOC(root, split)
    if name == "folder":
        return MaskFolder(root, split, num_classes=cfg.get("num_classes"), classes=cfg.get("classes"))
    if name == "imagefolder":
        from pathlib import Path

        from torchvision.datasets import ImageFolder

        path = Path(root) / split
        if not path.is_dir():
            raise FileNotFoundError(f"ImageFolder: directory not found: {path} (expected <root>/<split>/<class>/*.jpg)")
        return ImageFolder(str(path), loader=read_image)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(SEGMENTATION_DATASETS + CLASSIFICATION_DATASETS)}")


def build_dataset(cfg: Mapping[str, Any], split: str, train: bool, seed: int = 0) -> SeededTransform:
    """The dataset of config section ``cfg`` (``data``) for ``split`` with train or eval transforms."""
    base = _base_dataset(cfg, split)
    if cfg["dataset"] in CLASSIFICATION_DATASETS:
        crop = cfg["crop_size"]
        crop = crop[0] if isinstance(crop, (list, tuple)) else crop
        transform = classification_transforms(train, crop_size=crop, flip=cfg["flip"], color_jitter=cfg["color_jitter"],
                                              mean=cfg["mean"], std=cfg["std"])
    else:
        transform = segmentation_transforms(train, crop_size=cfg["crop_size"], scale_range=cfg["scale_range"],
                                            flip=cfg["flip"], color_jitter=cfg["color_jitter"],
                                            mean=cfg["mean"], std=cfg["std"])
    return SeededTransform(base, transform, seed)


def classes_and_palette(cfg: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """Class names and palette of config section ``cfg`` (``data``) without reading the dataset
    (folder-based datasets take them from ``classes``/``num_classes``)."""
    from .palettes import ADE20K_CLASSES, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, DIGIT_CLASSES, VOC_CLASSES

    name = cfg["dataset"]
    known = {"digits": (DIGIT_CLASSES, voc_palette(11)), "cityscapes": (CITYSCAPES_CLASSES, CITYSCAPES_PALETTE),
             "ade20k": (ADE20K_CLASSES, voc_palette(151)[1:]), "voc": (VOC_CLASSES, voc_palette(21)),
             "digits_cls": (DIGIT_CLASSES[1:], voc_palette(10))}
    if name in known:
        return known[name]
    classes = cfg.get("classes") or (tuple(f"class{i}" for i in range(cfg["num_classes"])) if cfg.get("num_classes") else None)
    if classes is None:
        raise ValueError(f"dataset {name!r}: set data.classes or data.num_classes")
    return tuple(classes), voc_palette(len(classes))


def dataset_info(dataset: Dataset) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """Class names and palette of a (possibly wrapped) dataset."""
    base = dataset.dataset if isinstance(dataset, SeededTransform) else dataset
    classes = tuple(getattr(base, "classes"))
    palette = tuple(getattr(base, "palette", None) or voc_palette(len(classes)))
    return classes, palette
