"""Up-front checks of a dataset's files, read from their headers alone (no pixel is decoded): every
image and mask opens, every mask is a single-channel label image, and every image has its mask's
size. A bad file then stops a run before its first step instead of mid-epoch or at the final
evaluation. What only decoding reveals (a truncated file) is still found when the item is read.

The synthetic in-memory datasets (digits) have no files and nothing to check.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import DatasetFolder
from tqdm.auto import tqdm

from .segmentation import SegmentationDataset

__all__ = ["MASK_MODES", "dataset_files", "pair_problem", "find_bad_files", "bad_files_error"]

MASK_MODES = ("L", "P", "I", "I;16")
"""PIL modes of a single-channel label image."""

FilePair = tuple[Path, Path | None]


def dataset_files(dataset: Dataset) -> list[FilePair]:
    """``(image, mask)`` per item of a file-backed dataset (``mask`` is ``None`` for classification
    folders); ``[]`` for in-memory datasets. Wrappers with a ``.dataset`` attribute are looked through."""
    while not isinstance(dataset, SegmentationDataset) and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    if isinstance(dataset, SegmentationDataset):
        return [(Path(image), Path(mask)) for image, mask in dataset.pairs]
    if isinstance(dataset, DatasetFolder):
        return [(Path(path), None) for path, _ in dataset.samples]
    return []


def _header(path: os.PathLike, kind: str) -> tuple[tuple[int, int], str] | str:
    """``(size, mode)`` of the image file ``path``, else what is wrong with it."""
    try:
        with Image.open(path) as img:
            return img.size, img.mode
    except (OSError, SyntaxError, ValueError) as err:
        return f"cannot read {kind} {path}: {err}"


def pair_problem(image: os.PathLike, mask: os.PathLike | None) -> str | None:
    """What is wrong with one item, from the file headers; ``None`` when nothing is."""
    image_header = _header(image, "image")
    if isinstance(image_header, str):
        return image_header
    if mask is None:
        return None
    mask_header = _header(mask, "mask")
    if isinstance(mask_header, str):
        return mask_header
    (image_size, _), (mask_size, mask_mode) = image_header, mask_header
    if mask_mode not in MASK_MODES:
        return f"mask {mask} has mode {mask_mode!r}: expected a single-channel label image"
    if image_size != mask_size:
        return (f"image {image} is {image_size[0]}x{image_size[1]} but its mask {mask} "
                f"is {mask_size[0]}x{mask_size[1]}")
    return None


def find_bad_files(files: Sequence[FilePair], desc: str = "check files", quiet: bool = False) -> list[str]:
    """:func:`pair_problem` of every pair (with a progress bar unless ``quiet``), the problems found."""
    problems = []
    for image, mask in tqdm(files, desc=desc, disable=quiet or not files, unit="item", dynamic_ncols=True):
        problem = pair_problem(image, mask)
        if problem is not None:
            problems.append(problem)
    return problems


def bad_files_error(problems: Sequence[str], shown: int = 10) -> ValueError:
    """One error listing the first ``shown`` problems and counting the rest."""
    lines = [f"{len(problems)} bad dataset file{'s' if len(problems) > 1 else ''} (fix or remove them):"]
    lines += [f"  {p}" for p in problems[:shown]]
    if len(problems) > shown:
        lines.append(f"  ... and {len(problems) - shown} more")
    return ValueError("\n".join(lines))
