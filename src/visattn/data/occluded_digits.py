"""Occluded digit scenes: an embedded segmentation set whose labels can only be read from context.

Each scene holds 2 to 4 instances of **one** digit identity, one per quadrant of the canvas, on the
textured background of :class:`~visattn.data.DigitScenes`. At least one instance is a clean
handwritten digit (scikit-learn's digits, pasted as in the digit scenes; its label is its grown
ink); the others, at least one, are *occluded*: a mosaic of 4x4 random colour blocks covers the
instance's whole square box and nothing of the digit shows. Every instance is labelled with the
scene's identity, an occluded one over its whole box: **0 = background, 1..10 = digits 0..9**, the
classes and palette of the digit scenes.

An occluded instance's pixels, its box and its surroundings up to the next quadrant carry no
information about the identity: the background, the instances' boxes, which of them are occluded
and the occluders' colours are drawn from one random stream, ``default_rng((seed, split, index))``;
the identity, the handwritten samples and their ink colours from another,
``default_rng((seed, split, index, 1))``. ``scene(index, identity=d)`` draws the same scene with
identity ``d``: only the clean instances change, the occluders stay bit-identical. A network labels
an occluded box correctly only by finding a clean sibling in another quadrant and carrying its
identity over: each instance sits near its quadrant's canvas corner, so that siblings are at least
``S // 2 - max(digit_size)`` pixels apart (8 at the defaults: an output-stride-8 feature cell).

Every item is a function of ``(seed, split, index)`` alone; the splits draw from disjoint digit
samples, as in the digit scenes.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .digits import _SPLITS, DigitScenes, _background, _digits, _ink, _paste

__all__ = ["OccludedDigitScenes"]

MOSAIC_CELLS = 4  # an occluder is MOSAIC_CELLS x MOSAIC_CELLS blocks of random colour
_QUADRANTS = 4


def _occluder(rng: np.random.Generator, side: int) -> np.ndarray:
    """``(side, side, 3)`` float mosaic of :data:`MOSAIC_CELLS` x :data:`MOSAIC_CELLS` random colours."""
    colours = rng.uniform(0, 1, (MOSAIC_CELLS, MOSAIC_CELLS, 3)).astype(np.float32)
    cell = np.arange(side) * MOSAIC_CELLS // side
    return colours[cell][:, cell]


class OccludedDigitScenes(DigitScenes):
    """Scenes of one digit identity, some instances occluded, all labelled with the identity
    (11 classes, 0 = background); see the module docstring.

    Items are ``(tv_tensors.Image uint8 (3, S, S), tv_tensors.Mask uint8 (S, S))`` passed through
    ``transforms(image, mask)`` when given, as :class:`~visattn.data.DigitScenes`.

    Args:
        split: ``"train"`` or ``"val"`` (disjoint digit samples).
        length: number of scenes.
        size: canvas side S in pixels.
        digits_per_image: inclusive range of instances per scene, within 2..4 (one per quadrant,
            at least one clean and one occluded).
        digit_size: inclusive range of an instance's side in pixels, at most S // 2 (a quadrant).
        seed: generation seed.
        transforms: joint image/mask transform.
    """

    def __init__(self, split: str = "train", length: int = 2000, size: int = 64,
                 digits_per_image: tuple[int, int] = (2, 4), digit_size: tuple[int, int] = (12, 24),
                 seed: int = 0, transforms: Callable | None = None) -> None:
        super().__init__(split, length, size, digits_per_image, digit_size, seed, transforms)
        if not 2 <= digits_per_image[0] <= digits_per_image[1] <= _QUADRANTS:
            raise ValueError(f"digits_per_image {tuple(digits_per_image)} must lie within 2..{_QUADRANTS}: one "
                             "instance per quadrant, at least one clean and one occluded")
        if digit_size[1] > size // 2:
            raise ValueError(f"digit_size {tuple(digit_size)} must be at most size // 2 = {size // 2} (a quadrant)")
        targets = _digits()[1]
        self.pool_by_digit = [self.pool[targets[self.pool] == d] for d in range(10)]

    def scene(self, index: int, identity: int | None = None
              ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int, bool]]]:
        """``(image (S, S, 3) uint8, mask (S, S) uint8, [(digit, y, x, side, occluded), ...])`` of
        item ``index``, clean instances first; ``identity``: the same scene with this digit (0..9)."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} scenes")
        layout_rng = np.random.default_rng((self.seed, _SPLITS[self.split], index))
        digit_rng = np.random.default_rng((self.seed, _SPLITS[self.split], index, 1))
        own = int(digit_rng.integers(10))
        if identity is None:
            identity = own
        elif identity not in range(10):
            raise ValueError(f"identity must be a digit 0..9, got {identity!r}")
        identity = int(identity)
        count = int(layout_rng.integers(self.digits_per_image[0], self.digits_per_image[1] + 1))
        quadrants = layout_rng.permutation(_QUADRANTS)[:count]
        clean = int(layout_rng.integers(1, count))
        canvas = _background(layout_rng, self.size, self.size)
        mask = np.zeros((self.size, self.size), np.uint8)
        half = self.size // 2
        images = _digits()[0]
        placed: list[tuple[int, int, int, int, bool]] = []
        for k, quadrant in enumerate(quadrants):
            side = int(layout_rng.integers(self.digit_size[0], self.digit_size[1] + 1))
            row, col = divmod(int(quadrant), 2)
            dy, dx = (int(v) for v in layout_rng.integers(0, (half - side) // 2 + 1, 2))
            # near its quadrant's canvas corner: neighbours stay S // 2 - (the larger side) pixels apart
            y = dy if row == 0 else self.size - side - dy
            x = dx if col == 0 else self.size - side - dx
            occluded = k >= clean
            if occluded:
                canvas[y:y + side, x:x + side] = _occluder(layout_rng, side)
                mask[y:y + side, x:x + side] = identity + 1
            else:
                sample = int(digit_rng.choice(self.pool_by_digit[identity]))
                ink = _paste(digit_rng, canvas, _ink(images[sample], side), y, x)
                mask[y:y + side, x:x + side][ink] = identity + 1
            placed.append((identity, y, x, side, occluded))
        return (canvas * 255).round().astype(np.uint8), mask, placed
