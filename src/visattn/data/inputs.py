"""What ``visattn predict`` reads: the images and videos that files, folders, globs and ``@LIST``
files name, and a dataset that decodes them one by one (in ``DataLoader`` workers) for batching.

``@LIST`` names a text file of inputs, one file, folder or glob per line (blank lines and lines
starting with ``#`` skipped; relative paths are relative to the list's folder; at most
:data:`MAX_LIST_BYTES`). Each input found comes with its root (a folder itself, a file's folder, a
glob's fixed leading folders), below which the output folder mirrors it
(:func:`visattn.engine.predictions.output_names`).
"""
from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset, default_collate

from ..bounded import UnreadableFileError, read_text
from .segmentation import IMAGE_EXTENSIONS, read_image
from .video import VIDEO_EXTENSIONS, is_video

__all__ = ["LIST_PREFIX", "MAX_LIST_BYTES", "find_inputs", "Pictures", "picture_loader", "same_size_batches",
           "collate_same_size", "same_size_runs"]

LIST_PREFIX = "@"
MAX_LIST_BYTES = 16 << 20  # an @LIST file: some hundred thousand paths
_EXTENSIONS = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS


def find_inputs(inputs: Sequence[str], exclude: str | os.PathLike | None = None) -> list[tuple[Path, Path]]:
    """``(file, root)`` for each image and video the inputs name, in order, without repeats and
    without the files under the folder ``exclude`` (the output folder). An input that names none
    is a ``FileNotFoundError``."""
    found: dict[Path, tuple[Path, Path]] = {}
    for item in inputs:
        groups = _read_list(Path(item[len(LIST_PREFIX):]), exclude) if item.startswith(LIST_PREFIX) else \
            [_files(item, exclude)]
        for files, root in groups:
            for file in files:
                found.setdefault(Path(os.path.abspath(file)), (file, root))
    return list(found.values())


def _files(item: str, exclude: str | os.PathLike | None) -> tuple[list[Path], Path]:
    """The images and videos one input (a file, folder or glob) names, and their root."""
    def wanted(p: Path) -> bool:
        return p.suffix.lower() in _EXTENSIONS and p.is_file() and not (exclude is not None and _inside(p, exclude))

    path = Path(item)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if wanted(p))
        if not files:
            raise FileNotFoundError(f"no images in folder {item!r} (extensions: {', '.join(_EXTENSIONS)})")
        return files, path
    if path.is_file():
        return [path], path.parent
    files = sorted(p for p in map(Path, glob.glob(item, recursive=True)) if wanted(p))
    if not files:
        raise FileNotFoundError(f"no image matches {item!r}")
    return files, _glob_root(item)


def _read_list(path: Path, exclude: str | os.PathLike | None) -> list[tuple[list[Path], Path]]:
    """:func:`_files` of each line of the list file ``path``."""
    if not path.is_file():
        raise FileNotFoundError(f"cannot read the list {LIST_PREFIX}{path}: no such file")
    try:
        lines = read_text(path, MAX_LIST_BYTES).splitlines()
    except UnreadableFileError as err:
        raise ValueError(f"cannot read the {LIST_PREFIX}LIST file: {err}") from None  # err names the file
    groups = []
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if entry and not entry.startswith("#"):
            try:
                groups.append(_files(str(path.parent / entry), exclude))
            except FileNotFoundError as err:
                raise FileNotFoundError(f"{path}, line {number}: {err}") from None
    if not groups:
        raise FileNotFoundError(f"the list {LIST_PREFIX}{path} names no file")
    return groups


def _glob_root(pattern: str) -> Path:
    """The folder a glob pattern searches: its leading parts without wildcards."""
    fixed = []
    for part in Path(pattern).parts[:-1]:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _inside(path: Path, folder: str | os.PathLike) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))


class Pictures(Dataset):
    """The decoded files, each as ``(picture, notes)``: the picture is an image's ``(H, W, 3)``
    uint8 array, or the message why it cannot be read, or ``None`` for a video (decoded frame by
    frame where it is used); the notes say what reading changed in the image
    (:func:`~visattn.data.segmentation.image_notes`), for the process that shows them."""

    def __init__(self, paths: Sequence[str | os.PathLike]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray | str | None, list[str]]:
        path = self.paths[index]
        notes: list[str] = []
        if is_video(path):
            return None, notes
        try:
            return np.array(read_image(path, notes=notes)), notes
        except ValueError as err:
            return str(err), notes


def _as_is(item):
    """A ``DataLoader``'s ``collate_fn`` that hands each item over unchanged (no tensors)."""
    return item


def picture_loader(paths: Sequence[str | os.PathLike], workers: int = 0) -> DataLoader:
    """The :class:`Pictures` of ``paths`` in order, one at a time, read ahead by ``workers`` processes."""
    return DataLoader(Pictures(paths), batch_size=None, collate_fn=_as_is, num_workers=workers)


def same_size_batches(items: Iterable, batch_size: int | None = None,
                      shape: Callable[[Any], Any] = lambda item: item[1].shape) -> Iterator[list]:
    """Runs of up to ``batch_size`` (``None``: any number of) consecutive items of one ``shape``
    (default: of ``(key, picture)`` items, the picture's)."""
    batch: list = []
    for item in items:
        if batch and (len(batch) == batch_size or shape(item) != shape(batch[0])):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def collate_same_size(items: list) -> list:
    """A loader's batch of ``(image, target)`` items as runs of consecutive items of one image size,
    each collated: a dataset of mixed image sizes evaluates at the batch size it can."""
    return [default_collate(run) for run in same_size_batches(items, shape=lambda item: item[0].shape)]


def same_size_runs(loader: Iterable[list]) -> Iterator:
    """The batches of a loader whose ``collate_fn`` is :func:`collate_same_size`, one per run."""
    return (run for runs in loader for run in runs)
