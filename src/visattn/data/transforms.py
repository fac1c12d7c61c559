"""Joint image/mask augmentation with ``torchvision.transforms.v2``.

Images are ``tv_tensors.Image`` (uint8, ``(3, H, W)``) and labels ``tv_tensors.Mask`` (``(H, W)``),
so geometric transforms move both and photometric ones touch only the image. Crops pad the image
with 0 and the mask with ``IGNORE_INDEX`` (255, ignored by the loss and the metrics).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .segmentation import IGNORE_INDEX

__all__ = ["RandomScale", "segmentation_transforms", "classification_transforms", "image_to_tensor", "IMAGENET_MEAN",
           "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from ``[low, high]`` (bilinear image, nearest mask)."""

    def __init__(self, low: float = 0.5, high: float = 2.0) -> None:
        super().__init__()
        if not 0 < low <= high:
            raise ValueError(f"RandomScale needs 0 < low <= high, got ({low}, {high})")
        self.low, self.high = low, high

    def make_params(self, flat_inputs: list) -> dict:
        h, w = v2.query_size(flat_inputs)
        s = self.low + (self.high - self.low) * torch.rand(()).item()
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt, params: dict):
        if isinstance(inpt, tv_tensors.Mask):
            return TF.resize(inpt, params["size"], interpolation=v2.InterpolationMode.NEAREST)
        if isinstance(inpt, tv_tensors.Image):
            return TF.resize(inpt, params["size"], antialias=True)
        return inpt


def _finish(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
            v2.Normalize(mean=list(mean), std=list(std))]


def segmentation_transforms(
    train: bool,
    crop_size: Sequence[int] | None = None,
    scale_range: Sequence[float] = (0.5, 2.0),
    flip: bool = True,
    color_jitter: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Training: random scale, crop with ignore padding, horizontal flip, photometric jitter,
    normalise. Evaluation: normalise only (full image; sliding window happens in the evaluator)."""
    ops: list[v2.Transform] = []
    if train:
        if scale_range is not None and tuple(scale_range) != (1.0, 1.0):
            ops.append(RandomScale(*scale_range))
        if crop_size is not None:
            ops.append(v2.RandomCrop(list(crop_size), pad_if_needed=True,
                                     fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX, "others": 0}))
        if flip:
            ops.append(v2.RandomHorizontalFlip())
        if color_jitter > 0:
            j = color_jitter
            ops.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, j / 4)))
    return v2.Compose(ops + _finish(mean, std))


def classification_transforms(
    train: bool,
    crop_size: int = 224,
    resize_size: int | None = None,
    flip: bool = True,
    color_jitter: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """ImageNet recipe: RandomResizedCrop + flip (train); resize to ``crop/0.875`` + centre crop (eval)."""
    if train:
        ops: list[v2.Transform] = [v2.RandomResizedCrop(crop_size, antialias=True)]
        if flip:
            ops.append(v2.RandomHorizontalFlip())
        if color_jitter > 0:
            ops.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    else:
        ops = [v2.Resize(resize_size or round(crop_size / 0.875), antialias=True), v2.CenterCrop(crop_size)]
    return v2.Compose([v2.ToImage(), *ops, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(mean=list(mean), std=list(std))])


def image_to_tensor(image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """A uint8 ``(H, W, 3)`` RGB image -> the normalised float ``(1, 3, H, W)`` batch a model takes
    (the evaluation transforms of one image)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
