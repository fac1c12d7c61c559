"""Digit scenes: the embedded default dataset, built from scikit-learn's handwritten digits.

``sklearn.datasets.load_digits`` ships 1,797 real 8x8 handwritten digits (UCI "Optical
Recognition of Handwritten Digits") inside the package, so nothing is downloaded. A scene pastes
several of them, upscaled to varied sizes at random positions, in random colours onto a textured
background (a random colour modulated by oriented sinusoid gratings, plus noise). Labels are per pixel:
**0 = background, 1..10 = digits 0..9** (11 classes, :data:`DIGIT_CLASSES`). A digit's label covers
its ink (upscaled intensity > 0.3) grown by about a twelfth of the digit's size (a 3x3 to 7x7 max
filter), so that stroke-thin labels stay learnable by output-stride-8 networks at 64x64. Later
digits are drawn over earlier ones and their labels overwrite.

Every item is generated from ``numpy.random.default_rng((seed, split, index))``: the same
``(seed, split, index)`` always gives the same scene, on any worker or process. The splits draw from
disjoint digit samples (every fifth sample is held out for ``val``).

:class:`DigitClassification` uses the same digits, one per canvas, as a 10-class classification set.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import Dataset
from torchvision import tv_tensors

from .._extras import require
from .palettes import DIGIT_CLASSES, voc_palette

__all__ = ["DigitScenes", "DigitClassification"]

_SPLITS = {"train": 0, "val": 1}


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    require("sklearn", extra="demo")
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images / 16.0).astype(np.float32), data.target.astype(np.int64)


def _pool(split: str) -> np.ndarray:
    if split not in _SPLITS:
        raise ValueError(f"digit scenes split must be 'train' or 'val', got {split!r}")
    n = len(_digits()[1])
    held_out = np.arange(n) % 5 == 0
    return np.flatnonzero(held_out if split == "val" else ~held_out)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """``(h, w, 3)`` float texture in [0, 1]: a tinted mix of oriented gratings and noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    tex = np.zeros((h, w), np.float32)
    for _ in range(3):
        theta, freq, phase = rng.uniform(0, np.pi), rng.uniform(0.05, 0.5), rng.uniform(0, 2 * np.pi)
        tex += rng.uniform(0.2, 1.0) * np.sin(freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    tex = 2 * (tex - tex.min()) / (np.ptp(tex) + 1e-6) - 1
    base = rng.uniform(0.1, 0.9, 3).astype(np.float32)
    tint = rng.uniform(0.5, 1.0, 3).astype(np.float32)
    bg = base + rng.uniform(0.05, 0.15) * tex[..., None] * tint
    bg += rng.normal(0, 0.03, (h, w, 3)).astype(np.float32)
    return bg.clip(0, 1)


def _ink(digit: np.ndarray, size: int) -> np.ndarray:
    """An 8x8 digit upscaled to ``size x size`` (bilinear), intensity in [0, 1]."""
    img = Image.fromarray((digit * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def _paste(rng: np.random.Generator, canvas: np.ndarray, ink: np.ndarray, y: int, x: int) -> np.ndarray:
    """Alpha-blend ``ink`` at ``(y, x)`` in a colour contrasting with the local background; return
    the digit's label mask (see the module docstring)."""
    s = ink.shape[0]
    region = canvas[y:y + s, x:x + s]
    local = float(region.mean())
    colour = rng.uniform(0, 1, 3).astype(np.float32)
    # keep the digit at least 0.4 away from the local brightness so it is visible
    shift = (0.4 - abs(float(colour.mean()) - local))
    if shift > 0:
        colour = (colour + np.sign(colour.mean() - local + 1e-6) * shift).clip(0, 1)
    alpha = ink[..., None]
    canvas[y:y + s, x:x + s] = region * (1 - alpha) + colour * alpha
    # label the ink grown by ~s/12 pixels: strokes a stride-8 network can resolve at these sizes
    grow = 2 * max(1, s // 12) + 1
    return np.asarray(Image.fromarray((ink > 0.3).astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(grow))) > 0


class DigitScenes(Dataset):
    """Scenes of handwritten digits with per-pixel labels (11 classes, 0 = background).

    Items are ``(tv_tensors.Image uint8 (3, S, S), tv_tensors.Mask uint8 (S, S))`` passed through
    ``transforms(image, mask)`` when given.

    Args:
        split: ``"train"`` or ``"val"`` (disjoint digit samples).
        length: number of scenes.
        size: canvas side S in pixels.
        digits_per_image: inclusive range of digits per scene.
        digit_size: inclusive range of a digit's side in pixels.
        seed: generation seed.
        transforms: joint image/mask transform.
    """

    classes = DIGIT_CLASSES
    palette = voc_palette(len(DIGIT_CLASSES))

    def __init__(self, split: str = "train", length: int = 2000, size: int = 64,
                 digits_per_image: tuple[int, int] = (2, 4), digit_size: tuple[int, int] = (12, 24),
                 seed: int = 0, transforms: Callable | None = None) -> None:
        self.pool = _pool(split)
        if not 1 <= digit_size[0] <= digit_size[1] <= size:
            raise ValueError(f"digit_size {tuple(digit_size)} must lie within 1..size={size}")
        if not 0 <= digits_per_image[0] <= digits_per_image[1]:
            raise ValueError(f"digits_per_image {tuple(digits_per_image)} must be an increasing range >= 0")
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.split, self.length, self.size, self.seed = split, length, size, seed
        self.digits_per_image, self.digit_size = tuple(digits_per_image), tuple(digit_size)
        self.transforms = transforms

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int]]]:
        """``(image (S, S, 3) uint8, mask (S, S) uint8, [(digit, y, x, side), ...])`` of item ``index``."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} scenes")
        rng = np.random.default_rng((self.seed, _SPLITS[self.split], index))
        images, targets = _digits()
        canvas = _background(rng, self.size, self.size)
        mask = np.zeros((self.size, self.size), np.uint8)
        placed: list[tuple[int, int, int, int]] = []
        for _ in range(rng.integers(self.digits_per_image[0], self.digits_per_image[1] + 1)):
            sample = int(rng.choice(self.pool))
            side = int(rng.integers(self.digit_size[0], self.digit_size[1] + 1))
            for _attempt in range(10):  # prefer a free spot; overlap if none is found
                y, x = (int(v) for v in rng.integers(0, self.size - side + 1, 2))
                if all(y + side <= py or py + ps <= y or x + side <= px or px + ps <= x for _, py, px, ps in placed):
                    break
            ink = _paste(rng, canvas, _ink(images[sample], side), y, x)
            mask[y:y + side, x:x + side][ink] = targets[sample] + 1
            placed.append((int(targets[sample]), y, x, side))
        return (canvas * 255).round().astype(np.uint8), mask, placed

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask, _ = self.scene(index)
        return image, mask

    def __getitem__(self, index: int):
        image, mask, _ = self.scene(index)
        image = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(mask))
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask


class DigitClassification(Dataset):
    """The same digits, one per ``size x size`` textured canvas, labelled 0..9.

    Items are ``(image, label)``; the image is a ``tv_tensors.Image`` uint8 ``(3, S, S)`` passed
    through ``transforms`` when given. The whole split pool is used (1,437 train, 360 val samples).
    """

    classes = tuple(str(d) for d in range(10))

    def __init__(self, split: str = "train", size: int = 32, digit_size: tuple[int, int] = (16, 28),
                 seed: int = 0, transforms: Callable | None = None) -> None:
        self.pool = _pool(split)
        if not 1 <= digit_size[0] <= digit_size[1] <= size:
            raise ValueError(f"digit_size {tuple(digit_size)} must lie within 1..size={size}")
        self.split, self.size, self.digit_size, self.seed = split, size, tuple(digit_size), seed
        self.transforms = transforms

    @property
    def num_classes(self) -> int:
        return 10

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, index: int):
        rng = np.random.default_rng((self.seed, _SPLITS[self.split], index, 1))
        images, targets = _digits()
        sample = int(self.pool[index])
        canvas = _background(rng, self.size, self.size)
        side = int(rng.integers(self.digit_size[0], self.digit_size[1] + 1))
        y, x = (int(v) for v in rng.integers(0, self.size - side + 1, 2))
        _paste(rng, canvas, _ink(images[sample], side), y, x)
        image = tv_tensors.Image(torch.from_numpy((canvas * 255).round().astype(np.uint8)).permute(2, 0, 1))
        if self.transforms is not None:
            image = self.transforms(image)
        return image, int(targets[sample])
