"""Tiny models honouring the segmentor/classifier contract, for fast engine tests.

Importable as ``tinyseg:build`` (config ``model.name``) (``tests/`` is on pytest's ``pythonpath``).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class TinySeg(nn.Module):
    """conv(stride 2) -> ReLU -> conv -> logits upsampled to the input; train mode adds an ``aux``
    output. No BatchNorm or dropout, so DDP and single-process runs agree."""

    def __init__(self, num_classes: int, width: int = 8, dropout: float = 0.0, interrupt_after: int | None = None):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.body = nn.Conv2d(width, width, 3, padding=1)
        self.drop = nn.Dropout2d(dropout)
        self.cls = nn.Conv2d(width, num_classes, 1)
        self.aux_cls = nn.Conv2d(width, num_classes, 1)
        self.loss_weights = {"out": 1.0, "aux": 0.4}
        self.interrupt_after, self.calls = interrupt_after, 0

    def forward(self, x):
        if self.training and self.interrupt_after is not None:
            self.calls += 1
            if self.calls > self.interrupt_after:  # a Ctrl-C in the middle of a step
                raise KeyboardInterrupt
        size = x.shape[-2:]
        f1 = F.relu(self.stem(x))
        f2 = F.relu(self.body(f1))
        out = F.interpolate(self.cls(self.drop(f2)), size=size, mode="bilinear", align_corners=False)
        if not self.training:
            return out
        return {"out": out, "aux": F.interpolate(self.aux_cls(f1), size=size, mode="bilinear", align_corners=False)}


class TinyCls(nn.Module):
    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


def build(num_classes: int, **kwargs) -> TinySeg:
    return TinySeg(num_classes, **kwargs)


def build_cls(num_classes: int, **kwargs) -> TinyCls:
    return TinyCls(num_classes, **kwargs)
