"""Run configuration: typed sections with defaults, a YAML recipe on top, ``key=value`` overrides on top of that.

Every key a recipe or an override names must be a field of its section (a typo is an error naming
the key and the closest valid one). A field typed as a dict (``model.kwargs``: keyword arguments
passed through to the model builder) is free-form: it accepts any key. Where a number belongs, a
string is read as one (PyYAML reads ``1e-4``, without a dot, as a string).

The defaults are the no-argument run: DANet (ResNet-18 encoder, output stride 8, random init) on
64x64 digit scenes, AdamW, 800 steps of 8, a few minutes on a 2-core CPU. The recipes in configs/
override them (the papers' recipes name SGD explicitly).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data import DATASETS, IMAGENET_MEAN, IMAGENET_STD

__all__ = ["Config", "ModelConfig", "DataConfig", "DigitsConfig", "TrainConfig", "EvalConfig", "RunConfig",
           "ConfigError", "load_config", "apply_overrides", "merge_config", "dump_config"]

_DEFAULT_DATASET = DATASETS["digits"]


@dataclass
class ModelConfig:
    name: str = "danet"  # a registered name (visattn models) or "package.module:builder"
    pretrained: bool = False
    kwargs: dict[str, Any] = field(default_factory=lambda: {"encoder": "resnet18", "output_stride": 8})  # to the builder


@dataclass
class DigitsConfig:
    """The embedded digit scenes (:class:`visattn.data.DigitScenes`)."""

    train_length: int = 2000
    val_length: int = 200
    size: int = 64
    digits_per_image: list[int] = field(default_factory=lambda: [2, 4])
    digit_size: list[int] = field(default_factory=lambda: [12, 24])
    seed: int = 0


@dataclass
class DataConfig:
    dataset: str = "digits"  # a name of visattn.data.DATASETS
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    num_classes: int | None = None  # folder datasets
    classes: list[str] | None = None  # folder datasets: names
    # crop_size, scale_range and flip default to the dataset's own (visattn.data.DATASETS)
    crop_size: int | list[int] = field(default_factory=lambda: list(_DEFAULT_DATASET.crop_size))
    scale_range: list[float] = field(default_factory=lambda: list(_DEFAULT_DATASET.scale_range))
    flip: bool = _DEFAULT_DATASET.flip
    color_jitter: float = 0.0
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    workers: int = 0
    digits: DigitsConfig = field(default_factory=DigitsConfig)


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
    ohem: bool = False
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100000  # per process and micro-batch
    label_smoothing: float = 0.0
    amp: str | None = None  # null | bf16 | fp16
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
    """A config key that does not exist, or a malformed override."""


def _unknown(path: str, options: Iterable[str], where: str) -> ConfigError:
    options = list(options)
    close = difflib.get_close_matches(path.rsplit(".", 1)[-1], options, n=1)
    parent = path.rsplit(".", 1)[0] + "." if "." in path else ""
    hint = f" (did you mean '{parent}{close[0]}'?)" if close else f" (valid: {', '.join(options)})"
    return ConfigError(f"unknown config key {path!r}{where}{hint}")


def _number_kinds(annotation: Any) -> tuple[type, ...]:
    """``(float,)``, ``(int,)`` or ``()``: the numeric types a field's annotation admits."""
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return tuple(t for t in (float, int) if t in args)


def merge_config(base: Any, update: Mapping, where: str = "", replace_free_form: bool = True,
                 _prefix: tuple[str, ...] = ()) -> Any:
    """A copy of the config (or section) ``base`` with the keys of the nested mapping ``update`` set;
    unknown keys raise :class:`ConfigError`.

    A free-form section (model keyword arguments) is replaced as a whole when
    ``replace_free_form`` (a recipe describes its model completely), else merged key by key.
    """
    out = copy.deepcopy(base)
    hints = typing.get_type_hints(type(base))
    for key, value in update.items():
        path = _prefix + (str(key),)
        name = ".".join(path)
        if key not in hints:
            raise _unknown(name, hints, where)
        current = getattr(out, key)
        if dataclasses.is_dataclass(current) or isinstance(current, dict):
            if value is None and isinstance(current, dict):
                value = {}
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {name!r}{where} must be a mapping, got {value!r}")
            if isinstance(current, dict):  # free-form
                value = {**({} if replace_free_form else current), **copy.deepcopy(dict(value))}
            else:
                value = merge_config(current, value, where, replace_free_form, path)
        else:
            value = _coerce(hints[key], value, name, where)
        setattr(out, key, value)
    return out


def _coerce(annotation: Any, value: Any, path: str, where: str) -> Any:
    kinds = _number_kinds(annotation)
    if kinds and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"config key {path!r}{where} must be a number, got {value!r}") from None
        return int(number) if float not in kinds and number.is_integer() else number
    return copy.deepcopy(value)


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """Apply ``section.key=value`` strings; values are parsed as YAML (``0.02``, ``[1, 2]``, ``null``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=0.02)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else None
        parts = key.strip().split(".")
        update: Any = value
        for part in reversed(parts):
            update = {part: update}
        # model.kwargs={...} replaces the section, model.kwargs.x=1 sets one key in it
        cfg = merge_config(cfg, update, where=f" in --set {item}", replace_free_form=_is_free_form(cfg, parts))
    return cfg


def _is_free_form(cfg: Config, parts: list[str]) -> bool:
    section: Any = cfg
    for part in parts:
        section = getattr(section, part, None)
    return isinstance(section, dict)


def _dataset_defaults(name: str) -> dict[str, Any]:
    """The data keys a config naming dataset ``name`` gets unless it sets them (none for an unknown name:
    building the dataset reports it)."""
    spec = DATASETS.get(name)
    if spec is None:
        return {}
    return {"crop_size": list(spec.crop_size), "scale_range": list(spec.scale_range), "flip": spec.flip}


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = (), base: Config | None = None) -> Config:
    """Defaults (or ``base``), then the YAML file ``path``, then ``overrides``.

    Without ``base``, the defaults' data section follows the dataset the result names
    (:data:`visattn.data.DATASETS`): keys the file and the overrides leave unset take that
    dataset's values."""
    recipe: Mapping = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        recipe = yaml.safe_load(path.read_text()) or {}
        if not isinstance(recipe, Mapping):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
    overrides = list(overrides)

    def build(start: Config) -> Config:
        return apply_overrides(merge_config(start, recipe, where=f" in {path}"), overrides)

    if base is not None:
        return build(base)
    cfg = build(Config())
    return build(merge_config(Config(), {"data": _dataset_defaults(cfg.data.dataset)}))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)
