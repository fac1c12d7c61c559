"""Segmentation predictions as files, for ``visattn predict`` and ``visattn eval --save-predictions``.

A prediction of image ``name`` is written as ``<name><ending>`` in one of these formats:

========== ===================== ==============================================================
format     ending                content
========== ===================== ==============================================================
labelids   ``_labelIds.png``     the dataset's own label values
                                 (:func:`visattn.data.registry.label_convention`): Cityscapes
                                 labelIds (single channel, as the benchmark server and
                                 ``cityscapesscripts`` read them), ADE20K classes 1..150
                                 (``reduce_zero_label`` undone), VOC class ids in a palette PNG
                                 with the VOC colours; train ids for other datasets
trainids   ``_trainIds.png``     the model's class indices ``0..K-1``, single channel
mask       ``_mask.png``         the class indices in a palette PNG with the dataset's colours
color      ``_color.png``        RGB, each class in the dataset's colour
overlay    ``_overlay.png``      those colours blended over the image
``None``   ``_mask.png``,        the picture set: the mask, the overlay, and image, mask and
           ``_overlay.png``,     overlay with the names of the classes found (the legend, drawn
           ``_legend.png``       when matplotlib, the ``viz`` extra, is installed)
========== ===================== ==============================================================

Each single format writes one file per image, so a folder of ``labelids`` predictions of
Cityscapes images (``<city>_<seq>_<frame>_leftImg8bit.png`` ->
``<city>_<seq>_<frame>_leftImg8bit_labelIds.png``) holds exactly the one file per frame that
``cityscapesscripts`` looks for (``<city>_<seq>_<frame>*.png``).
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .._extras import MissingExtraError, require
from ..data.palettes import colorize
from ..data.registry import DataConfig, SeededTransform, classes_and_palette, label_convention
from ..data.video import is_video
from ..viz import save_prediction
from ..weights import atomic_write
from .inference import segment
from .metrics import SegmentationMetrics

__all__ = ["FORMATS", "PredictionWriter", "output_names", "dataset_names", "evaluate_and_save"]

FORMATS = {"labelids": "_labelIds.png", "trainids": "_trainIds.png", "mask": "_mask.png", "color": "_color.png",
           "overlay": "_overlay.png"}


def _palette_png(values: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    image = Image.fromarray(values.astype(np.uint8))
    image.putpalette([c for rgb in palette for c in rgb])
    return image


class PredictionWriter:
    """Writes ``(H, W)`` train-id predictions of a run whose config section ``data`` is ``data`` in
    ``format`` (a key of :data:`FORMATS`, or ``None`` for the picture set); ``alpha`` is the
    overlay's opacity of the class colours.

    ``legends``: whether the picture set has its legend (``None``: when matplotlib is installed;
    :attr:`no_legends` then says why there are none)."""

    def __init__(self, data: DataConfig, format: str | None = None, alpha: float = 0.5,
                 legends: bool | None = None) -> None:
        if format is not None and format not in FORMATS:
            raise ValueError(f"unknown prediction format {format!r}; choose one of {', '.join(FORMATS)}")
        self.classes, self.palette = classes_and_palette(data)
        self.label_ids, self.label_palette = label_convention(data)
        self.format, self.alpha = format, alpha
        self.no_legends: str | None = None
        if format is None and legends is None:
            try:
                require("matplotlib", extra="viz")
            except MissingExtraError as err:
                self.no_legends = str(err)
        elif format is None and not legends:
            self.no_legends = "legends not asked for"

    def needs_image(self) -> bool:
        return self.format in (None, "overlay")

    def write(self, base: str | os.PathLike, pred: np.ndarray, rgb: np.ndarray | None = None) -> Path:
        """Write ``pred`` (train ids) of the ``(H, W, 3)`` uint8 image ``rgb`` (needed by the overlay
        and the picture set) to ``<base><ending>``; returns that file (the picture set: the mask)."""
        return self.write_files(base, pred, rgb)[0]

    def write_files(self, base: str | os.PathLike, pred: np.ndarray, rgb: np.ndarray | None = None) -> list[Path]:
        """:meth:`write`, returning every file written (the picture set: mask, overlay and legend)."""
        pred = np.asarray(pred, dtype=np.uint8)
        if self.format is None:
            written = [_save_png(_palette_png(pred, self.palette), f"{base}{FORMATS['mask']}"),
                       _save_png(Image.fromarray(self.overlay(rgb, pred)), f"{base}{FORMATS['overlay']}")]
            if self.no_legends is None:
                written.append(save_prediction(rgb, pred, self.classes, self.palette, f"{base}_legend.png", self.alpha))
            return written
        if self.format == "labelids":
            values = self.label_ids[pred]
            image = Image.fromarray(values) if self.label_palette is None else _palette_png(values, self.label_palette)
        elif self.format == "trainids":
            image = Image.fromarray(pred)
        elif self.format == "mask":
            image = _palette_png(pred, self.palette)
        elif self.format == "color":
            image = Image.fromarray(colorize(pred, self.palette))
        else:
            image = Image.fromarray(self.overlay(rgb, pred))
        return [_save_png(image, f"{base}{FORMATS[self.format]}")]

    def overlay(self, rgb: np.ndarray | None, pred: np.ndarray) -> np.ndarray:
        """The class colours of ``pred`` blended over ``rgb`` with opacity ``alpha``, ``(H, W, 3)`` uint8."""
        if rgb is None:
            raise ValueError("an overlay needs the image")
        blended = (1 - self.alpha) * rgb + self.alpha * colorize(pred, self.palette)
        return blended.round().astype(np.uint8)


def _save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def output_names(images: Sequence[tuple[Path, Path]]) -> list[Path]:
    """Each image's (or video's) output name without its ending, relative to the output folder, one
    per file: ``images`` are ``(file, root)`` pairs and the names mirror the tree below the roots'
    common folder. A name is the file's without its extension, unless another file's name would
    then be the same (ignoring case, as some file systems do), or, for a video (whose frames may go
    to the folder of its name), lie in that folder: those keep their extension, until no two names
    clash (``x.png``, ``x.jpg``, ``x.png.png`` -> ``x.png``, ``x.jpg``, ``x.png.png``; ``clip.mp4``
    beside ``clip/0.png`` -> ``clip.mp4``, ``clip/0``)."""
    common = Path(os.path.commonpath([os.path.abspath(root) for _, root in images]))
    relative = [Path(os.path.abspath(image)).relative_to(common) for image, _ in images]
    videos = [is_video(rel) for rel in relative]
    names = [rel.with_suffix("") for rel in relative]
    while True:
        keys = [str(name).casefold() for name in names]
        counts = Counter(keys)
        folders = {parent for key in keys for parent in _parents(key)}
        # each round gives at least one name its extension back; full paths are unique (but may
        # differ in case alone, which no renaming helps)
        clashing = [i for i, key in enumerate(keys) if names[i] != relative[i]
                    and (counts[key] > 1 or (videos[i] and key in folders))]
        if not clashing:
            return names
        for i in clashing:
            names[i] = relative[i]


def _parents(key: str) -> Iterator[str]:
    """The folders of a relative name: ``"a/b/c"`` -> ``"a/b"``, ``"a"``."""
    parent = os.path.dirname(key)
    while parent:
        yield parent
        parent = os.path.dirname(parent)


def dataset_names(dataset) -> list[Path]:
    """Output names of a dataset's items: its image files' tree, or the item index when the
    dataset has no files (the digit scenes)."""
    base = dataset.dataset if isinstance(dataset, SeededTransform) else dataset
    pairs = getattr(base, "pairs", None)
    if pairs is None:
        return [Path(f"{i:05d}") for i in range(len(base))]
    return output_names([(Path(image), Path(image).parent) for image, _ in pairs])


def _unnormalise(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised ``(B, 3, H, W)`` batch back to ``(B, H, W, 3)`` uint8 images."""
    mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return ((image.cpu() * std_t + mean_t) * 255).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def evaluate_and_save(model: nn.Module, batches: Iterable, num_classes: int, names: Sequence[str | os.PathLike],
                      writer: PredictionWriter, out_dir: str | os.PathLike, device: torch.device | str = "cpu",
                      mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0),
                      amp_dtype: torch.dtype | None = None, **segment_kwargs) -> dict:
    """:func:`visattn.engine.metrics.evaluate` of a segmentor that also writes the prediction of the
    ``i``-th image of ``batches`` with ``writer`` as ``out_dir / names[i]`` (e.g. :func:`dataset_names`
    of an unshuffled loader's dataset). ``mean``/``std``: the normalisation to undo for overlays;
    ``amp_dtype``: run the model under ``torch.autocast`` in that precision."""
    device = torch.device(device)
    names = iter(names)
    was_training = model.training
    model.eval()
    metrics = SegmentationMetrics(num_classes, device)
    try:
        for image, target in batches:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                pred = segment(model, image.to(device), num_classes, **segment_kwargs).argmax(1)
            metrics.update(pred, target.to(device))
            rgb = _unnormalise(image, mean, std) if writer.needs_image() else [None] * len(pred)
            for p, picture in zip(pred.cpu().numpy(), rgb):
                writer.write(Path(out_dir) / next(names), p, picture)
    finally:
        model.train(was_training)
    return metrics.compute()
