"""Metrics of a trained model: segmentation (per-class IoU, accuracy and Dice, their means, pixel
accuracy, the confusion matrix) and classification (top-1/top-5), :func:`evaluate` over a data
loader, :func:`format_table` and :func:`format_confusion_matrix`.

Every segmentation metric is derived from one confusion matrix ``C`` (rows: ground truth, columns:
prediction), torchmetrics' ``MulticlassConfusionMatrix(ignore_index=255)``, as in the Cityscapes and
mmseg evaluators; with ``TP_c = C[c, c]``, ``FN_c`` the rest of row ``c`` and ``FP_c`` the rest of
column ``c``:

- ``IoU_c = TP / (TP + FP + FN)``, ``Dice_c = 2 TP / (2 TP + FP + FN)``: NaN for a class absent from
  both the ground truth and the predictions, 0 for a class present in only one of them;
- ``Acc_c = TP / (TP + FN)`` (recall): NaN for a class absent from the ground truth;
- ``mIoU``, ``mAcc``, ``mDice``: means over the classes that are not NaN;
- ``pixel_acc = sum_c TP_c / sum C`` (labelled pixels only).

Under DDP the confusion matrix is summed over processes.

:func:`evaluate` given ``stop`` looks at it before every batch and raises :class:`EvaluationStopped`
(a ``KeyboardInterrupt``) when it says so: an evaluation is a place where Ctrl-C is honoured.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from ..data import IGNORE_INDEX
from .inference import segment

__all__ = ["SegmentationMetrics", "ClassificationMetrics", "evaluate", "EvaluationStopped", "format_table", "format_confusion_matrix",
           "metrics_from_confusion", "PER_CLASS_KEYS"]

PER_CLASS_KEYS = ("per_class_iou", "per_class_acc", "per_class_dice", "confusion_matrix")


class EvaluationStopped(KeyboardInterrupt):
    """An evaluation given up between two batches because a stop was requested (Ctrl-C, SIGTERM)."""


def _nan_to_none(values: Tensor) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values.tolist()]


def metrics_from_confusion(confusion: Tensor) -> dict:
    """All segmentation metrics of a ``(K, K)`` confusion matrix (rows: ground truth, columns:
    prediction); per-class lists hold ``None`` where the metric is undefined (see the module docstring)."""
    cm = confusion.detach().cpu().double()
    tp = cm.diag()
    gt, pred = cm.sum(1), cm.sum(0)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    present = (gt + pred) > 0
    iou = torch.where(present, tp / (gt + pred - tp), nan)
    dice = torch.where(present, 2 * tp / (gt + pred), nan)
    acc = torch.where(gt > 0, tp / gt, nan)
    total = cm.sum()
    return {"mIoU": float(iou.nanmean()), "mAcc": float(acc.nanmean()), "mDice": float(dice.nanmean()),
            "pixel_acc": float(tp.sum() / total) if total > 0 else math.nan,
            "per_class_iou": _nan_to_none(iou), "per_class_acc": _nan_to_none(acc), "per_class_dice": _nan_to_none(dice),
            "confusion_matrix": confusion.detach().cpu().long().tolist()}


class SegmentationMetrics:
    """Per-class IoU, accuracy and Dice, their means, pixel accuracy and the confusion matrix,
    accumulated over batches in one confusion matrix."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.confusion = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX,
                                                   validate_args=False).to(device)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``: ``(B, H, W)`` class ids or ``(B, K, H, W)`` scores; ``target``: ``(B, H, W)``."""
        if pred.dim() == 4:
            pred = pred.argmax(1)
        self.confusion.update(pred, target)

    def compute(self) -> dict:
        return metrics_from_confusion(self.confusion.compute())


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
             device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None,
             stop: Callable[[], bool] | None = None, **segment_kwargs) -> dict:
    """Run ``model`` (switched to eval mode) over ``(image, target)`` batches and return the metrics.

    ``stop``: asked before every batch; when it answers true, :class:`EvaluationStopped` is raised."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    metrics = (SegmentationMetrics if task == "segmentation" else ClassificationMetrics)(num_classes, device)
    try:
        for image, target in batches:
            if stop is not None and stop():
                raise EvaluationStopped("evaluation stopped between batches")
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
    """A plain-text table: per-class IoU, accuracy and Dice, then the summary metrics."""
    if "per_class_iou" not in result:
        return "\n".join(f"{k:<6} {100 * v:6.2f}" for k, v in result.items() if k.startswith("top"))

    def cell(value):
        return "   n/a" if value is None or math.isnan(value) else f"{100 * value:6.2f}"

    width = max(len("pixel acc"), *(len(c) for c in classes))
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}  {'Dice':>6}"]
    for name, iou, acc, dice in zip(classes, result["per_class_iou"], result.get("per_class_acc", [None] * len(classes)),
                                    result.get("per_class_dice", [None] * len(classes))):
        lines.append(f"{name:<{width}}  {cell(iou)}  {cell(acc)}  {cell(dice)}")
    lines += [f"{label:<{width}}  {cell(result[key])}" for label, key in
              (("mIoU", "mIoU"), ("mAcc", "mAcc"), ("mDice", "mDice"), ("pixel acc", "pixel_acc")) if key in result]
    return "\n".join(lines)


def format_confusion_matrix(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> str:
    """The confusion matrix as a plain-text table of pixel counts (rows: ground truth, columns:
    prediction), columns headed by class index."""
    corner = "gt \\ pred"
    width = max(len(str(max(max(row) for row in matrix))), len(str(len(classes) - 1)))
    name_width = max(len(corner), *(len(f"{i} {c}") for i, c in enumerate(classes)))
    lines = [f"{corner:<{name_width}}  " + " ".join(f"{i:>{width}}" for i in range(len(classes)))]
    for i, (name, row) in enumerate(zip(classes, matrix)):
        lines.append(f"{f'{i} {name}':<{name_width}}  " + " ".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)
