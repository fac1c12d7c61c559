"""Run configuration: typed sections with defaults, a YAML recipe on top, ``key=value`` overrides on top of that.

Every key a recipe or an override names must be a field of its section (a typo is an error naming
the key, the file and the closest valid one). A field typed as a dict (``model.kwargs``: keyword
arguments passed through to the model builder) is free-form: it accepts any key. Where a number
belongs, a string is read as one (PyYAML reads ``1e-4``, without a dot, as a string).

A recipe may build on other files, as mmsegmentation's configs do: ``_base_: file.yaml`` or a list
of files, each path relative to the file that names it (:func:`read_recipe`). The bases are merged
depth-first in the order listed (a base's own bases before it), then the recipe's keys on top;
the later of two files wins. Mappings merge key by key, free-form ones (``model.kwargs``,
``train.loss``) included, so a recipe adds to or changes its bases' builder arguments; lists,
scalars and ``null`` replace. The recipe so resolved then replaces the defaults' ``model.kwargs``
as a whole (a recipe describes its model; the defaults' arguments are the demo's). ``_base_``
exists only in files: the resolved config, which a run saves, has none.

The defaults are the no-argument run: DANet (ResNet-18 encoder, output stride 8, random init) on
64x64 digit scenes, AdamW, 800 steps of 8, a few minutes on a 2-core CPU. The recipes in configs/
override them (the papers' recipes name SGD explicitly).

A resolved config is validated (:func:`validate_config`) before anything is built from it: every
value has its field's type (an integer field refuses ``2.5`` rather than truncating it) and lies in
its allowed range (:data:`RULES`), the model name is registered and its keyword arguments are the
builder's, and the device exists. A violation is a :class:`ConfigError` naming the key and what it
allows.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..data import DATASETS, IMAGENET_MEAN, IMAGENET_STD

__all__ = ["Config", "ModelConfig", "DataConfig", "DigitsConfig", "TrainConfig", "EvalConfig", "RunConfig",
           "ConfigError", "RULES", "load_config", "read_recipe", "validate_config", "apply_overrides", "merge_config",
           "dump_config"]

_DEFAULT_DATASET = DATASETS["digits"]
LOSSES = ("ce", "ohem", "dice", "focal", "lovasz")  # the terms train.loss may weight
CLASS_WEIGHTINGS = ("median_frequency", "inverse_sqrt_frequency")  # computed from the training masks


@dataclass
class ModelConfig:
    name: str = "danet"  # a registered name (visattn models) or "package.module:builder"
    pretrained: bool = False  # the whole model's released weights (a segmentor's encoder: kwargs.encoder_weights)
    kwargs: dict[str, Any] = field(default_factory=lambda: {"encoder": "resnet18", "output_stride": 8})  # to the builder


@dataclass
class DigitsConfig:
    """The embedded digit scenes (:class:`visattn.data.DigitScenes`, :class:`visattn.data.OccludedDigitScenes`)."""

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


def _unknown(path: str, options: Iterable[str], where: str) -> ConfigError:
    options = list(options)
    close = difflib.get_close_matches(path.rsplit(".", 1)[-1], options, n=1)
    parent = path.rsplit(".", 1)[0] + "." if "." in path else ""
    hint = f" (did you mean '{parent}{close[0]}'?)" if close else f" (valid: {', '.join(options)})"
    return ConfigError(f"unknown config key {path!r}{where}{hint}")


def _alternatives(annotation: Any) -> tuple[Any, ...]:
    """The members of a union annotation (``int | None``: ``(int, NoneType)``), else ``(annotation,)``."""
    return typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)


def _number_kinds(annotation: Any) -> tuple[type, ...]:
    """``(float,)``, ``(int,)`` or ``()``: the numeric types a field's annotation admits."""
    return tuple(t for t in (float, int) if t in _alternatives(annotation))


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
    """``value`` as the field's type where that is lossless: a string holding a number for a numeric
    field (or list element), an integral float for an integer field; anything else as it is (the
    validation rejects it)."""
    lists = [a for a in _alternatives(annotation) if typing.get_origin(a) is list]
    if lists and isinstance(value, list):
        (item,) = typing.get_args(lists[0])
        return [_coerce(item, v, f"{path}[{i}]", where) for i, v in enumerate(value)]
    kinds = _number_kinds(annotation)
    if kinds and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"config key {path!r}{where} must be a number, got {value!r}") from None
        return value if float in kinds else _integral(value)
    if kinds == (int,) and isinstance(value, float):
        return _integral(value)
    return copy.deepcopy(value)


def _integral(number: float) -> int | float:
    return int(number) if number.is_integer() else number


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """Apply ``section.key=value`` strings; values are parsed as YAML (``0.02``, ``[1, 2]``, ``null``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=0.02)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(err)})") from None
        parts = key.strip().split(".")
        update: Any = value
        for part in reversed(parts):
            update = {part: update}
        # model.kwargs={...} replaces the section, model.kwargs.x=1 sets one key in it
        cfg = merge_config(cfg, update, where=f" in --set {item}", replace_free_form=_is_free_form(cfg, parts))
    return cfg


def _yaml_problem(err: yaml.YAMLError) -> str:
    """The parser's complaint and where, on one line: ``line 3, column 7: mapping values are not allowed here``."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


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


_BASE_KEY = "_base_"  # a recipe's key naming the files it builds on


def read_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping the recipe file ``path`` describes: the files its ``_base_`` names (one path or a
    list, relative to ``path``), each read the same way and merged depth-first in order, with the
    file's own keys on top (mappings merge key by key, anything else replaces); ``_base_`` itself is gone.

    Each file's keys are checked against the config's fields as it is read, so an unknown key is
    named with the file it is in. A missing or malformed base, or files that name each other in a
    cycle, are a :class:`ConfigError` naming the files.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    return _read_recipe(path, ())


def _read_recipe(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """:func:`read_recipe` of ``path``, named as a base by the files of ``chain`` (outermost first)."""
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(err)}") from None
    recipe = {} if recipe is None else recipe
    if not isinstance(recipe, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not a {type(recipe).__name__}")
    recipe = dict(recipe)
    names = recipe.pop(_BASE_KEY, [])
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ConfigError(f"{_BASE_KEY!r} in {path} must be a file name or a list of file names, got {names!r}")
    merge_config(Config(), recipe, where=f" in {path}")  # names this file in a key error
    chain += (path,)
    merged: dict[str, Any] = {}
    for name in names:
        base = path.parent / name
        if not base.is_file():
            raise ConfigError(f"config file {path} names the base {name!r}, which does not exist ({base})")
        if any(base.resolve() == seen.resolve() for seen in chain):
            cycle = " -> ".join(os.path.normpath(p) for p in (*chain, base))
            raise ConfigError(f"config files name each other as bases in a cycle: {cycle}")
        merged = _merge_recipes(merged, _read_recipe(base, chain))
    return _merge_recipes(merged, recipe)


def _merge_recipes(base: Mapping, update: Mapping) -> dict[str, Any]:
    """``base`` with ``update`` on top: where both hold a mapping under a key they merge key by key
    (free-form ones too), anything else (a list, a scalar, ``null``) in ``update`` replaces."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            value = _merge_recipes(merged[key], value)
        merged[key] = value
    return merged


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = (), base: Config | None = None) -> Config:
    """Defaults (or ``base``), then the recipe ``path`` with its bases (:func:`read_recipe`), then
    ``overrides``.

    Without ``base``, the defaults' data section follows the dataset the result names
    (:data:`visattn.data.DATASETS`): keys the recipe and the overrides leave unset take that
    dataset's values. The result is validated (:func:`validate_config`)."""
    recipe = {} if path is None else read_recipe(path)
    overrides = list(overrides)

    def build(start: Config) -> Config:
        return apply_overrides(merge_config(start, recipe, where=f" in {path}"), overrides)

    if base is not None:
        return validate_config(build(base))
    cfg = build(Config())
    return validate_config(build(merge_config(Config(), {"data": _dataset_defaults(cfg.data.dataset)})))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)


# -- validation


@dataclass(frozen=True)
class Rule:
    """What a config value may be: ``test(value)``, asked only of values of the field's type, and
    ``allowed``, the words completing "must be ..." in the error."""

    test: Callable[[Any], bool]
    allowed: str


def _above(low: float, kind: str = "a number") -> Rule:
    return Rule(lambda v: v > low, f"{kind} > {low}")


def _at_least(low: float, kind: str = "a number") -> Rule:
    return Rule(lambda v: v >= low, f"{kind} >= {low}")


def _within(low: float, high: float, high_open: bool = False) -> Rule:
    if high_open:
        return Rule(lambda v: low <= v < high, f"a number in [{low}, {high})")
    return Rule(lambda v: low <= v <= high, f"a number in [{low}, {high}]")


def _one_of(*options: str) -> Rule:
    return Rule(lambda v: v in options, f"one of {', '.join(options)}")


def _low_high(low: float, kind: str) -> Rule:
    return Rule(lambda v: len(v) == 2 and low <= v[0] <= v[1], f"[low, high], {kind} with {low} <= low <= high")


def _is_device_name(name: str) -> bool:
    try:
        return name == "auto" or torch.device(name).type in ("cpu", "cuda", "mps")
    except RuntimeError:
        return False


_POSITIVE_INT = _above(0, "an integer")
_COUNT = _at_least(0, "an integer")
_SIZE = Rule(lambda v: len(v) == 2 and min(v) > 0, "[height, width], integers > 0")

# Range of every constrained key (a field absent here only has to have its type). A field that may
# be null is allowed null as well.
RULES: dict[str, Rule] = {
    "task": _one_of("segmentation", "classification"),
    "data.dataset": _one_of(*DATASETS),
    "data.num_classes": _POSITIVE_INT,
    "data.classes": Rule(bool, "a non-empty list of class names"),
    "data.crop_size": Rule(lambda v: v > 0 if isinstance(v, int) else _SIZE.test(v),
                           "an integer > 0 or [height, width], integers > 0"),
    "data.scale_range": Rule(lambda v: len(v) == 2 and 0 < v[0] <= v[1], "[low, high], numbers with 0 < low <= high"),
    "data.color_jitter": _at_least(0),
    "data.mean": Rule(lambda v: len(v) == 3, "three numbers (R, G, B)"),
    "data.std": Rule(lambda v: len(v) == 3 and min(v) > 0, "three numbers > 0 (R, G, B)"),
    "data.workers": _COUNT,
    "data.digits.train_length": _POSITIVE_INT,
    "data.digits.val_length": _POSITIVE_INT,
    "data.digits.size": _POSITIVE_INT,
    "data.digits.digits_per_image": _low_high(0, "integers"),
    "data.digits.digit_size": _low_high(1, "integers"),  # and high <= data.digits.size
    "data.digits.seed": _COUNT,
    "train.iters": _POSITIVE_INT,
    "train.epochs": _POSITIVE_INT,
    "train.batch_size": _POSITIVE_INT,  # and a multiple of accum_steps x processes
    "train.accum_steps": _POSITIVE_INT,
    "train.optimizer": _one_of("sgd", "adamw"),
    "train.lr": _above(0),
    "train.momentum": _within(0, 1, high_open=True),
    "train.betas": Rule(lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    "train.weight_decay": _at_least(0),
    "train.schedule": _one_of("poly", "step"),
    "train.power": _at_least(0),
    "train.lr_steps": Rule(lambda v: all(m > 0 for m in v), "a list of integers > 0"),
    "train.lr_gamma": _above(0),
    "train.warmup_iters": _COUNT,
    "train.warmup_factor": _within(0, 1),
    "train.min_lr": _at_least(0),  # and <= lr
    "train.head_lr_mult": _above(0),
    "train.loss_weights": Rule(lambda v: all(w >= 0 for w in v.values()), "a mapping of output names to numbers >= 0"),
    "train.loss": Rule(lambda v: bool(v) and set(v) <= set(LOSSES) and all(w >= 0 for w in v.values())
                       and any(w > 0 for w in v.values()),
                       f"a mapping of {', '.join(LOSSES)} to numbers >= 0, not all 0"),
    "train.class_weights": Rule(lambda v: v in CLASS_WEIGHTINGS if isinstance(v, str) else
                                bool(v) and all(w >= 0 for w in v),
                                f"{', '.join(CLASS_WEIGHTINGS)} or a list of numbers >= 0, one per class"),
    "train.focal_gamma": _at_least(0),
    "train.ohem_thresh": _within(0, 1),
    "train.ohem_min_kept": _COUNT,
    "train.label_smoothing": _within(0, 1, high_open=True),
    "train.amp": _one_of("bf16", "fp16"),
    "train.clip_grad": _above(0),
    "train.ema": _within(0, 1, high_open=True),
    "train.seed": _COUNT,
    "train.device": Rule(_is_device_name, "auto, cpu, cuda, cuda:N or mps"),  # and present on this machine
    "train.log_every": _POSITIVE_INT,
    "train.eval_every": _POSITIVE_INT,
    "train.ckpt_every": _POSITIVE_INT,
    "train.keep_ckpts": _POSITIVE_INT,
    "eval.batch_size": _POSITIVE_INT,
    "eval.scales": Rule(lambda v: len(v) > 0 and min(v) > 0, "a non-empty list of numbers > 0"),
    "eval.mode": _one_of("whole", "slide"),
    "eval.crop_size": _SIZE,
    "eval.stride": _SIZE,
}

_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _matches(annotation: Any, value: Any) -> bool:
    """Whether ``value`` has the type ``annotation`` names (a bool is no number, a float no integer)."""
    if annotation is Any:
        return True
    if isinstance(annotation, types.UnionType):
        return any(_matches(a, value) for a in typing.get_args(annotation))
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list:
        return isinstance(value, list) and all(_matches(args[0], v) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_matches(args[0], k) and _matches(args[1], v) for k, v in value.items())
    if isinstance(value, bool):
        return annotation is bool
    if annotation is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, annotation)


def _type_words(annotation: Any) -> str:
    words = [_TYPE_WORDS.get(a) or ("a list" if typing.get_origin(a) is list else "a mapping")
             for a in _alternatives(annotation)]
    return " or ".join(sorted(words, key=lambda w: w != "null"))


def _leaves(section: Any, prefix: str = "") -> Iterable[tuple[str, Any, Any]]:
    """``(dotted key, annotation, value)`` of every non-section field of ``section``."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", hints[f.name], value


def _invalid(key: str, allowed: str, value: Any) -> ConfigError:
    return ConfigError(f"config key {key!r} must be {allowed}, got {value!r}")


def validate_config(cfg: Config) -> Config:
    """``cfg`` when every value is allowed, else a :class:`ConfigError` naming the first key that is
    not and its allowed range: types, :data:`RULES`, the relations between keys, the model (name and
    keyword arguments) and the device."""
    for key, annotation, value in _leaves(cfg):
        rule = RULES.get(key)
        nullable = _matches(annotation, None)
        if value is None and nullable:
            continue
        if not _matches(annotation, value) or (rule is not None and not rule.test(value)):
            allowed = _type_words(annotation) if rule is None else rule.allowed
            allowed = f"null or {allowed}" if nullable and rule is not None else allowed
            raise _invalid(key, allowed, value)
    t, digits = cfg.train, cfg.data.digits
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if t.batch_size % (t.accum_steps * processes):
        raise _invalid("train.batch_size",
                       f"a multiple of train.accum_steps x processes = {t.accum_steps} x {processes}", t.batch_size)
    if t.min_lr > t.lr:
        raise _invalid("train.min_lr", f"a number in [0, train.lr] = [0, {t.lr}]", t.min_lr)
    if t.ohem and t.loss is not None and "ohem" not in t.loss:
        raise _invalid("train.ohem", f"false when train.loss is given without an ohem term ({t.loss})", t.ohem)
    if t.optimizer == "sgd" and t.nesterov and t.momentum == 0:
        raise _invalid("train.nesterov", "false when train.momentum is 0 (Nesterov needs momentum)", t.nesterov)
    if digits.digit_size[1] > digits.size:
        raise _invalid("data.digits.digit_size", f"[low, high], integers with 1 <= low <= high <= data.digits.size = "
                                                 f"{digits.size}", digits.digit_size)
    _check_device(t.device)
    _check_model(cfg.model)
    return cfg


def _check_device(name: str) -> None:
    if name == "auto":
        return
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if (device.index or 0) >= count:
            present = f"auto, cpu, cuda or cuda:0..cuda:{count - 1}" if count else "auto or cpu (no CUDA device here)"
            raise _invalid("train.device", present, name)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise _invalid("train.device", "auto or cpu (MPS is not available on this machine)", name)


def _check_model(model: ModelConfig) -> None:
    """``model.name`` names a builder, and the builder accepts ``model.kwargs``.

    Builders pass their ``**kwargs`` on to encoders and heads, so their signatures do not tell which
    arguments they accept: the model is built on the meta device (no memory, no weights read, no
    data), for two classes, with ``pretrained`` off and the encoder's weights (``encoder_weights``,
    ``pretrained_file``) left out (a file only has to exist), and a ``TypeError`` or ``ValueError``
    it raises is the config's error.
    """
    if ":" in model.name:
        # A ``module:builder`` name would run code to be checked: it is left to the build, which
        # imports it only when the user trusts it (``--trust-code``).
        return
    from ..models import create_model, list_models

    names = list_models()
    if model.name not in names:
        close = difflib.get_close_matches(model.name, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "`visattn models` lists them"
        raise _invalid("model.name", f"a registered model or 'package.module:builder' ({hint})", model.name)
    build = functools.partial(create_model, model.name, num_classes=2, pretrained=False)
    kwargs = dict(model.kwargs)
    pretrained_file = kwargs.pop("pretrained_file", None)
    if pretrained_file is not None and not Path(str(pretrained_file)).is_file():
        raise _invalid("model.kwargs.pretrained_file", "null or an existing file", pretrained_file)
    encoder_weights = kwargs.pop("encoder_weights", None)
    if encoder_weights not in (None, "imagenet") and not Path(str(encoder_weights)).is_file():
        raise _invalid("model.kwargs.encoder_weights", "null, imagenet or an existing file", encoder_weights)
    try:
        with torch.device("meta"):
            build(**kwargs)
    except (TypeError, ValueError) as err:
        message = " ".join(str(err).split())
        unknown = re.search(r"unexpected keyword argument '(\w+)'", message)
        if unknown:
            raise ConfigError(f"config key 'model.kwargs.{unknown[1]}' is not an argument of model {model.name!r} "
                              f"({message})") from None
        raise ConfigError(f"config key 'model.kwargs' does not suit model {model.name!r}: {message}") from None
    except (RuntimeError, NotImplementedError):  # an operation the meta device lacks: the real build reports errors
        pass
