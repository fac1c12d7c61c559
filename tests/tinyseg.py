"""Tiny models honouring the segmentor/classifier contract, for fast engine tests.

Importable as ``tinyseg:build`` (config ``model.name``) (``tests/`` is on pytest's ``pythonpath``).
"""
from __future__ import annotations

import contextlib
import os
from collections import Counter

import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook


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


def build_bn(num_classes: int, **kwargs) -> TinySeg:
    """TinySeg with BatchNorm after its stem: every training forward changes its running statistics."""
    model = TinySeg(num_classes, **kwargs)
    model.stem = nn.Sequential(model.stem, nn.BatchNorm2d(model.stem.out_channels))
    return model


STEP_POINTS = ("forward", "backward", "update", "checkpoint", "evaluation")


@contextlib.contextmanager
def signal_during(point: str, nth: int, signum: int):
    """Send ``signum`` to this process from inside the ``nth`` event of kind ``point`` of the runs
    trained within: a training forward, a backward (when the stem's gradient is computed, before
    the others are accumulated), an optimizer update (after the parameters changed, before the
    scheduler steps), a checkpoint write (after the weights file, before the state file) or an
    evaluation forward (one per validation batch).
    Yields the count of each kind of event so far."""
    import visattn.engine.run_dir as run_dir
    import visattn.engine.trainer as trainer

    if point not in STEP_POINTS:
        raise ValueError(f"point must be one of {STEP_POINTS}, got {point!r}")
    events = Counter()

    def event(kind: str) -> None:
        events[kind] += 1
        if kind == point and events[kind] == nth:
            os.kill(os.getpid(), signum)

    build_model, atomic_write = trainer.build_model, run_dir.atomic_write

    def build_hooked(*args, **kwargs):
        model = build_model(*args, **kwargs)
        model.register_forward_hook(lambda module, inputs, output: event("forward" if module.training else "evaluation"))
        next(model.parameters()).register_hook(lambda grad: event("backward"))
        return model

    def write_hooked(path, write):
        if str(path).endswith(".state.pt"):
            event("checkpoint")
        return atomic_write(path, write)

    update_hook = register_optimizer_step_post_hook(lambda *_: event("update"))
    trainer.build_model, run_dir.atomic_write = build_hooked, write_hooked
    try:
        yield events
    finally:
        trainer.build_model, run_dir.atomic_write = build_model, atomic_write
        update_hook.remove()


def make_run(path, num_classes: int = 11, *overrides: str) -> str:
    """A finished run directory at ``path`` holding a seeded ``TinySeg``'s weights as its best ones
    (model name ``tinyseg:build``: loading it needs ``trust_code``); ``overrides``: config ``key=value``."""
    import torch

    from visattn.engine.config import load_config
    from visattn.engine.run_dir import RunDir
    from visattn.weights import save_state_dict

    run = RunDir(path)
    run.write_config(load_config(None, ["model.name=tinyseg:build", "model.kwargs={}", f"run.dir={run.path}",
                                        "data.workers=0", *overrides]))
    torch.manual_seed(0)
    save_state_dict(TinySeg(num_classes).state_dict(), run.best_weights)
    return str(run.path)
