"""The Python API behind ``visattn predict``: :class:`Predictor`, a trained model loaded once over
RGB images, image files and videos, and :class:`FilePrediction`, what it did with one file.
"""
from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import classes_and_palette, image_to_tensor
from ..data.inputs import picture_loader, same_size_batches
from ..data.video import VideoReader, is_video, write_video
from .config import Config
from ..trained import load_trained
from .inference import segment, segment_options

if TYPE_CHECKING:
    from .predictions import PredictionWriter

__all__ = ["Predictor", "FilePrediction"]


@dataclass
class FilePrediction:
    """What :meth:`Predictor.predict_files` did with one input file.

    Attributes:
        path: the input file.
        written: the file written (an image: its prediction, the mask of the picture set; a video:
            its overlay video); ``None`` for a classifier or a skipped file.
        files: every file written for it (the picture set: mask, overlay and legend).
        top: a classifier's most probable classes, ``(name, probability)``, most probable first.
        frames: a video's number of frames.
        frames_folder: the folder of a video's per-frame predictions, if they were written.
        error: why the file was skipped (it cannot be read, segmented or written), else ``None``.
        notes: what reading changed in the image (:func:`visattn.data.segmentation.image_notes`:
            an alpha channel dropped, 16 bits scaled to 8).
    """

    path: Path
    written: Path | None = None
    files: list[Path] = field(default_factory=list)
    top: list[tuple[str, float]] | None = None
    frames: int | None = None
    frames_folder: Path | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)


class Predictor:
    """A trained model loaded once, predicting RGB images (``(H, W, 3)`` uint8 arrays) in batches.

    ``Predictor.from_run("runs/digits")`` loads a run (or a config with weights, a saved or Hub
    model); ``predict(images)`` gives the class ids ``(B, H, W)`` of same-size images (a
    classifier: probabilities ``(B, K)``); ``predict_files`` and ``predict_video`` write what
    ``visattn predict`` writes through a :class:`~visattn.engine.predictions.PredictionWriter`.

    Args:
        cfg: the model's config (its ``data`` section gives the normalisation and classes).
        model: the model, in eval mode on ``device``.
        device: where the images go (default: the model's parameters' device).
        amp: autocast dtype (``torch.bfloat16``, ``torch.float16``) or ``None`` for full precision.
        options: keyword arguments of :func:`segment` over the config's ``eval`` section
            (segmentation models only).
    """

    def __init__(self, cfg: Config, model: nn.Module, device: torch.device | str | None = None,
                 amp: torch.dtype | None = None, **options) -> None:
        self.cfg, self.model, self.amp = cfg, model, amp
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.classes, _ = classes_and_palette(cfg.data)
        self.segmentation = cfg.task == "segmentation"
        if options and not self.segmentation:
            raise ValueError(f"segmentation options {', '.join(options)} given for a classifier ({cfg.model.name!r})")
        self.options = {**segment_options(cfg), **options} if self.segmentation else {}

    @classmethod
    def from_run(cls, run: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
                 weights: str | os.PathLike | None = None, overrides: Iterable[str] = (),
                 device: torch.device | str = "cpu", amp: torch.dtype | None = None, trust_code: bool = False,
                 **options) -> Predictor:
        """The model of ``run`` or ``config`` + ``weights`` (see :func:`~visattn.engine.run_dir.load_trained`)."""
        cfg, model = load_trained(run, config, weights, overrides, device, trust_code)
        return cls(cfg, model, device, amp, **options)

    def predict(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Class ids ``(B, H, W)`` of same-size ``(H, W, 3)`` uint8 RGB images; a classifier's class
        probabilities ``(B, K)``."""
        x = torch.cat([image_to_tensor(rgb, self.cfg.data.mean, self.cfg.data.std) for rgb in images]).to(self.device)
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            if not self.segmentation:
                return self.model(x).float().softmax(1).cpu().numpy()
            return segment(self.model, x, len(self.classes), **self.options).argmax(1).cpu().numpy()

    def predict_each(self, images: Sequence[np.ndarray]) -> list[np.ndarray | Exception]:
        """:meth:`predict`, one result per image; where the batch fails, image by image, each failing
        one giving its error instead of a result."""
        try:
            return list(self.predict(images))
        except (ValueError, RuntimeError) as err:
            if len(images) == 1:
                return [err]
            return [self.predict_each([image])[0] for image in images]

    def top_classes(self, probabilities: np.ndarray, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most probable classes of one image's probabilities ``(K,)``, most probable first."""
        order = np.argsort(-probabilities, kind="stable")[:k]
        return [(self.classes[i], float(probabilities[i])) for i in order]

    def predict_video(self, path: str | os.PathLike, base: str | os.PathLike, writer: PredictionWriter,
                      frame_writer: PredictionWriter | None = None, batch_size: int = 8,
                      progress: bool = False) -> tuple[Path, int]:
        """Segment the frames of video ``path`` in batches of up to ``batch_size`` into the overlay
        video ``<base>_overlay<ext>`` (``writer``'s colours), and with ``frame_writer`` each frame's
        prediction as ``<base>/000000...``; the overlay video and its number of frames."""
        if not self.segmentation:
            raise ValueError(f"videos need a segmentation model; {self.cfg.model.name!r} is a classifier")
        path, base = Path(path), Path(base)
        out = Path(f"{base}_overlay{path.suffix}")
        with VideoReader(path) as reader, tqdm(total=reader.frames, desc=path.name, unit="frame", leave=False,
                                               file=sys.stderr, disable=not progress) as bar:
            overlays = self._frame_overlays(reader, base, writer, frame_writer, batch_size, bar)
            count = write_video(out, overlays, reader.fps)
        return out, count

    def _frame_overlays(self, frames: Iterable[np.ndarray], base: Path, writer: PredictionWriter,
                        frame_writer: PredictionWriter | None, batch_size: int, bar: tqdm) -> Iterator[np.ndarray]:
        for batch in same_size_batches(enumerate(frames), batch_size):
            for (index, rgb), pred in zip(batch, self.predict([rgb for _, rgb in batch])):
                if frame_writer is not None:
                    frame_writer.write(base / f"{index:06d}", pred, rgb)
                bar.update()
                yield writer.overlay(rgb, pred)

    def predict_files(self, files: Sequence[tuple[str | os.PathLike, str | os.PathLike]], writer: PredictionWriter,
                      frame_writer: PredictionWriter | None = None, batch_size: int = 8, workers: int = 0,
                      progress: bool = False) -> Iterator[FilePrediction]:
        """Predict image and video files, given as ``(file, output base)`` pairs, in order: images
        decoded ahead by ``workers`` processes and predicted in batches of up to ``batch_size``
        consecutive images of one size, written by ``writer`` as ``<base><ending>`` (a classifier's
        top classes returned instead); videos as :meth:`predict_video`. One :class:`FilePrediction`
        per file; a file that cannot be read, predicted or written is reported, not raised."""
        files = [(Path(path), Path(base)) for path, base in files]
        pictures = picture_loader([path for path, _ in files], workers)
        for videos, group in itertools.groupby(zip(files, pictures), lambda item: is_video(item[0][0])):
            if videos:
                for (path, base), _ in group:
                    yield self._video_file(path, base, writer, frame_writer, batch_size, progress)
                continue
            unreadable: list[FilePrediction] = []
            for batch in same_size_batches(self._readable(group, unreadable), batch_size):
                yield from _drain(unreadable)
                for ((path, base, notes), rgb), pred in zip(batch, self.predict_each([rgb for _, rgb in batch])):
                    yield self._image_file(path, base, pred, rgb, writer, notes)
            yield from _drain(unreadable)

    @staticmethod
    def _readable(group: Iterable, unreadable: list[FilePrediction]) -> Iterator:
        """``((path, base, notes), image)`` of the decoded images of ``group``; the files that could
        not be read go to ``unreadable``."""
        for (path, base), (picture, notes) in group:
            if isinstance(picture, str):
                unreadable.append(FilePrediction(path, error=picture, notes=notes))
            else:
                yield (path, base, notes), picture

    def _image_file(self, path: Path, base: Path, pred: np.ndarray | Exception, rgb: np.ndarray,
                    writer: PredictionWriter, notes: list[str]) -> FilePrediction:
        try:
            if isinstance(pred, Exception):  # its batch failed, and so did it alone
                raise pred
            if not self.segmentation:
                return FilePrediction(path, top=self.top_classes(pred), notes=notes)
            files = writer.write_files(base, pred, rgb)
            return FilePrediction(path, written=files[0], files=files, notes=notes)
        except (ValueError, OSError, RuntimeError) as err:
            return FilePrediction(path, error=str(err), notes=notes)

    def _video_file(self, path: Path, base: Path, writer: PredictionWriter, frame_writer: PredictionWriter | None,
                    batch_size: int, progress: bool) -> FilePrediction:
        try:
            out, count = self.predict_video(path, base, writer, frame_writer, batch_size, progress)
        except (ValueError, OSError, RuntimeError) as err:
            return FilePrediction(path, error=str(err))
        return FilePrediction(path, written=out, files=[out], frames=count,
                              frames_folder=base if frame_writer is not None else None)


def _drain(results: list[FilePrediction]) -> Iterator[FilePrediction]:
    """The results collected so far, emptying the list."""
    yield from results
    results.clear()
