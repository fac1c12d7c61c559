"""Setting config keys: a nested mapping onto a config (:func:`merge_config`) and ``key=value``
overrides (:func:`apply_overrides`).

Every key named must be a field of its section (a typo is an error naming the key, where it came
from and the closest valid one). A field typed as a dict (``model.kwargs``: keyword arguments passed
through to the model builder) is free-form: it accepts any key. Where a number belongs, a string is
read as one (PyYAML reads ``1e-4``, without a dot, as a string).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from .schema import Config, ConfigError, annotation_members

__all__ = ["merge_config", "apply_overrides", "yaml_problem", "load_yaml"]


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that names a key twice (it would keep the last value)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *base`` merges on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in first_line:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first on line {first_line[key] + 1})", key_node.start_mark)
                first_line[key] = key_node.start_mark.line
            except TypeError:  # an unhashable key: the base constructor reports it
                continue
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` of ``text``, except that a key repeated in one mapping is a ``yaml.YAMLError``
    naming the key and both lines (:func:`yaml_problem` words it)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader


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
    lists = [a for a in annotation_members(annotation) if typing.get_origin(a) is list]
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
        if "\n" in raw or "\r" in raw:  # YAML would fold it into a space: a value that is not the one typed
            raise ConfigError(f"override {item!r}: the value holds a line break; --set takes one line")
        try:
            value = load_yaml(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({yaml_problem(err)})") from None
        parts = key.strip().split(".")
        update: Any = value
        for part in reversed(parts):
            update = {part: update}
        # model.kwargs={...} replaces the section, model.kwargs.x=1 sets one key in it
        cfg = merge_config(cfg, update, where=f" in --set {item}", replace_free_form=_is_free_form(cfg, parts))
    return cfg


def yaml_problem(err: yaml.YAMLError) -> str:
    """The parser's complaint and where, on one line: ``line 3, column 7: mapping values are not allowed here``."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def _is_free_form(cfg: Config, parts: list[str]) -> bool:
    section: Any = cfg
    for part in parts:
        section = getattr(section, part, None)
    return isinstance(section, dict)
