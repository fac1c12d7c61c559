"""Validation of a resolved config (:func:`validate_config`), before anything is built from it.

Every value has its field's type (an integer field refuses ``2.5`` rather than truncating it) and
lies in its allowed range (:data:`RULES`), related keys agree, a built-in dataset keeps its own
classes (``data.num_classes`` and ``data.classes`` are a folder dataset's), the model name is
registered and its keyword arguments are the builder's (none of them one with a key of its own:
``num_classes``, ``pretrained``), and the device exists. A violation is a :class:`ConfigError`
naming the key and what it allows.

Validating runs no user code and reads nothing from the network: a ``module:builder`` model, and
one whose arguments name a Hub repository, are left to the build, and the model is checked with
its weights left out.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...bounded import MAX_CLASSES, shorten
from ...data import DATASETS, dataset_spec
from ...models import create_model, list_models
from ...models.registry import ModelArgumentError
from ...models.segmentation import Segmentor
from ...weights import HUB_PREFIX
from .schema import CLASS_WEIGHTINGS, LOSSES, Config, ConfigError, ModelConfig, annotation_members

__all__ = ["Rule", "RULES", "MAX_PARAMETERS", "validate_config"]

MAX_PARAMETERS = 2_000_000_000  # the largest model a config may build: several times the largest segmentor


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
_MAX_SCALES = 16  # eval.scales: each is a forward pass of every image
_SIZE = Rule(lambda v: len(v) == 2 and min(v) > 0, "[height, width], integers > 0")

# Range of every constrained key (a field absent here only has to have its type). A field that may
# be null is allowed null as well.
RULES: dict[str, Rule] = {
    "task": _one_of("segmentation", "classification"),
    "data.dataset": _one_of(*DATASETS),
    "data.num_classes": Rule(lambda v: 0 < v <= MAX_CLASSES, f"an integer in [1, {MAX_CLASSES}]"),
    "data.classes": Rule(lambda v: 0 < len(v) <= MAX_CLASSES, f"a non-empty list of at most {MAX_CLASSES} class names"),
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
                                0 < len(v) <= MAX_CLASSES and all(w >= 0 for w in v) and any(w > 0 for w in v),
                                f"{', '.join(CLASS_WEIGHTINGS)} or a list of numbers >= 0, one per class, not all 0"),
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
    "eval.scales": Rule(lambda v: 0 < len(v) <= _MAX_SCALES and min(v) > 0,
                        f"a non-empty list of at most {_MAX_SCALES} numbers > 0"),
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
             for a in annotation_members(annotation)]
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
    return ConfigError(f"config key {key!r} must be {allowed}, got {shorten(value)}")


def validate_config(cfg: Config) -> Config:
    """``cfg`` when every value is allowed, else a :class:`ConfigError` naming the first key that is
    not and its allowed range: types, :data:`RULES`, the relations between keys, the device and the
    model (name and keyword arguments)."""
    _check_values(cfg)
    _check_relations(cfg)
    _check_dataset_classes(cfg.data)
    _check_device(cfg.train.device)
    _check_model(cfg.model, cfg.task)
    return cfg


def _check_values(cfg: Config) -> None:
    """Each value on its own: its field's type and its :data:`RULES` range (``null`` where allowed)."""
    for key, annotation, value in _leaves(cfg):
        rule = RULES.get(key)
        nullable = _matches(annotation, None)
        if value is None and nullable:
            continue
        if not _matches(annotation, value) or (rule is not None and not rule.test(value)):
            allowed = _type_words(annotation) if rule is None else rule.allowed
            allowed = f"null or {allowed}" if nullable and rule is not None else allowed
            raise _invalid(key, allowed, value)


def _check_relations(cfg: Config) -> None:
    """Keys that bound or exclude each other."""
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


def _check_model(model: ModelConfig, task: str) -> None:
    """``model.name`` names a builder of the ``task``'s kind of model, and the builder accepts
    ``model.kwargs``."""
    _check_set_elsewhere(model.kwargs)
    if ":" in model.name:
        # A ``module:builder`` name would run code to be checked: it is left to the build, which
        # imports it only when the user trusts it (``--trust-code``).
        return
    _check_registered(model.name)
    _refuse_file_arguments(model.kwargs)
    kwargs = _without_weight_files(model.kwargs)
    if _names_a_hub_repository(kwargs):
        # timm reads a Hub id's architecture from its repository even for a model without weights:
        # that download is the build's, never the config's
        return
    built = _check_builder_arguments(model.name, kwargs)
    if built is not None and isinstance(built, Segmentor) != (task == "segmentation"):
        kind, other = ("a segmentor", "a classifier") if task == "segmentation" else ("a classifier", "a segmentor")
        hint = ("task=classification with a classification dataset (digits_cls, imagefolder)" if task == "segmentation"
                else "task=segmentation with a segmentation dataset")
        raise _invalid("model.name", f"{kind} for task {task!r} ({model.name} is {other}: for it set {hint})",
                       model.name)


# Builder arguments the config sets through other keys, and those keys.
_SET_ELSEWHERE = {
    "num_classes": "data.num_classes (a folder dataset's; a built-in dataset has its own classes)",
    "pretrained": "model.pretrained",
}


def _check_set_elsewhere(kwargs: dict[str, Any]) -> None:
    for key, where in _SET_ELSEWHERE.items():
        if key in kwargs:
            raise ConfigError(f"config key 'model.kwargs.{key}' is set by {where}: drop it from model.kwargs")


def _check_dataset_classes(data: Any) -> None:
    """``data.num_classes`` and ``data.classes`` are a folder dataset's: a built-in dataset's classes
    are its own, and a config saying otherwise would not describe the run."""
    own = dataset_spec(data.dataset).classes
    if own is None:
        return
    if data.num_classes not in (None, len(own)):
        raise _invalid("data.num_classes", f"null for dataset {data.dataset!r}, which has its own {len(own)} classes "
                       "(data.num_classes is a folder dataset's)", data.num_classes)
    if data.classes not in (None, list(own)):
        raise _invalid("data.classes", f"null for dataset {data.dataset!r}, which has its own classes "
                       "(data.classes is a folder dataset's)", data.classes)


def _check_registered(name: str) -> None:
    names = list_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "`visattn models` lists them"
        raise _invalid("model.name", f"a registered model or 'package.module:builder' ({hint})", name)


def _without_weight_files(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` less the encoder's starting weights (``pretrained_file``, ``encoder_weights``), which
    only have to exist (a file) or be known (``imagenet``): nothing is read or downloaded."""
    kwargs = dict(kwargs)
    pretrained_file = kwargs.pop("pretrained_file", None)
    if pretrained_file is not None and not Path(str(pretrained_file)).is_file():
        raise _invalid("model.kwargs.pretrained_file", "null or an existing file", pretrained_file)
    encoder_weights = kwargs.pop("encoder_weights", None)
    if encoder_weights not in (None, "imagenet") and not Path(str(encoder_weights)).is_file():
        raise _invalid("model.kwargs.encoder_weights", "null, imagenet or an existing file", encoder_weights)
    return kwargs


# timm's arguments that make it read a file or fetch a source of its choosing (checkpoint_path: torch.load
# of any path; pretrained_cfg and its overlay: a file or URL); a config starts an encoder from a local file
# only through pretrained_file / encoder_weights, which visattn reads itself (safetensors, weights_only)
FILE_ARGUMENTS = ("checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay")


def _refuse_file_arguments(kwargs: dict[str, Any], prefix: str = "model.kwargs") -> None:
    """``ConfigError`` naming a :data:`FILE_ARGUMENTS` key at any depth of ``kwargs``."""
    for key, value in kwargs.items():
        if key in FILE_ARGUMENTS:
            raise ConfigError(f"config key '{prefix}.{key}' would make timm read {value!r}: a config names an "
                              "encoder's starting weights with model.kwargs.pretrained_file or encoder_weights")
        if isinstance(value, dict):
            _refuse_file_arguments(value, f"{prefix}.{key}")


def _names_a_hub_repository(kwargs: dict[str, Any]) -> bool:
    """Whether an argument names a Hugging Face Hub repository (``encoder: hf-hub:user/repo``)."""
    return any(isinstance(value, str) and value.startswith(HUB_PREFIX) for value in kwargs.values())


def _check_builder_arguments(name: str, kwargs: dict[str, Any]) -> nn.Module | None:
    """The model the registered builder ``name`` builds from ``kwargs`` on the meta device (``None``
    when the meta device cannot build it), or the error that it does not accept them.

    Builders pass their ``**kwargs`` on to encoders and heads, so their signatures do not tell which
    arguments they accept: the model is built on the meta device (no memory, no weights read, no
    data), for two classes, with ``pretrained`` off, and a ``TypeError`` or ``ValueError`` it raises
    is the config's error, as is a model of more than :data:`MAX_PARAMETERS` parameters (refused
    before a byte of it is allocated).
    """
    try:
        with torch.device("meta"):
            model = create_model(name, num_classes=2, pretrained=False, **kwargs)
    except ModelArgumentError as err:
        argument = re.search(r"takes no argument '(\w+)'(.*)$", str(err))
        raise ConfigError(f"config key 'model.kwargs.{argument[1]}' is not an argument of model {name!r}"
                          f"{argument[2]}") from None
    except (TypeError, ValueError) as err:
        message = " ".join(str(err).split())
        raise ConfigError(f"config key 'model.kwargs' does not suit model {name!r}: {message}") from None
    except (RuntimeError, NotImplementedError):  # an operation the meta device lacks: the real build reports errors
        return None
    size = sum(p.numel() for p in model.parameters())
    if size > MAX_PARAMETERS:
        raise ConfigError(f"config key 'model.kwargs' makes model {name!r} of {size:.3g} parameters, more than "
                          f"{MAX_PARAMETERS:.0e}")
    return model
