"""Run configuration: nested defaults, YAML recipes on top, ``key=value`` overrides on top of that.

Every key a recipe or an override names must exist in :data:`DEFAULTS` (a typo is an error naming
the key and the closest valid one); the sections listed in :data:`FREE_FORM` (keyword arguments
passed through to the model builder) accept any key.
"""
from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["DEFAULTS", "DATASET_DEFAULTS", "FREE_FORM", "load_config", "apply_overrides", "merge_config", "dump_config", "ConfigError"]

# The defaults are the no-argument run: DANet (ResNet-18 encoder, output stride 8, random init) on
# 64x64 digit scenes, AdamW, 800 steps of 8, a few minutes on a 2-core CPU. Recipes in configs/
# override them (the papers' recipes name SGD explicitly).
DEFAULTS: dict[str, Any] = {
    "task": "segmentation",  # or "classification"
    "model": {
        "name": "danet",  # a registered name (visattn models) or "package.module:builder"
        "pretrained": False,
        "kwargs": {"encoder": "resnet18", "output_stride": 8},  # passed to the builder
    },
    "data": {
        "dataset": "digits",  # digits | cityscapes | ade20k | voc | folder | digits_cls | imagefolder
        "root": None,
        "train_split": "train",
        "val_split": "val",
        "num_classes": None,  # folder datasets
        "classes": None,  # folder datasets: names
        "crop_size": [64, 64],
        # digits: none; the scenes already vary the digits' size, and from scratch the extra zoom
        # costs more than it teaches in 800 steps (measured mIoU 55 with 0.75-1.5, 65 without)
        "scale_range": [1.0, 1.0],
        "flip": False,  # mirrored digits are not digits; the recipes for real datasets flip
        "color_jitter": 0.0,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "workers": 0,
        "digits": {"train_length": 2000, "val_length": 200, "size": 64, "digits_per_image": [2, 4],
                   "digit_size": [12, 24], "seed": 0},
    },
    "train": {
        "iters": 800,  # optimizer steps; used when epochs is null
        "epochs": None,
        "batch_size": 8,  # global: over all processes and accumulation steps
        "accum_steps": 1,
        # From scratch, SGD stays on the predict-background plateau for the few hundred steps a
        # CPU demo can afford (measured: mIoU 8-10 after 400-500 steps at lr 0.01-0.05); AdamW
        # leaves it within ~300 steps. The papers' recipes (configs/) use SGD.
        "optimizer": "adamw",  # sgd | adamw
        "lr": 0.002,
        "momentum": 0.9,  # sgd
        "nesterov": False,  # sgd
        "betas": [0.9, 0.999],  # adamw
        "weight_decay": 0.01,
        "schedule": "poly",  # poly | step
        "power": 0.9,  # poly: lr * (1 - t / T) ** power
        "lr_steps": [],  # step: lr *= lr_gamma at each (epochs when train.epochs is set, else steps)
        "lr_gamma": 0.1,
        "warmup_iters": 20,
        "warmup_factor": 0.1,  # linear warm-up starts at lr * warmup_factor
        "min_lr": 0.0,
        "head_lr_mult": 1.0,  # lr multiplier of everything but model.encoder (DANet: 10)
        "loss_weights": None,  # null: the model's loss_weights
        "ohem": False,
        "ohem_thresh": 0.7,
        "ohem_min_kept": 100000,  # per process and micro-batch
        "label_smoothing": 0.0,
        "amp": None,  # null | bf16 | fp16
        "sync_bn": True,  # SyncBatchNorm under DDP on CUDA
        "seed": 0,
        "deterministic": False,
        "device": "auto",
        "log_every": 10,
        "eval_every": 200,  # steps; null: evaluate at the end only
        "ckpt_every": 200,
        "keep_ckpts": 2,
    },
    "eval": {
        "batch_size": 16,
        "scales": [1.0],
        "flip": False,
        "mode": "whole",  # whole | slide
        "crop_size": None,  # slide window; null: data.crop_size
        "stride": None,  # slide stride; null: 2/3 of the window
    },
    "run": {"root": "runs", "name": None, "dir": None},
}

FREE_FORM = {("model", "kwargs")}

# The data defaults above are the digits demo's. A config that names another dataset but not these
# keys gets what the papers' recipes use for it instead (they crop, zoom and flip).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "cityscapes": {"crop_size": [769, 769], "scale_range": [0.5, 2.0], "flip": True},
    "ade20k": {"crop_size": [512, 512], "scale_range": [0.5, 2.0], "flip": True},
    "voc": {"crop_size": [512, 512], "scale_range": [0.5, 2.0], "flip": True},
    "folder": {"crop_size": [512, 512], "scale_range": [0.5, 2.0], "flip": True},
    "imagefolder": {"crop_size": [224, 224], "flip": True},  # RandomResizedCrop's own zoom
}


class ConfigError(ValueError):
    """A config key that does not exist, or a malformed override."""


def _unknown(path: str, options: Iterable[str], where: str) -> ConfigError:
    options = list(options)
    close = difflib.get_close_matches(path.rsplit(".", 1)[-1], options, n=1)
    parent = path.rsplit(".", 1)[0] + "." if "." in path else ""
    hint = f" (did you mean '{parent}{close[0]}'?)" if close else f" (valid: {', '.join(options)})"
    return ConfigError(f"unknown config key {path!r}{where}{hint}")


def merge_config(base: dict, update: Mapping, where: str = "", replace_free_form: bool = True,
                 _prefix: tuple[str, ...] = ()) -> dict:
    """Recursively merge ``update`` into a copy of ``base``; unknown keys raise :class:`ConfigError`.

    A free-form section (model keyword arguments) is replaced as a whole when
    ``replace_free_form`` (a recipe describes its model completely), else merged key by key.
    """
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = _prefix + (str(key),)
        if _prefix in FREE_FORM:
            out[key] = copy.deepcopy(value)
            continue
        if key not in out:
            raise _unknown(".".join(path), out, where)
        if isinstance(out[key], dict):
            if value is None and path in FREE_FORM:
                value = {}
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {'.'.join(path)!r}{where} must be a mapping, got {value!r}")
            start = {} if path in FREE_FORM and replace_free_form else out[key]
            out[key] = merge_config(start, value, where, replace_free_form, path)
        else:
            out[key] = _coerce(out[key], value, ".".join(path), where)
    return out


def _coerce(default: Any, value: Any, path: str, where: str) -> Any:
    """PyYAML reads ``1e-4`` (no dot) as a string: numbers are taken back where a number belongs."""
    numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
    if numeric and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"config key {path!r}{where} must be a number, got {value!r}") from None
    return copy.deepcopy(value)


def apply_overrides(cfg: dict, overrides: Iterable[str]) -> dict:
    """Apply ``section.key=value`` strings; values are parsed as YAML (``0.02``, ``[1, 2]``, ``null``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=0.02)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else None
        parts = tuple(key.strip().split("."))
        update: Any = value
        for part in reversed(parts):
            update = {part: update}
        # model.kwargs={...} replaces the section, model.kwargs.x=1 sets one key in it
        cfg = merge_config(cfg, update, where=f" in --set {item}", replace_free_form=parts in FREE_FORM)
    return cfg


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = (), base: Mapping | None = None) -> dict:
    """Defaults (or ``base``), then the YAML file ``path``, then ``overrides``.

    Without ``base``, the defaults' data section follows the dataset the result names
    (:data:`DATASET_DEFAULTS`): keys the file and the overrides leave unset take that dataset's
    values."""
    recipe: Mapping = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        recipe = yaml.safe_load(path.read_text()) or {}
        if not isinstance(recipe, Mapping):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
    overrides = list(overrides)

    def build(start: Mapping) -> dict:
        return apply_overrides(merge_config(start, recipe, where=f" in {path}"), overrides)

    cfg = build(dict(base) if base is not None else DEFAULTS)
    dataset_defaults = DATASET_DEFAULTS.get(cfg["data"]["dataset"]) if base is None else None
    return build(merge_config(DEFAULTS, {"data": dataset_defaults})) if dataset_defaults else cfg


def dump_config(cfg: Mapping) -> str:
    return yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=None)
