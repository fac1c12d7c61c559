"""``visattn predict``: images and videos (files, folders, globs, lists) -> colour masks with the
dataset palette and overlays, or label files for benchmark servers.

For each input image ``name.ext`` it writes ``name_mask.png`` (a palette PNG: pixel values are class
ids, shown in the dataset's colours), ``name_overlay.png`` (the colours blended over the image) and
``name_legend.png`` (image, mask, overlay and the names of the classes found); with ``--format``
one file in that format instead (:mod:`visattn.engine.predictions`: ``labelids`` writes
``name_labelIds.png`` in the dataset's own label ids, e.g. Cityscapes labelIds).
Classifiers print their top-5 classes instead.

A video ``clip.mp4`` (:data:`visattn.data.video.VIDEO_FORMATS`; needs the ``video`` extra) gives
``clip_overlay.mp4``: every frame with the colours over it, at the same size and frame rate; with
``--frames`` also each frame's prediction as ``clip/000000_mask.png``, ... (or in ``--format``).

``@LIST`` names a text file of inputs, one file, folder or glob per line (blank lines and lines
starting with ``#`` skipped; relative paths are relative to the list's folder).

All inputs are listed first (for the output names and the progress bar's total); images are
decoded as they are needed, read ahead by ``--workers`` processes, and segmented in batches of up to
``--batch-size`` consecutive images of one size (a batch's predictions equal those of its images
one at a time); so are a video's frames. ``--amp bf16|fp16`` runs the model in mixed precision.

The output folder mirrors the inputs' tree below their common root (a folder itself, a file's
folder, a glob's fixed leading folders), so ``a/x.png`` and ``b/x.png`` give ``a/x_mask.png`` and
``b/x_mask.png``; images of one folder that share a stem (``x.png``, ``x.jpg``) keep their extension
(``x.png_mask.png``). An image or video that cannot be read or segmented is skipped and reported at
the end. Exit status: 0 all written, 1 some skipped, 2 nothing to do (an input names no image or
video, bad run, config or device).
"""
from __future__ import annotations

import argparse
import glob
import itertools
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from visattn.commands.common import (add_amp_argument, add_run_arguments, add_segment_arguments,
                                     resolve_inference_device, segment_kwargs)

if TYPE_CHECKING:
    import numpy as np

T = TypeVar("T")
LIST_PREFIX = "@"


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image or video files, folders, glob patterns, or @LIST: a text "
                        "file naming one of these per line (relative to the list's folder)")
    add_run_arguments(parser)
    add_amp_argument(parser)
    add_segment_arguments(parser)
    parser.add_argument("--batch-size", type=_int_at_least(1), default=8, metavar="N",
                        help="images (or video frames) of one size segmented together (default 8)")
    parser.add_argument("--workers", type=_int_at_least(0), metavar="N",
                        help="processes reading images ahead (default data.workers; 0: read in this process)")
    parser.add_argument("--output", default="predictions", help="output folder (default ./predictions)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the mask colours")
    parser.add_argument("--frames", action="store_true", help="also write each video frame's prediction as "
                        "VIDEO/000000_mask.png, ... (or as --format says)")
    add_format_argument(parser, "(default: the colour mask, overlay and legend)")


def add_format_argument(parser: argparse.ArgumentParser, default_text: str, default: str | None = None) -> None:
    """``--format``, the keys of :data:`visattn.engine.predictions.FORMATS` (spelt out here so that
    ``--help`` does not import torch)."""
    parser.add_argument("--format", choices=("labelids", "trainids", "mask", "color", "overlay"), default=default,
                        help="one file per image: labelids = the dataset's own label ids (Cityscapes labelIds, "
                             "ADE20K with 0 = other, VOC palette PNGs), trainids = the class indices, mask = the "
                             "class indices in a palette PNG with the dataset's colours, color = the dataset's "
                             f"colours (RGB), overlay = those colours over the image {default_text}")


def _glob_root(pattern: str) -> Path:
    """The folder a glob pattern searches: its leading parts without wildcards."""
    parts = Path(pattern).parts[:-1]
    fixed = []
    for part in parts:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _expand(inputs: Sequence[str], output: Path) -> list[tuple[Path, Path]]:
    """``(file, root)`` for each image and video the inputs name, in order, without repeats and
    without the files under ``output``. An input that names none is a ``FileNotFoundError``."""
    found: dict[Path, tuple[Path, Path]] = {}
    for item in inputs:
        groups = _read_list(Path(item[len(LIST_PREFIX):]), output) if item.startswith(LIST_PREFIX) else \
            [_files(item, output)]
        for files, root in groups:
            for file in files:
                found.setdefault(Path(os.path.abspath(file)), (file, root))
    return list(found.values())


def _files(item: str, output: Path) -> tuple[list[Path], Path]:
    """The images and videos one input (a file, folder or glob) names, and their root."""
    from visattn.data.segmentation import IMAGE_EXTENSIONS
    from visattn.data.video import VIDEO_EXTENSIONS

    extensions = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS

    def wanted(p: Path) -> bool:
        return p.suffix.lower() in extensions and p.is_file() and not _inside(p, output)

    path = Path(item)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if wanted(p))
        if not files:
            raise FileNotFoundError(f"no images in folder {item!r} (extensions: {', '.join(extensions)})")
        return files, path
    if path.is_file():
        return [path], path.parent
    files = sorted(p for p in map(Path, glob.glob(item, recursive=True)) if wanted(p))
    if not files:
        raise FileNotFoundError(f"no image matches {item!r}")
    return files, _glob_root(item)


def _read_list(path: Path, output: Path) -> list[tuple[list[Path], Path]]:
    """:func:`_files` of each line of the list file ``path``."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise FileNotFoundError(f"cannot read the list {LIST_PREFIX}{path}: {err}") from None
    groups = []
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if entry and not entry.startswith("#"):
            try:
                groups.append(_files(str(path.parent / entry), output))
            except FileNotFoundError as err:
                raise FileNotFoundError(f"{path}, line {number}: {err}") from None
    if not groups:
        raise FileNotFoundError(f"the list {LIST_PREFIX}{path} names no file")
    return groups


def _inside(path: Path, folder: Path) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))


class _Pictures:
    """The decoded inputs for a ``DataLoader``: an image's ``(H, W, 3)`` uint8 array, or the message
    why it cannot be read; ``None`` for a video (decoded frame by frame where it is segmented)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        import numpy as np

        from visattn.data import read_image
        from visattn.data.video import is_video

        path = self.paths[index]
        if is_video(path):
            return None
        try:
            return np.array(read_image(path))
        except ValueError as err:
            return str(err)


def _as_is(item):
    """A ``DataLoader``'s ``collate_fn`` that hands each item over unchanged (no tensors)."""
    return item


def _same_size_batches(items: Iterable[tuple[T, np.ndarray]], batch_size: int) -> Iterator[list[tuple[T, np.ndarray]]]:
    """Runs of up to ``batch_size`` consecutive ``(key, picture)`` items whose pictures share a shape."""
    batch: list = []
    for item in items:
        if batch and (len(batch) == batch_size or item[1].shape != batch[0][1].shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def _each(predict: Callable[[list], Sequence], pictures: list) -> list:
    """``predict(pictures)``, one result per picture; where the batch fails, picture by picture,
    each failing one giving its error instead of a result."""
    try:
        return list(predict(pictures))
    except (ValueError, RuntimeError) as err:
        if len(pictures) == 1:
            return [err]
        return [_each(predict, [picture])[0] for picture in pictures]


class _Predictor:
    """A loaded run's model over batches of same-sized RGB pictures, writing what ``visattn predict``
    writes: ``writer``'s files (or a classifier's top-5 line) per image, the overlay video (and with
    ``frame_writer`` each frame's file) per video."""

    def __init__(self, cfg, model, device, amp, options: dict, writer, frame_writer, batch_size: int) -> None:
        self.cfg, self.model, self.device, self.amp, self.options = cfg, model, device, amp, options
        self.writer, self.frame_writer, self.batch_size = writer, frame_writer, batch_size
        self.segmentation = cfg.task == "segmentation"

    def __call__(self, pictures: list[np.ndarray]):
        """Class ids ``(B, H, W)`` of same-sized ``(H, W, 3)`` pictures (classifiers: probabilities ``(B, K)``)."""
        import torch

        from visattn.data import image_to_tensor
        from visattn.engine.inference import segment

        x = torch.cat([image_to_tensor(rgb, self.cfg.data.mean, self.cfg.data.std) for rgb in pictures]).to(self.device)
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            if not self.segmentation:
                return self.model(x).float().softmax(1).cpu()
            return segment(self.model, x, len(self.writer.classes), **self.options).argmax(1).cpu().numpy()

    def image(self, path: Path, base: Path, pred, rgb: np.ndarray) -> str:
        """Write (or print) the prediction ``pred`` of image ``path``; the line to show."""
        if isinstance(pred, Exception):  # its batch failed, and so did it alone
            raise pred
        if not self.segmentation:
            top = pred.topk(min(5, len(self.writer.classes)))
            return f"{path}: " + ", ".join(f"{self.writer.classes[i]} {100 * v:.1f}%"
                                           for v, i in zip(top.values, top.indices))
        return f"{path} -> {self.writer.write(base, pred, rgb)}"

    def video(self, path: Path, base: Path) -> str:
        """Segment the frames of video ``path`` in batches into ``<base>_overlay<ext>``; the line to show."""
        from tqdm.auto import tqdm

        from visattn.data.video import VideoReader, write_video

        with VideoReader(path) as reader, tqdm(total=reader.frames, desc=path.name, unit="frame", leave=False,
                                               file=sys.stderr) as bar:
            def overlays() -> Iterator[np.ndarray]:
                for batch in _same_size_batches(enumerate(reader), self.batch_size):
                    for (index, rgb), pred in zip(batch, self([rgb for _, rgb in batch])):
                        if self.frame_writer is not None:
                            self.frame_writer.write(base / f"{index:06d}", pred, rgb)
                        bar.update()
                        yield self.writer.overlay(rgb, pred)

            out = Path(f"{base}_overlay{path.suffix}")
            count = write_video(out, overlays(), reader.fps)
        frames = f"; each one's prediction under {base}" if self.frame_writer is not None else ""
        return f"{path} -> {out} ({count} frames{frames})"


def run(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from visattn._extras import require
    from visattn.data.video import is_video
    from visattn.engine.config import ConfigError
    from visattn.engine.predictions import PredictionWriter, output_names
    from visattn.trained import load_trained

    out_dir = Path(args.output)
    try:
        sources = _expand(args.inputs, out_dir)
        device, amp = resolve_inference_device(args)
        cfg, model = load_trained(args.run, args.config, args.weights, args.overrides, device, args.trust_code)
        writer = PredictionWriter(cfg.data, args.format, args.alpha)
        has_videos = any(is_video(path) for path, _ in sources)
        if cfg.task != "segmentation" and args.format is not None:
            raise ValueError(f"--format applies to segmentation models; {cfg.model.name!r} is a classifier")
        if cfg.task != "segmentation" and has_videos:
            raise ValueError(f"videos need a segmentation model; {cfg.model.name!r} is a classifier")
        if has_videos:
            require("av", extra="video")
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"visattn predict: error: {err}", file=sys.stderr)
        return 2
    predictor = _Predictor(cfg, model, device, amp, segment_kwargs(cfg, args) if cfg.task == "segmentation" else {},
                           writer, PredictionWriter(cfg.data, args.format or "mask") if args.frames else None,
                           args.batch_size)
    loader = DataLoader(_Pictures([path for path, _ in sources]), batch_size=None, collate_fn=_as_is,
                        num_workers=cfg.data.workers if args.workers is None else args.workers)
    skipped: list[str] = []
    bar = tqdm(total=len(sources), desc="predict", unit="file", file=sys.stderr)

    def attempt(path: Path, write: Callable[[], str]) -> None:
        try:
            bar.write(write())
        except (ValueError, OSError, RuntimeError) as err:
            skipped.append(f"{path}: {err}")
        bar.update()

    def readable(group: Iterable) -> Iterator:
        for (path, _), name, picture in group:
            if isinstance(picture, str):
                skipped.append(f"{path}: {picture}")
                bar.update()
            else:
                yield (path, out_dir / name), picture

    for videos, group in itertools.groupby(zip(sources, output_names(sources), loader), lambda s: is_video(s[0][0])):
        if videos:
            for (path, _), name, _ in group:
                attempt(path, lambda: predictor.video(path, out_dir / name))
            continue
        for batch in _same_size_batches(readable(group), args.batch_size):
            for ((path, base), rgb), pred in zip(batch, _each(predictor, [rgb for _, rgb in batch])):
                attempt(path, lambda: predictor.image(path, base, pred, rgb))
    bar.close()
    if skipped:
        kind = "images and videos" if has_videos else "images"
        print(f"visattn predict: skipped {len(skipped)} of {len(sources)} {kind}:", *skipped, sep="\n  ",
              file=sys.stderr)
        return 1
    return 0
