"""Segmentation losses: pixel cross-entropy (ignore 255), OHEM, and weighted multi-output sums."""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import IGNORE_INDEX

__all__ = ["cross_entropy", "ohem_cross_entropy", "weighted_loss"]


def cross_entropy(logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy over non-ignored pixels (0 when every pixel is ignored)."""
    loss = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum",
                           label_smoothing=label_smoothing)
    return loss / (target != IGNORE_INDEX).sum().clamp_min(1)


def ohem_cross_entropy(logits: Tensor, target: Tensor, thresh: float = 0.7, min_kept: int = 100000) -> Tensor:
    """Online hard example mining (as in the CCNet/OCNet code): keep the pixels whose predicted
    probability of the true class is below ``thresh``, and at least the ``min_kept`` hardest ones."""
    pixel = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none").flatten()
    valid = target.flatten() != IGNORE_INDEX
    n = int(valid.sum())
    if n == 0:
        return pixel.sum() * 0
    prob = torch.exp(-pixel.detach())
    threshold = torch.tensor(thresh, device=prob.device)
    if min_kept > 0:
        kth = prob[valid].kthvalue(min(n, min_kept)).values
        threshold = torch.maximum(threshold, kth)
    keep = valid & (prob <= threshold)
    return pixel[keep].sum() / keep.sum().clamp_min(1)


def weighted_loss(outputs: Tensor | Mapping[str, Tensor], target: Tensor, weights: Mapping[str, float],
                  ohem: bool = False, ohem_thresh: float = 0.7, ohem_min_kept: int = 100000,
                  label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """``sum_k weights[k] * loss(outputs[k])``; a bare tensor counts as ``{"out": tensor}``.

    Segmentation logits whose size differs from the target's are resized (bilinear). Returns the
    total and each term's value for logging. Outputs without a weight are an error.
    """
    if isinstance(outputs, Tensor):
        outputs = {"out": outputs}
    missing = [k for k in outputs if k not in weights]
    if missing:
        raise ValueError(f"model outputs {missing} have no loss weight (weights: {dict(weights)}); "
                         "set train.loss_weights or the model's loss_weights")
    total, terms = None, {}
    for key, logits in outputs.items():
        if weights[key] == 0:
            continue
        if logits.dim() == 4 and logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        if ohem and logits.dim() == 4:
            loss = ohem_cross_entropy(logits, target, ohem_thresh, ohem_min_kept)
        else:
            loss = cross_entropy(logits, target, label_smoothing)
        terms[key] = loss.detach()
        total = weights[key] * loss if total is None else total + weights[key] * loss
    if total is None:
        raise ValueError(f"every loss weight is 0: {dict(weights)}")
    return total, terms
