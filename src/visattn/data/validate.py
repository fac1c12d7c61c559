"""Up-front checks of a dataset's files: every image and mask opens, every mask is a
single-channel label image, every image has its mask's size (as read: EXIF orientation applied),
all from the file headers, and every mask holds only the dataset's label values (the masks are
decoded, the images are not). A bad file then stops a run before its first step instead of
mid-epoch or at the final evaluation. What only decoding an image reveals (a truncated file) is
still found when the item is read. What reading changes in an image (an alpha channel dropped,
16 bits scaled to 8: :func:`visattn.data.segmentation.image_notes`) is said once.

The synthetic in-memory datasets (digits) have no files and nothing to check.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import DatasetFolder
from tqdm.auto import tqdm

from .segmentation import MASK_MODES, SegmentationDataset, image_notes, oriented_size, say_once

__all__ = ["MASK_MODES", "DatasetFile", "dataset_files", "pair_problem", "find_bad_files", "bad_files_error"]


class DatasetFile(NamedTuple):
    """One item's files: its image, its mask (``None`` for classification folders), and how the
    dataset reads that mask (raising a ``ValueError`` for a label value it does not know)."""

    image: Path
    mask: Path | None = None
    read_mask: Callable[[], object] | None = None


def dataset_files(dataset: Dataset) -> list[DatasetFile]:
    """The :class:`DatasetFile` of each item of a file-backed dataset; ``[]`` for in-memory
    datasets. Wrappers with a ``.dataset`` attribute are looked through."""
    while not isinstance(dataset, SegmentationDataset) and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    if isinstance(dataset, SegmentationDataset):
        return [DatasetFile(Path(image), Path(mask), functools.partial(dataset.load_mask, index))
                for index, (image, mask) in enumerate(dataset.pairs)]
    if isinstance(dataset, DatasetFolder):
        return [DatasetFile(Path(path)) for path, _ in dataset.samples]
    return []


def _header(path: os.PathLike, kind: str) -> tuple[tuple[int, int], str] | str:
    """``(size as read, mode)`` of the image file ``path``, else what is wrong with it; an image's
    :func:`~visattn.data.segmentation.image_notes` are said once."""
    try:
        with Image.open(path) as img:
            if kind == "image":
                for note in image_notes(img):
                    say_once(note, path)
            return oriented_size(img), img.mode
    except (OSError, SyntaxError, ValueError) as err:
        return f"cannot read {kind} {path}: {err}"


def pair_problem(image: os.PathLike, mask: os.PathLike | None = None,
                 read_mask: Callable[[], object] | None = None) -> str | None:
    """What is wrong with one item, from the file headers and, with ``read_mask`` (a
    :class:`DatasetFile`'s), the mask's label values; ``None`` when nothing is."""
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
    if read_mask is not None:
        try:
            read_mask()
        except ValueError as err:
            return str(err)
    return None


def find_bad_files(files: Sequence[DatasetFile | tuple], desc: str = "check files", quiet: bool = False) -> list[str]:
    """:func:`pair_problem` of every item's files (with a progress bar unless ``quiet``), the
    problems found."""
    problems = []
    for item in tqdm(files, desc=desc, disable=quiet or not files, unit="item", dynamic_ncols=True):
        problem = pair_problem(*item)
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
