"""The dataset table: every dataset a config can name, with what the engine needs to know about it
before reading it (task, class names, palette, augmentation defaults, its own label convention),
the config's ``data`` section that names one (:class:`DataConfig`), and :func:`build_dataset`.

Adding a dataset: its class in its own module, one :class:`DatasetSpec` line in :data:`DATASETS`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from .digits import DigitClassification, DigitScenes
from .occluded_digits import OccludedDigitScenes
from .palettes import (ADE20K_CLASSES, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, DIGIT_CLASSES, VOC_CLASSES,
                       voc_palette)
from .segmentation import (ADE20K, ADE20K_LABEL_IDS, CITYSCAPES_LABEL_IDS, Cityscapes, MaskFolder, PascalVOC,
                           read_image)
from .transforms import IMAGENET_MEAN, IMAGENET_STD, classification_transforms, segmentation_transforms

__all__ = ["DatasetSpec", "DATASETS", "dataset_spec", "dataset_defaults", "DataConfig", "DigitsConfig",
           "SeededTransform", "build_dataset", "classes_and_palette", "dataset_info", "label_convention"]

Palette = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset as a config names it.

    Args:
        task: ``"segmentation"`` or ``"classification"``.
        build: ``(data config section, split) -> dataset`` of untransformed ``(image, target)`` items.
        classes: class names; ``None``: from the config's ``data.classes`` / ``data.num_classes``.
        palette: an RGB colour per class; ``None``: the VOC colour map.
        crop_size, scale_range, flip: the training augmentation a config gets when it names this
            dataset but not these keys (``data.crop_size``, ``data.scale_range``, ``data.flip``).
        label_ids: 256 entries mapping train ids (255 = ignore) to the label values of the
            dataset's own annotation files; ``None``: the files store train ids.
        label_palette: the palette of the dataset's annotation PNGs; ``None``: single-channel files.
    """

    task: str
    build: Callable[[DataConfig, str], Dataset]
    classes: tuple[str, ...] | None
    palette: Palette | None
    crop_size: tuple[int, int]
    scale_range: tuple[float, float]
    flip: bool
    label_ids: tuple[int, ...] | None = None
    label_palette: Palette | None = None


def _root(cfg: DataConfig) -> str:
    if cfg.root is None:
        raise ValueError(f"dataset {cfg.dataset!r} needs data.root (the dataset directory)")
    return cfg.root


def _digit_scenes(cfg: DataConfig, split: str, scenes: type[DigitScenes] = DigitScenes) -> Dataset:
    d = cfg.digits
    return scenes(split, length=d.train_length if split == "train" else d.val_length, size=d.size,
                  digits_per_image=tuple(d.digits_per_image), digit_size=tuple(d.digit_size), seed=d.seed)


def _digit_classification(cfg: DataConfig, split: str) -> Dataset:
    d = cfg.digits
    return DigitClassification(split, size=d.size, digit_size=tuple(d.digit_size), seed=d.seed)


def _mask_folder(cfg: DataConfig, split: str) -> Dataset:
    return MaskFolder(_root(cfg), split, num_classes=cfg.num_classes, classes=cfg.classes)


def _image_folder(cfg: DataConfig, split: str) -> Dataset:
    path = Path(_root(cfg)) / split
    if not path.is_dir():
        raise FileNotFoundError(f"ImageFolder: directory not found: {path} (expected <root>/<split>/<class>/*.jpg)")
    return ImageFolder(str(path), loader=read_image)


# Real datasets: the papers' crop, zoom 0.5-2 and flip. The digit scenes: no zoom (the scenes already
# vary the digits' size, and from scratch extra zoom slows learning within the default run's steps)
# and no flip (mirrored digits are not digits).
DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec("segmentation", _digit_scenes, DIGIT_CLASSES, voc_palette(11), (64, 64), (1.0, 1.0), False),
    "cityscapes": DatasetSpec("segmentation", lambda cfg, split: Cityscapes(_root(cfg), split), CITYSCAPES_CLASSES,
                              CITYSCAPES_PALETTE, (769, 769), (0.5, 2.0), True,
                              label_ids=tuple(CITYSCAPES_LABEL_IDS.tolist())),
    "ade20k": DatasetSpec("segmentation", lambda cfg, split: ADE20K(_root(cfg), split), ADE20K_CLASSES,
                          voc_palette(151)[1:], (512, 512), (0.5, 2.0), True, label_ids=tuple(ADE20K_LABEL_IDS.tolist())),
    "voc": DatasetSpec("segmentation", lambda cfg, split: PascalVOC(_root(cfg), split), VOC_CLASSES, voc_palette(21),
                       (512, 512), (0.5, 2.0), True, label_palette=voc_palette(256)),
    "folder": DatasetSpec("segmentation", _mask_folder, None, None, (512, 512), (0.5, 2.0), True),
    "occluded_digits": DatasetSpec("segmentation", lambda cfg, split: _digit_scenes(cfg, split, OccludedDigitScenes),
                                   DIGIT_CLASSES, voc_palette(11), (64, 64), (1.0, 1.0), False),
    "digits_cls": DatasetSpec("classification", _digit_classification, DIGIT_CLASSES[1:], voc_palette(10), (64, 64),
                              (1.0, 1.0), False),
    # RandomResizedCrop zooms on its own
    "imagefolder": DatasetSpec("classification", _image_folder, None, None, (224, 224), (1.0, 1.0), True),
}


def dataset_spec(name: str) -> DatasetSpec:
    """The :data:`DATASETS` entry of ``name``; an unknown name is a ``ValueError`` listing the known ones."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def dataset_defaults(name: str) -> dict[str, Any]:
    """The ``data`` keys a config naming dataset ``name`` gets unless it sets them (none for an
    unknown name: building the dataset reports it)."""
    spec = DATASETS.get(name)
    if spec is None:
        return {}
    return {"crop_size": list(spec.crop_size), "scale_range": list(spec.scale_range), "flip": spec.flip}


_DEFAULT_DATASET = DATASETS["digits"]


@dataclass
class DigitsConfig:
    """The embedded digit scenes (:class:`visattn.data.DigitScenes`, :class:`visattn.data.OccludedDigitScenes`)."""

    train_length: int = 2000
    val_length: int = 200
    size: int = 64
    digits_per_image: list[int] = field(default_factory=lambda: [2, 4])
    digit_size: list[int] = field(default_factory=lambda: [12, 24])
    seed: int = 0


@dataclass
class DataConfig:
    """A config's ``data`` section: the dataset (a name of :data:`DATASETS`), where it lies, and its
    training augmentation."""

    dataset: str = "digits"  # a name of visattn.data.DATASETS
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    num_classes: int | None = None  # folder datasets
    classes: list[str] | None = None  # folder datasets: names
    # crop_size, scale_range and flip default to the dataset's own (visattn.data.DATASETS)
    crop_size: int | list[int] = field(default_factory=lambda: list(_DEFAULT_DATASET.crop_size))
    scale_range: list[float] = field(default_factory=lambda: list(_DEFAULT_DATASET.scale_range))
    flip: bool = _DEFAULT_DATASET.flip
    color_jitter: float = 0.0
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    workers: int = 0
    digits: DigitsConfig = field(default_factory=DigitsConfig)


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


def build_dataset(cfg: DataConfig, split: str, train: bool, seed: int = 0) -> SeededTransform:
    """The dataset of config section ``cfg`` (``data``) for ``split`` with train or eval transforms."""
    spec = dataset_spec(cfg.dataset)
    base = spec.build(cfg, split)
    if spec.task == "classification":
        crop = cfg.crop_size[0] if isinstance(cfg.crop_size, (list, tuple)) else cfg.crop_size
        transform = classification_transforms(train, crop_size=crop, flip=cfg.flip, color_jitter=cfg.color_jitter,
                                              mean=cfg.mean, std=cfg.std)
    else:
        transform = segmentation_transforms(train, crop_size=cfg.crop_size, scale_range=cfg.scale_range,
                                            flip=cfg.flip, color_jitter=cfg.color_jitter, mean=cfg.mean, std=cfg.std)
    return SeededTransform(base, transform, seed)


def classes_and_palette(cfg: DataConfig) -> tuple[tuple[str, ...], Palette]:
    """Class names and palette of config section ``cfg`` (``data``) without reading the dataset
    (folder-based datasets take them from ``classes``/``num_classes``)."""
    spec = dataset_spec(cfg.dataset)
    classes = spec.classes or cfg.classes or (tuple(f"class{i}" for i in range(cfg.num_classes))
                                              if cfg.num_classes else None)
    if classes is None:
        raise ValueError(f"dataset {cfg.dataset!r}: set data.classes or data.num_classes")
    return tuple(classes), spec.palette or voc_palette(len(classes))


def label_convention(cfg: DataConfig) -> tuple[np.ndarray, Palette | None]:
    """How dataset ``cfg.dataset`` (config section ``data``) stores labels: a 256-entry uint8 table
    from train ids to its label values, and the palette of its annotation PNGs (``None``: none)."""
    spec = dataset_spec(cfg.dataset)
    lut = np.arange(256, dtype=np.uint8) if spec.label_ids is None else np.asarray(spec.label_ids, dtype=np.uint8)
    return lut, spec.label_palette


def dataset_info(dataset: Dataset) -> tuple[tuple[str, ...], Palette]:
    """Class names and palette of a (possibly wrapped) dataset."""
    base = dataset.dataset if isinstance(dataset, SeededTransform) else dataset
    classes = tuple(getattr(base, "classes"))
    palette = tuple(getattr(base, "palette", None) or voc_palette(len(classes)))
    return classes, palette
