"""Inference: class probabilities of a normalised batch, single or multi-scale, with or without
horizontal flips, on the whole image or with a sliding window (:func:`segment`). The Python API
behind ``visattn predict`` builds on it: :class:`~visattn.engine.predictor.Predictor`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Config

__all__ = ["segment", "segment_options"]


def _slide(model: nn.Module, image: Tensor, num_classes: int, crop: Sequence[int], stride: Sequence[int]) -> Tensor:
    """Logits from overlapping ``crop`` windows (the image zero-padded up to ``crop``), averaged."""
    _, _, h, w = image.shape
    ch, cw = crop
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    padded = F.pad(image, (0, pw, 0, ph))
    H, W = padded.shape[-2:]
    rows = max(math.ceil((H - ch) / stride[0]), 0) + 1
    cols = max(math.ceil((W - cw) / stride[1]), 0) + 1
    logits = image.new_zeros((image.shape[0], num_classes, H, W), dtype=torch.float32)
    count = image.new_zeros((1, 1, H, W), dtype=torch.float32)
    for r in range(rows):
        for c in range(cols):
            y0, x0 = min(r * stride[0], H - ch), min(c * stride[1], W - cw)
            logits[:, :, y0:y0 + ch, x0:x0 + cw] += model(padded[:, :, y0:y0 + ch, x0:x0 + cw]).float()
            count[:, :, y0:y0 + ch, x0:x0 + cw] += 1
    return (logits / count)[:, :, :h, :w]


@torch.no_grad()
def segment(model: nn.Module, image: Tensor, num_classes: int, scales: Sequence[float] = (1.0,), flip: bool = False,
            mode: str = "whole", crop: Sequence[int] | None = None, stride: Sequence[int] | None = None) -> Tensor:
    """Class probabilities ``(B, K, H, W)`` for a normalised ``(B, 3, H, W)`` batch, averaged over
    ``scales`` (image resized by each factor, bilinear) and horizontal flips."""
    if mode not in ("whole", "slide"):
        raise ValueError(f"eval mode must be 'whole' or 'slide', got {mode!r}")
    if mode == "slide" and crop is None:
        raise ValueError("sliding-window evaluation needs a crop size")
    h, w = image.shape[-2:]
    if mode == "slide":
        stride = stride or [max(1, math.ceil(c * 2 / 3)) for c in crop]
    probs = None
    for scale in scales:
        x = image if scale == 1 else F.interpolate(image, scale_factor=scale, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            xi = x.flip(-1) if flipped else x
            out = _slide(model, xi, num_classes, crop, stride) if mode == "slide" else model(xi).float()
            out = out.flip(-1) if flipped else out
            if out.shape[-2:] != (h, w):
                out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
            p = out.softmax(1)
            probs = p if probs is None else probs + p
    return probs / (len(scales) * (2 if flip else 1))


def segment_options(cfg: Config) -> dict:
    """The keyword arguments of :func:`segment` that config ``cfg`` asks for (its ``eval`` section;
    the sliding window defaults to the training crop)."""
    e = cfg.eval
    return {"scales": e.scales, "flip": e.flip, "mode": e.mode, "crop": e.crop_size or cfg.data.crop_size,
            "stride": e.stride}
