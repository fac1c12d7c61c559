"""Model, optimizer and learning-rate schedule of a run, from its config sections."""
from __future__ import annotations

import importlib

import torch
from torch import nn

from ..models import create_model
from ..models.registry import without_starting_weights
from .config import ModelConfig, TrainConfig

__all__ = ["build_model", "enable_grad_checkpointing", "build_optimizer", "build_scheduler", "LRSchedule"]


def build_model(cfg: ModelConfig, num_classes: int, pretrained: bool | None = None, trust_code: bool = False,
                origin: str = "the config") -> nn.Module:
    """The model of config section ``cfg`` (``model``): a registered name, or ``"module:builder"``
    with ``trust_code=True`` only (importing the module runs its code; ``origin``, the file the
    config came from, names it in the refusal). ``pretrained`` overrides ``cfg.pretrained``;
    ``pretrained=False`` (trained weights replace them anyway) also leaves the encoder's weights
    (``encoder_weights``, ``pretrained_file``) unread."""
    kwargs = without_starting_weights(cfg.kwargs) if pretrained is False else dict(cfg.kwargs)
    pretrained = cfg.pretrained if pretrained is None else pretrained
    if ":" in cfg.name:
        module, fn = cfg.name.split(":", 1)
        if not trust_code:
            raise ValueError(
                f"model.name {cfg.name!r} in {origin} would import and run Python code ({module}.{fn}); "
                "use a registered model name (`visattn models`), or give --trust-code (trust_code=True) "
                "if you trust that file")
        return getattr(importlib.import_module(module), fn)(num_classes=num_classes, **cfg.kwargs)
    return create_model(cfg.name, num_classes=num_classes, pretrained=pretrained, **kwargs)


def enable_grad_checkpointing(model: nn.Module, name: str) -> None:
    """Turn on gradient (activation) checkpointing in ``model.encoder``, or in ``model`` itself when
    it has no encoder, through timm's ``set_grad_checkpointing``: the stages of a timm feature
    extractor (all but its first and last module) keep no activations for backward and run again
    there, trading up to one more encoder forward per step for memory. The gradients are
    unchanged; BatchNorm layers in those stages update their running statistics in the second run
    too (``torch.utils.checkpoint`` recomputes the forward as it was). ``ValueError`` naming the
    model ``name`` if neither offers it."""
    target = getattr(model, "encoder", model)
    if not callable(getattr(target, "set_grad_checkpointing", None)):
        where = "its encoder" if target is not model else "it"
        raise ValueError(f"train.grad_checkpointing=true: model {name!r} does not support gradient checkpointing "
                         f"({where}, {type(target).__name__}, has no timm set_grad_checkpointing); "
                         "set train.grad_checkpointing=false")
    target.set_grad_checkpointing(True)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable parameters; with ``head_lr_mult != 1`` everything but
    ``model.encoder`` learns at ``lr * head_lr_mult`` (the DANet/CCNet recipes)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.head_lr_mult == 1:
        groups = [{"params": params}]
    else:
        if not hasattr(model, "encoder"):
            raise ValueError("train.head_lr_mult needs a model with an `encoder` submodule")
        encoder = {id(p) for p in model.encoder.parameters()}
        groups = [{"params": [p for p in params if id(p) in encoder]},
                  {"params": [p for p in params if id(p) not in encoder], "lr": cfg.lr * cfg.head_lr_mult}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise ValueError(f"train.optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")


class LRSchedule:
    """LR factor at step ``t``: ``(1 - t / total) ** power`` (poly, the segmentation papers'), or
    ``gamma ** (number of milestones <= t)`` (step, the ImageNet papers'); never below
    ``min_factor``; times a linear warm-up from ``warmup_factor`` to 1 over ``warmup_iters`` steps."""

    def __init__(self, total: int, power: float = 0.9, warmup_iters: int = 0, warmup_factor: float = 0.1,
                 min_factor: float = 0.0, milestones: list[int] | None = None, gamma: float = 0.1) -> None:
        self.total, self.power, self.warmup_iters = total, power, warmup_iters
        self.warmup_factor, self.min_factor = warmup_factor, min_factor
        self.milestones, self.gamma = sorted(milestones) if milestones else None, gamma

    def __call__(self, step: int) -> float:
        if self.milestones is not None:
            factor = self.gamma ** sum(step >= m for m in self.milestones)
        else:
            factor = (1 - min(step, self.total) / self.total) ** self.power
        factor = max(factor, self.min_factor)
        if step < self.warmup_iters:
            factor *= self.warmup_factor + (1 - self.warmup_factor) * step / self.warmup_iters
        return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total: int,
                    iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The :class:`LRSchedule` of ``cfg`` over ``total`` steps, stepped once per optimizer step.
    Step milestones (``lr_steps``) count epochs in epoch-based runs, else steps."""
    if cfg.schedule not in ("poly", "step"):
        raise ValueError(f"train.schedule must be 'poly' or 'step', got {cfg.schedule!r}")
    milestones = None
    if cfg.schedule == "step":
        milestones = [int(m) * (iters_per_epoch if cfg.epochs else 1) for m in cfg.lr_steps]
    schedule = LRSchedule(total, cfg.power, cfg.warmup_iters, cfg.warmup_factor, cfg.min_lr / cfg.lr, milestones,
                          cfg.lr_gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
