"""The run configuration's schema: one dataclass per section, each field with its type and default.

The defaults are the no-argument run: DANet (ResNet-18 encoder, output stride 8, random init) on
64x64 digit scenes, AdamW, 800 steps of 8, a few minutes on a 2-core CPU. The recipes in configs/
override them (the papers' recipes name SGD explicitly).

The ``data`` section is the data package's (:class:`visattn.data.DataConfig`), next to the dataset
table whose names and defaults it uses.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from ...data import DataConfig, DigitsConfig

__all__ = ["Config", "ModelConfig", "DataConfig", "DigitsConfig", "TrainConfig", "EvalConfig", "RunConfig",
           "ConfigError", "LOSSES", "CLASS_WEIGHTINGS", "annotation_members"]

LOSSES = ("ce", "ohem", "dice", "focal", "lovasz")  # the terms train.loss may weight
CLASS_WEIGHTINGS = ("median_frequency", "inverse_sqrt_frequency")  # computed from the training masks


@dataclass
class ModelConfig:
    name: str = "danet"  # a registered name (visattn models) or "package.module:builder"
    pretrained: bool = False  # the whole model's released weights (a segmentor's encoder: kwargs.encoder_weights)
    kwargs: dict[str, Any] = field(default_factory=lambda: {"encoder": "resnet18", "output_stride": 8})  # to the builder


@dataclass
class TrainConfig:
    iters: int = 800  # optimizer steps; used when epochs is null
    epochs: int | None = None
    batch_size: int = 8  # global: over all processes and accumulation steps
    accum_steps: int = 1
    # From scratch, SGD stays on the predict-background plateau for the few hundred steps a CPU run
    # affords, where AdamW leaves it; the papers' recipes (configs/) use SGD.
    optimizer: str = "adamw"  # sgd | adamw
    lr: float = 0.002
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw
    weight_decay: float = 0.01
    schedule: str = "poly"  # poly | step
    power: float = 0.9  # poly: lr * (1 - t / T) ** power
    lr_steps: list[int] = field(default_factory=list)  # step: lr *= lr_gamma at each (epochs when epochs is set, else steps)
    lr_gamma: float = 0.1
    warmup_iters: int = 20
    warmup_factor: float = 0.1  # linear warm-up starts at lr * warmup_factor
    min_lr: float = 0.0
    head_lr_mult: float = 1.0  # lr multiplier of everything but model.encoder (DANet: 10)
    loss_weights: dict[str, float] | None = None  # null: the model's loss_weights
    # weighted sum of ce | ohem | dice | focal | lovasz, e.g. {ce: 1, dice: 1}; null: {ce: 1} ({ohem: 1} with ohem)
    loss: dict[str, float] | None = None
    class_weights: list[float] | str | None = None  # per class, or median_frequency | inverse_sqrt_frequency
    focal_gamma: float = 2.0
    ohem: bool = False  # short for loss: {ohem: 1}
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100000  # per process and micro-batch
    label_smoothing: float = 0.0
    amp: str | None = None  # null | bf16 | fp16
    clip_grad: float | None = None  # max norm of all gradients together
    ema: float | None = None  # decay of an exponential moving average of the weights, evaluated and saved
    grad_checkpointing: bool = False  # the encoder's (timm set_grad_checkpointing)
    channels_last: bool = False
    compile: bool = False  # torch.compile the model (falls back to eager with a warning)
    sync_bn: bool = True  # SyncBatchNorm under DDP on CUDA
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    log_every: int = 10
    eval_every: int | None = 200  # steps; null: evaluate at the end only
    ckpt_every: int = 200
    keep_ckpts: int = 2


@dataclass
class EvalConfig:
    batch_size: int = 16
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    mode: str = "whole"  # whole | slide
    crop_size: list[int] | None = None  # slide window; null: data.crop_size
    stride: list[int] | None = None  # slide stride; null: 2/3 of the window


@dataclass
class RunConfig:
    root: str = "runs"
    name: str | None = None
    dir: str | None = None


@dataclass
class Config:
    task: str = "segmentation"  # or "classification"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """A config key that does not exist, a value outside its allowed range, a malformed override or
    recipe."""


def annotation_members(annotation: Any) -> tuple[Any, ...]:
    """The members of a union annotation (``int | None``: ``(int, NoneType)``), else ``(annotation,)``."""
    return typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
