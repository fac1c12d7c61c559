"""Metrics of a trained model: segmentation (per-class IoU, mIoU, pixel accuracy) and classification
(top-1/top-5), :func:`evaluate` over a data loader, and :func:`format_table`.

Segmentation metrics come from torchmetrics: ``MulticlassJaccardIndex(average="none",
ignore_index=255)`` for per-class IoU (its ``MeanIoU`` has no ignore index) and micro
``MulticlassAccuracy`` for pixel accuracy. mIoU averages the classes that occur in the ground truth
or the predictions (absent classes are NaN, as in the Cityscapes and mmseg evaluators).
Under DDP the metric states are summed over processes.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from ..data import IGNORE_INDEX
from .inference import segment

__all__ = ["SegmentationMetrics", "ClassificationMetrics", "evaluate", "format_table"]


class SegmentationMetrics:
    """Per-class IoU, mIoU and pixel accuracy accumulated over batches."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.iou = MulticlassJaccardIndex(num_classes, average="none", ignore_index=IGNORE_INDEX,
                                          zero_division=float("nan"), validate_args=False).to(device)
        self.acc = MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE_INDEX,
                                      validate_args=False).to(device)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``: ``(B, H, W)`` class ids or ``(B, K, H, W)`` scores; ``target``: ``(B, H, W)``."""
        if pred.dim() == 4:
            pred = pred.argmax(1)
        self.iou.update(pred, target)
        self.acc.update(pred, target)

    def compute(self) -> dict:
        iou = self.iou.compute().cpu()
        return {"mIoU": float(iou.nanmean()), "pixel_acc": float(self.acc.compute()),
                "per_class_iou": [None if math.isnan(v) else float(v) for v in iou.tolist()]}


class ClassificationMetrics:
    """Top-1 and top-5 accuracy."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.top = {k: MulticlassAccuracy(num_classes, top_k=k, average="micro", validate_args=False).to(device)
                    for k in (1, min(5, num_classes))}

    def update(self, logits: Tensor, target: Tensor) -> None:
        for metric in self.top.values():
            metric.update(logits, target)

    def compute(self) -> dict:
        return {f"top{k}": float(m.compute()) for k, m in self.top.items()}


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, num_classes: int, task: str = "segmentation",
             device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None, **segment_kwargs) -> dict:
    """Run ``model`` (switched to eval mode) over ``(image, target)`` batches and return the metrics."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    metrics = (SegmentationMetrics if task == "segmentation" else ClassificationMetrics)(num_classes, device)
    try:
        for image, target in batches:
            image, target = image.to(device), target.to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                if task == "segmentation":
                    out = segment(model, image, num_classes, **segment_kwargs)
                else:
                    out = model(image).float()
            metrics.update(out, target)
    finally:
        model.train(was_training)
    return metrics.compute()


def format_table(result: dict, classes: Sequence[str]) -> str:
    """A plain-text table: per-class IoU then the summary metrics."""
    lines = []
    if "per_class_iou" in result:
        width = max(len("class"), *(len(c) for c in classes))
        lines.append(f"{'class':<{width}}  {'IoU':>6}")
        for name, iou in zip(classes, result["per_class_iou"]):
            lines.append(f"{name:<{width}}  {'  n/a' if iou is None else f'{100 * iou:6.2f}'}")
        lines.append(f"{'mIoU':<{width}}  {100 * result['mIoU']:6.2f}")
        lines.append(f"{'pixel acc':<{width}}  {100 * result['pixel_acc']:6.2f}")
    else:
        lines += [f"{k:<6} {100 * v:6.2f}" for k, v in result.items() if k.startswith("top")]
    return "\n".join(lines)
