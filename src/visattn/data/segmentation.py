"""Semantic-segmentation datasets in their official on-disk layouts.

Every dataset is a list of ``(image file, mask file)`` pairs plus a lookup table from the values
stored in the mask files to training ids (``0..K-1``, 255 = ignore). Reading checks what usually
goes wrong silently: unreadable files, image/mask size mismatch, and mask values that are neither
a known label nor 255 — each is a ``ValueError`` naming the file.

The way back, training ids -> the dataset's own label values (what its annotation files, evaluation
scripts and benchmark servers use), is :func:`label_ids_lut` of the same table:
:data:`CITYSCAPES_LABEL_IDS`, :data:`ADE20K_LABEL_IDS`.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision import tv_tensors
from tqdm.auto import tqdm

from .palettes import ADE20K_CLASSES, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, VOC_CLASSES, voc_palette

__all__ = ["SegmentationDataset", "Cityscapes", "ADE20K", "PascalVOC", "MaskFolder", "read_image", "image_notes",
           "say_once", "oriented_size", "IGNORE_INDEX", "SIXTEEN_BIT_MODES", "MASK_MODES", "ALPHA_DROPPED", "SCALED_TO_8_BITS",
           "EXIF_ORIENTATION",
           "label_ids_lut", "CITYSCAPES_LABEL_IDS", "ADE20K_LABEL_IDS"]

IGNORE_INDEX = 255
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
"""PIL modes of single-channel images with more than 8 bits (``"I"``: 32-bit integers, read when
within 16 bits)."""
MASK_MODES = ("L", "P") + SIXTEEN_BIT_MODES
"""PIL modes of a single-channel label image."""
ALPHA_DROPPED = "images with an alpha channel are read without it (transparency dropped)"
SCALED_TO_8_BITS = "16-bit images are scaled to 8 bits (0..65535 -> 0..255)"
EXIF_ORIENTATION = 0x0112
"""The EXIF tag of the orientation (1: upright; 5..8: turned by 90 degrees)."""
_said: set[str] = set()  # the notes this process has printed


def read_image(path: str | os.PathLike, mode: str | None = "RGB", notes: list[str] | None = None) -> Image.Image:
    """Open and decode an image fully (so truncated files fail here, naming the file), turned
    upright by its EXIF orientation as image viewers show it.

    ``mode`` (``"RGB"``, ``"L"``): the 8-bit image; 16-bit values are scaled by the 16-bit range
    (``0..65535`` -> ``0..255``), an alpha channel is dropped, and images of more bits or floats are
    refused. What was changed (:func:`image_notes`) is appended to ``notes`` when given, else said
    once per process on stderr (:func:`say_once`). ``mode=None``: the stored values, e.g. a label
    mask's (a palette image's indices, a 16-bit image's values).
    """
    try:
        with Image.open(path) as opened:
            img = ImageOps.exif_transpose(opened)  # decodes; a copy even without an orientation
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
    if mode is None:
        return img
    for note in image_notes(img):
        if notes is not None:
            notes.append(note)
        else:
            say_once(note, path)
    if img.mode == mode:
        return img
    if img.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(img)
        if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
            raise ValueError(f"cannot read image {path}: 32-bit values {values.min()}..{values.max()}; "
                             "save it with 8 or 16 bits per channel")
        img = Image.fromarray((values / 257).round().astype(np.uint8))
    elif img.mode == "F":
        raise ValueError(f"cannot read image {path}: floating-point pixels; save it with 8 or 16 bits per channel")
    return img.convert(mode)


def image_notes(image: Image.Image) -> list[str]:
    """What reading the opened ``image`` (decoded or not: its mode and info alone) as 8-bit RGB
    changes: :data:`SCALED_TO_8_BITS`, :data:`ALPHA_DROPPED`."""
    notes = []
    if image.mode in SIXTEEN_BIT_MODES:
        notes.append(SCALED_TO_8_BITS)
    if "A" in image.mode or "a" in image.mode or "transparency" in image.info:
        notes.append(ALPHA_DROPPED)
    return notes


def say_once(note: str, path: str | os.PathLike) -> bool:
    """Print ``note`` with the file it was first seen for as one line on stderr, the first time
    this process meets it; whether it was printed."""
    if note in _said:
        return False
    _said.add(note)
    tqdm.write(f"visattn: {note}, e.g. {path}", file=sys.stderr)  # above a progress bar, not through it
    return True


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of the opened ``image`` as :func:`read_image` returns it (its EXIF
    orientation applied), from the header alone."""
    if image.format == "PNG" and "exif" not in image.info:
        return image.size  # PIL decodes a PNG to look for EXIF after the pixels (rare: taken as none)
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    return image.size[::-1] if orientation in (5, 6, 7, 8) else image.size


def _require_dir(path: Path, dataset: str, hint: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{dataset}: directory not found: {path} ({hint})")
    return path


def _pairs_by_stem(images: Path, masks: Path, dataset: str, mask_name: str) -> list[tuple[Path, Path]]:
    """Every image of ``images`` with the ``<stem>.png`` of ``masks``; a missing mask is an error."""
    pairs = []
    for img in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS):
        mask = masks / f"{img.stem}.png"
        if not mask.is_file():
            raise FileNotFoundError(f"{dataset}: no {mask_name} {mask} for image {img}")
        pairs.append((img, mask))
    return pairs


def _value_ranges(values: np.ndarray) -> str:
    """Sorted integers as runs: ``[0, 1, 2, 5]`` -> ``"0..2, 5"``."""
    runs = np.split(values, np.flatnonzero(np.diff(values) != 1) + 1)
    return ", ".join(f"{r[0]}..{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs if len(r))


class SegmentationDataset(Dataset):
    """``(image, mask)`` pairs with a label lookup table.

    Items are ``(tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask int64 (H, W))`` passed through
    ``transforms(image, mask)`` when given.

    Args:
        pairs: ``(image path, mask path)`` per item.
        lut: 256 entries mapping stored mask values to train ids or 255; -1 marks invalid values.
        classes: class names, ``len(classes)`` = K.
        palette: an RGB colour per class.
        transforms: a joint transform (see :mod:`visattn.data.transforms`).
    """

    mask_values = "class ids"  # what the mask files store, for error messages

    def __init__(self, pairs: Sequence[tuple[Path, Path]], lut: np.ndarray, classes: Sequence[str],
                 palette: Sequence[tuple[int, int, int]], transforms: Callable | None = None) -> None:
        if len(pairs) == 0:
            raise ValueError(f"{type(self).__name__}: no images found")
        self.pairs = list(pairs)
        self.lut = np.asarray(lut, dtype=np.int16)
        self.classes = tuple(classes)
        self.palette = tuple(palette[: len(classes)])
        self.transforms = transforms

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw ``(H, W, 3)`` uint8 image and ``(H, W)`` uint8 train-id mask of item ``index``."""
        img_path, mask_path = self.pairs[index]
        image = read_image(img_path)
        mask = self.load_mask(index)
        if image.size != (mask.shape[1], mask.shape[0]):
            raise ValueError(f"image {img_path} is {image.size[0]}x{image.size[1]} but its mask {mask_path} "
                             f"is {mask.shape[1]}x{mask.shape[0]}")
        return np.array(image), mask

    def load_mask(self, index: int) -> np.ndarray:
        """The ``(H, W)`` uint8 train-id mask of item ``index`` alone (its image is not decoded)."""
        mask_path = self.pairs[index][1]
        mask_img = read_image(mask_path, mode=None)
        if mask_img.mode not in MASK_MODES:
            raise ValueError(f"mask {mask_path} has mode {mask_img.mode!r}: expected a single-channel label image")
        raw = np.asarray(mask_img)  # a palette image's indices, a 16-bit image's values: never colours
        outside = (raw < 0) | (raw > 255)
        if outside.any():
            bad = np.unique(raw[outside])[:10].tolist()
            raise ValueError(f"mask {mask_path} has label values outside 0..255: {bad}")
        mask = self.lut[raw.astype(np.uint8)]
        if (mask < 0).any():
            bad = np.unique(raw[mask < 0])[:10].tolist()
            known = _value_ranges(np.flatnonzero((self.lut >= 0) & (np.arange(256) != IGNORE_INDEX)))
            raise ValueError(f"mask {mask_path} has label values {bad}; {type(self).__name__} masks hold "
                             f"{self.mask_values} {known} and {IGNORE_INDEX} (ignore)")
        return mask.astype(np.uint8)

    def __getitem__(self, index: int):
        image, mask = self.load(index)
        image = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(mask))
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask


def _identity_lut(num_classes: int) -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int16)
    lut[:num_classes] = np.arange(num_classes)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


def label_ids_lut(lut: np.ndarray, unlabeled: int) -> np.ndarray:
    """Invert a dataset's lookup table: 256 uint8 entries mapping train id ``k`` to the one stored
    value that ``lut`` maps to ``k``, and every other index (255 = ignore) to ``unlabeled``."""
    inverse = np.full(256, unlabeled, dtype=np.uint8)
    seen = np.zeros(256, dtype=bool)
    for value, train_id in enumerate(np.asarray(lut)):
        if 0 <= train_id < IGNORE_INDEX:
            if seen[train_id]:
                raise ValueError(f"train id {train_id} comes from two label values, {inverse[train_id]} and {value}")
            inverse[train_id], seen[train_id] = value, True
    return inverse


# Cityscapes labelIds (0..33) -> the 19 evaluated trainIds (the official ``cityscapesscripts``
# label table); every other id is ignored.
_CITYSCAPES_ID_TO_TRAINID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                             24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def _cityscapes_lut() -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int16)
    lut[:34] = IGNORE_INDEX
    lut[IGNORE_INDEX] = IGNORE_INDEX
    for label_id, train_id in _CITYSCAPES_ID_TO_TRAINID.items():
        lut[label_id] = train_id
    return lut


# trainIds -> labelIds; ignore -> 0 ("unlabeled"), which the Cityscapes evaluation skips.
CITYSCAPES_LABEL_IDS = label_ids_lut(_cityscapes_lut(), unlabeled=0)


class Cityscapes(SegmentationDataset):
    """Cityscapes fine annotations: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
    ``gtFine/<split>/<city>/*_gtFine_labelIds.png``; labelIds are mapped to the 19 trainIds,
    all other ids (0..33) to 255."""

    mask_values = "labelIds"

    def __init__(self, root: str | os.PathLike, split: str = "train", transforms: Callable | None = None) -> None:
        root = Path(root)
        _require_dir(root, "Cityscapes", "the root must contain leftImg8bit/ and gtFine/")
        img_dir = _require_dir(root / "leftImg8bit" / split, "Cityscapes", f"split {split!r} images")
        ann_dir = _require_dir(root / "gtFine" / split, "Cityscapes", f"split {split!r} gtFine annotations")
        pairs = []
        for img in sorted(img_dir.glob("*/*_leftImg8bit.png")):
            stem = img.name[: -len("_leftImg8bit.png")]
            mask = ann_dir / img.parent.name / f"{stem}_gtFine_labelIds.png"
            if not mask.is_file():
                raise FileNotFoundError(f"Cityscapes: no annotation {mask} for image {img}")
            pairs.append((img, mask))
        super().__init__(pairs, _cityscapes_lut(), CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, transforms)


def _ade20k_lut(reduce_zero_label: bool) -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int16)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    if reduce_zero_label:
        lut[0] = IGNORE_INDEX
        lut[1:151] = np.arange(150)
    else:
        lut[:151] = np.arange(151)
    return lut


# reduce_zero_label undone: train id k -> class k + 1; ignore -> 0 ("other", not evaluated).
ADE20K_LABEL_IDS = label_ids_lut(_ade20k_lut(reduce_zero_label=True), unlabeled=0)


class ADE20K(SegmentationDataset):
    """ADE20K SceneParsing (``ADEChallengeData2016/images/<training|validation>/*.jpg``, annotations
    ``annotations/<...>/*.png``). ``reduce_zero_label``: stored 0 ("other") -> 255, 1..150 -> 0..149.
    ``split`` accepts ``train``/``val`` or the directory names."""

    def __init__(self, root: str | os.PathLike, split: str = "train", transforms: Callable | None = None,
                 reduce_zero_label: bool = True) -> None:
        root = Path(root)
        _require_dir(root, "ADE20K", "the root must be ADEChallengeData2016/ or its parent")
        if (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        sub = {"train": "training", "val": "validation"}.get(split, split)
        img_dir = _require_dir(root / "images" / sub, "ADE20K", f"split {split!r} images")
        ann_dir = _require_dir(root / "annotations" / sub, "ADE20K", f"split {split!r} annotations")
        pairs = _pairs_by_stem(img_dir, ann_dir, "ADE20K", "annotation")
        classes = ADE20K_CLASSES if reduce_zero_label else ("other",) + ADE20K_CLASSES
        palette = voc_palette(len(classes) + 1)[1:] if reduce_zero_label else voc_palette(len(classes))
        super().__init__(pairs, _ade20k_lut(reduce_zero_label), classes, palette, transforms)


class PascalVOC(SegmentationDataset):
    """Pascal VOC 2012 (``VOCdevkit/VOC2012`` or that folder itself): ``JPEGImages``,
    ``SegmentationClass`` (palette PNGs, 255 = boundary), ``ImageSets/Segmentation/<split>.txt``.

    The SBD-augmented set: a split list found in ``ImageSets/SegmentationAug/`` or
    ``ImageSets/Segmentation/`` (e.g. ``train_aug``) with masks from ``SegmentationClassAug/`` for
    images that have no ``SegmentationClass`` mask. DeepLab-style lists with two paths per line
    (``/JPEGImages/x.jpg /SegmentationClassAug/x.png``) are read as given.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", transforms: Callable | None = None) -> None:
        root = Path(root)
        _require_dir(root, "PascalVOC", "the root must be VOCdevkit/VOC2012 or contain it")
        if (root / "VOC2012").is_dir():
            root = root / "VOC2012"
        elif (root / "VOCdevkit" / "VOC2012").is_dir():
            root = root / "VOCdevkit" / "VOC2012"
        _require_dir(root / "JPEGImages", "PascalVOC", "images")
        lists = [root / "ImageSets" / d / f"{split}.txt" for d in ("Segmentation", "SegmentationAug")]
        list_file = next((p for p in lists if p.is_file()), None)
        if list_file is None:
            raise FileNotFoundError(f"PascalVOC: split list not found: {' or '.join(map(str, lists))}")
        pairs = []
        for line in list_file.read_text().split("\n"):
            parts = line.split()
            if not parts:
                continue
            if len(parts) == 2:
                pairs.append((root / parts[0].lstrip("/"), root / parts[1].lstrip("/")))
                continue
            mask = root / "SegmentationClass" / f"{parts[0]}.png"
            if not mask.is_file():
                mask = root / "SegmentationClassAug" / f"{parts[0]}.png"
            pairs.append((root / "JPEGImages" / f"{parts[0]}.jpg", mask))
        for img, mask in pairs:
            for p in (img, mask):
                if not p.is_file():
                    raise FileNotFoundError(f"PascalVOC: {p} listed in {list_file} does not exist")
        super().__init__(pairs, _identity_lut(21), VOC_CLASSES, voc_palette(21), transforms)


class MaskFolder(SegmentationDataset):
    """Generic layout: ``<root>/<img_dir>/<split>/name.<ext>`` with ``<root>/<mask_dir>/<split>/name.png``
    whose values are already train ids (``0..K-1``, 255 ignore). A missing split folder is an error,
    so one split is never read in place of another."""

    def __init__(self, root: str | os.PathLike, split: str = "train", transforms: Callable | None = None,
                 num_classes: int | None = None, classes: Sequence[str] | None = None,
                 img_dir: str = "images", mask_dir: str = "masks") -> None:
        root = Path(root)
        layout = f"expected {img_dir}/{split}/ and {mask_dir}/{split}/ inside"
        _require_dir(root, "MaskFolder", layout)
        images = _require_dir(root / img_dir / split, "MaskFolder", f"split {split!r} images; {layout} {root}")
        masks = _require_dir(root / mask_dir / split, "MaskFolder", f"split {split!r} masks; {layout} {root}")
        if classes is None:
            if num_classes is None:
                raise ValueError("MaskFolder needs num_classes or classes (in a config: data.num_classes or data.classes)")
            classes = tuple(f"class{i}" for i in range(num_classes))
        super().__init__(_pairs_by_stem(images, masks, "MaskFolder", "mask"), _identity_lut(len(classes)), classes, voc_palette(len(classes)), transforms)
