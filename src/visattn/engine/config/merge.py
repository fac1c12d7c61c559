"""Setting config keys: a nested mapping onto a config (:func:`merge_config`) and ``key=value``
overrides (:func:`apply_overrides`).

Every key named must be a field of its section (a typo is an error naming the key, where it came
from and the closest valid one). A field typed as a dict (``model.kwargs``: keyword arguments passed
through to the model builder) is free-form: it accepts any key. Where a number belongs, a string is
read as one (PyYAML reads ``1e-4``, without a dot, as a string).

A model's name decides its arguments: an override naming another model drops the ``model.kwargs``
set for the previous one (:func:`for_model_name`).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from ...bounded import UnreadableFileError, load_yaml, shorten
from .schema import Config, ConfigError, annotation_members

__all__ = ["merge_config", "apply_overrides", "for_model_name", "model_kwargs_named"]


def _unknown(path: str, options: Iterable[str], where: str) -> ConfigError:
    options = list(options)
    close = difflib.get_close_matches(path.rsplit(".", 1)[-1], options, n=1)
    parent = path.rsplit(".", 1)[0] + "." if "." in path else ""
    hint = f" (did you mean '{parent}{close[0]}'?)" if close else f" (valid: {', '.join(options)})"
    return ConfigError(f"unknown config key {path!r}{where}{hint}")


def _number_kinds(annotation: Any) -> tuple[type, ...]:
    """``(float,)``, ``(int,)`` or ``()``: the numeric types a field's annotation admits."""
    return tuple(t for t in (float, int) if t in annotation_members(annotation))


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
                raise ConfigError(f"config key {name!r}{where} must be a mapping, got {shorten(value)}")
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
    lists = [a for a in annotation_members(annotation) if typing.get_origin(a) is list]
    if lists and isinstance(value, list):
        (item,) = typing.get_args(lists[0])
        return [_coerce(item, v, f"{path}[{i}]", where) for i, v in enumerate(value)]
    kinds = _number_kinds(annotation)
    if kinds and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"config key {path!r}{where} must be a number, got {shorten(value)}") from None
        return value if float in kinds else _integral(value)
    if kinds == (int,) and isinstance(value, float):
        return _integral(value)
    return copy.deepcopy(value)


def _integral(number: float) -> int | float:
    return int(number) if number.is_integer() else number


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """Apply ``section.key=value`` strings; values are parsed as YAML (``0.02``, ``[1, 2]``, ``null``;
    :func:`~visattn.bounded.load_yaml`: no aliases).

    An override that changes ``model.name`` drops the ``model.kwargs`` that were set for the
    previous model (the recipe's, the defaults'): a model's name decides its arguments. The
    ``model.kwargs`` the overrides set themselves, before or after it, stay."""
    updates = [(item, _parse_override(item)) for item in overrides]
    given = set().union(*(model_kwargs_named(update) for _, update in updates))
    for item, update in updates:
        parts = item.split("=", 1)[0].strip().split(".")
        # model.kwargs={...} replaces the section, model.kwargs.x=1 sets one key in it
        changed = merge_config(cfg, update, where=f" in --set {item}", replace_free_form=_is_free_form(cfg, parts))
        cfg = for_model_name(cfg, changed, given)
    return cfg


def _parse_override(item: str) -> dict[str, Any]:
    """The nested mapping ``key=value`` sets (``a.b=1``: ``{"a": {"b": 1}}``)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=0.02)")
    key, raw = item.split("=", 1)
    if "\n" in raw or "\r" in raw:  # YAML would fold it into a space: a value that is not the one typed
        raise ConfigError(f"override {shorten(item)!r}: the value holds a line break; --set takes one line")
    try:
        value = load_yaml(raw, "the value") if raw.strip() else None
    except UnreadableFileError as err:
        raise ConfigError(f"override {shorten(item)}: {err}") from None
    update: Any = value
    for part in reversed(key.strip().split(".")):
        update = {part: update}
    return update


def model_kwargs_named(update: Mapping) -> set[str]:
    """The ``model.kwargs`` keys the nested mapping ``update`` sets."""
    model = update.get("model")
    kwargs = model.get("kwargs") if isinstance(model, Mapping) else None
    return set(kwargs) if isinstance(kwargs, Mapping) else set()


def for_model_name(before: Config, after: Config, given: Collection[str]) -> Config:
    """``after``, a change of ``before``; where it names another model, its ``model.kwargs`` keep
    only the keys in ``given`` (those set together with the name): the others were the previous
    model's, and a model's name decides what its arguments mean (``danet_r101_d8`` is a ResNet-101
    unless its own settings say otherwise, whatever encoder the demo's ``danet`` had)."""
    if after.model.name == before.model.name:
        return after
    kwargs = {k: v for k, v in after.model.kwargs.items() if k in given}
    return dataclasses.replace(after, model=dataclasses.replace(after.model, kwargs=kwargs))


def _is_free_form(cfg: Config, parts: list[str]) -> bool:
    section: Any = cfg
    for part in parts:
        section = getattr(section, part, None)
    return isinstance(section, dict)
