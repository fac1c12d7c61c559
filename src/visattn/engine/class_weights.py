"""Per-class loss weights (``train.class_weights``), given or computed from the training set's labels.

``train.class_weights`` is a list (a number >= 0 per class, in class order), or the name of a
weighting computed from the training masks (:data:`WEIGHTINGS`):

``median_frequency``
    Median frequency balancing (Eigen & Fergus, "Predicting Depth, Surface Normals and Semantic
    Labels with a Common Multi-Scale Convolutional Architecture", ICCV 2015,
    https://arxiv.org/abs/1411.4734, as SegNet uses it): ``freq(c) = pixels of c / pixels of the
    images where c appears`` and ``w_c = median(freq) / freq(c)``, the median over the classes that
    appear (numpy's: the mean of the two middle values of an even count). The class of median
    frequency weighs 1.
``inverse_sqrt_frequency``
    ``w_c = 1 / sqrt(f_c)`` with ``f_c = pixels of c / pixels of the training set``, scaled so that
    the weights of the classes that appear average 1 (the scale changes no loss term: each divides
    by the weights it sums, :mod:`~visattn.engine.losses`).

Only labelled pixels count: the ignored ones (255) belong to no class and to no image's pixels. A
class that never appears in the training set gets weight 0 under both weightings (its frequency
is 0: no finite weight follows, and no training pixel would carry it); evaluation still scores it.

Masks are read as the dataset stores them (its ``load_mask(index)`` or ``load(index)``: no
augmentation, no crop), once per run and with a progress bar; under DDP each process counts its share of the items and the counts
are summed (all-reduce). The weights, the counts and the method are kept in the run directory's
``class_weights.json`` (:attr:`~visattn.engine.run_dir.RunDir.class_weights`), which a resumed run
reads instead of counting again.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..bounded import read_json
from ..data import IGNORE_INDEX
from ..weights import atomic_write
from .config import CLASS_WEIGHTINGS, ConfigError
from .distributed import DistInfo

__all__ = ["LabelCounts", "count_labels", "median_frequency_weights", "inverse_sqrt_frequency_weights", "WEIGHTINGS",
           "resolve_class_weights", "read_class_weights", "save_class_weights"]


@dataclass(frozen=True)
class LabelCounts:
    """Labelled pixels of a segmentation set: of each class (``pixels``), of the images in which
    each class appears (``image_pixels``), and the number of images."""

    pixels: list[int]
    image_pixels: list[int]
    images: int


def _masks_of(dataset: Dataset) -> tuple[Dataset, Callable[[int], np.ndarray]]:
    """The untransformed dataset under a (possibly wrapped) ``dataset`` and a reader of its masks;
    ``ConfigError`` when it has none."""
    base = dataset
    while not hasattr(base, "load") and hasattr(base, "dataset"):
        base = base.dataset
    if not hasattr(base, "load"):
        raise ConfigError(f"config key 'train.class_weights' must be null or a list of numbers for "
                          f"{type(base).__name__}: {', '.join(CLASS_WEIGHTINGS)} count the pixels of segmentation masks")
    if hasattr(base, "load_mask"):  # folder datasets: without decoding the images
        return base, lambda index: np.asarray(base.load_mask(index))
    return base, lambda index: np.asarray(base.load(index)[1])


def count_labels(dataset: Dataset, num_classes: int, info: DistInfo = DistInfo(),
                 device: torch.device | str = "cpu", quiet: bool = False) -> LabelCounts:
    """Count the labelled pixels of every mask of ``dataset`` (untransformed); process ``info.rank``
    reads items ``rank, rank + world_size, ...`` and the counts are all-reduced under DDP (every
    process calls it). A label outside ``0..num_classes-1`` and 255 is a ``ValueError``."""
    base, read_mask = _masks_of(dataset)
    pixels = np.zeros(num_classes, dtype=np.int64)
    image_pixels = np.zeros(num_classes, dtype=np.int64)
    items = range(info.rank, len(base), info.world_size)
    for index in tqdm(items, desc="class weights", unit="mask", disable=quiet or not info.is_main, dynamic_ncols=True):
        histogram = np.bincount(read_mask(index).ravel(), minlength=IGNORE_INDEX + 1)
        histogram[IGNORE_INDEX] = 0
        unknown = np.flatnonzero(histogram[num_classes:]) + num_classes
        if len(unknown):
            raise ValueError(f"mask {index} of {type(base).__name__} has labels {unknown[:10].tolist()}; "
                             f"expected 0..{num_classes - 1} and {IGNORE_INDEX} (ignore)")
        found = histogram[:num_classes]
        pixels += found
        image_pixels += (found > 0) * found.sum()
    counts = torch.from_numpy(np.stack([pixels, image_pixels]))
    if info.enabled:
        counts = counts.to(device)
        dist.all_reduce(counts)
    pixels, image_pixels = counts.cpu().tolist()
    return LabelCounts(pixels, image_pixels, len(base))


def _appearing(counts: LabelCounts) -> np.ndarray:
    present = np.asarray(counts.pixels) > 0
    if not present.any():
        raise ValueError(f"the training set's {counts.images} masks hold no labelled pixel: no class weights follow")
    return present


def median_frequency_weights(counts: LabelCounts) -> list[float]:
    """``median(freq) / freq(c)``, ``freq(c) = pixels of c / pixels of the images where c appears``;
    0 for a class that does not appear (module docstring)."""
    present = _appearing(counts)
    frequency = np.asarray(counts.pixels, dtype=np.float64)[present] / np.asarray(counts.image_pixels)[present]
    weights = np.zeros(len(present))
    weights[present] = np.median(frequency) / frequency
    return weights.tolist()


def inverse_sqrt_frequency_weights(counts: LabelCounts) -> list[float]:
    """``1 / sqrt(f_c)`` scaled to average 1 over the classes that appear, 0 for the others
    (module docstring)."""
    present = _appearing(counts)
    pixels = np.asarray(counts.pixels, dtype=np.float64)
    weights = np.zeros(len(present))
    weights[present] = 1 / np.sqrt(pixels[present] / pixels.sum())
    weights[present] /= weights[present].mean()
    return weights.tolist()


WEIGHTINGS: dict[str, Callable[[LabelCounts], list[float]]] = {
    "median_frequency": median_frequency_weights,
    "inverse_sqrt_frequency": inverse_sqrt_frequency_weights,
}


def read_class_weights(path: Path, method: str, classes: Sequence[str]) -> list[float] | None:
    """The weights ``path`` keeps for ``method`` and ``classes``; ``None`` when it is missing,
    unreadable (:func:`~visattn.bounded.read_json`: at most 16 MiB) or holds another method's or class
    list's. Weights that its own counts do not give (a damaged or edited file) are a ``ConfigError``
    naming the file."""
    try:
        record = read_json(path)
        weights = record["weights"]
        if record["method"] != method or record["classes"] != list(classes) or len(weights) != len(classes):
            return None
        counts = LabelCounts(*(record[key] for key in ("pixels", "image_pixels", "images")))
        if not all(isinstance(n, int) and 0 <= n < 2**63 for n in [*counts.pixels, *counts.image_pixels]):
            raise ValueError("counts")
        expected = WEIGHTINGS[method](counts)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    numbers = all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights)
    if not numbers or not np.allclose(weights, expected, rtol=1e-6, atol=0):
        wrong = next((i for i, (w, e) in enumerate(zip(weights, expected))
                      if not isinstance(w, (int, float)) or not math.isclose(w, e, rel_tol=1e-6)), 0)
        raise ConfigError(f"{path} holds class weights its pixel counts do not give (class {classes[wrong]!r}: "
                          f"{weights[wrong]!r}, the counts give {expected[wrong]:.6g}); delete it to count the "
                          "training labels again")
    return [float(w) for w in weights]


def save_class_weights(path: str | os.PathLike, record: dict) -> None:
    """Write a :func:`resolve_class_weights` record as JSON, atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))


def resolve_class_weights(setting: Sequence[float] | str | None, dataset: Dataset, classes: Sequence[str],
                          cache: str | os.PathLike | None = None, info: DistInfo = DistInfo(),
                          device: torch.device | str = "cpu", quiet: bool = False) -> tuple[list[float] | None,
                                                                                            dict | None]:
    """The per-class weights ``train.class_weights`` (``setting``) asks for, ``None`` for none, and
    the record to keep in the run directory when they were computed here (``None`` otherwise).

    A list must have one number per class (else ``ConfigError``). A weighting's name is looked up
    in ``cache`` (a ``class_weights.json``; ``None``: a new run, nothing to read), else computed
    from the masks of ``dataset`` (:func:`count_labels`; every process calls it under DDP). The
    record holds ``method``, ``classes``, ``weights`` and the counts of :class:`LabelCounts`.
    """
    if setting is None:
        return None, None
    if not isinstance(setting, str):
        if len(setting) != len(classes):
            raise ConfigError(f"config key 'train.class_weights' must be a list of {len(classes)} numbers, one per "
                              f"class ({', '.join(classes)}), got {len(setting)}: {list(setting)}")
        return [float(w) for w in setting], None
    if setting not in WEIGHTINGS:
        raise ConfigError(f"config key 'train.class_weights' must be {', '.join(WEIGHTINGS)} or a list of numbers, "
                          f"got {setting!r}")
    cached = None if cache is None else read_class_weights(Path(cache), setting, classes)
    if cached is not None:
        return cached, None
    counts = count_labels(dataset, len(classes), info, device, quiet)
    weights = WEIGHTINGS[setting](counts)
    return weights, {"method": setting, "classes": list(classes), "weights": weights, **asdict(counts)}
