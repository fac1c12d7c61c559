"""Recipes: YAML files of config keys, read onto the defaults (:func:`load_config`), and the
resolved config written back (:func:`dump_config`).

A recipe may build on other files, as mmsegmentation's configs do: ``_base_: file.yaml`` or a list
of files, each path relative to the file that names it (:func:`read_recipe`). The bases are merged
depth-first in the order listed (a base's own bases before it), then the recipe's keys on top;
the later of two files wins. Mappings merge key by key, free-form ones (``model.kwargs``,
``train.loss``) included, so a recipe adds to or changes its bases' builder arguments; lists,
scalars and ``null`` replace. The recipe so resolved then replaces the defaults' ``model.kwargs``
as a whole (a recipe describes its model; the defaults' arguments are the demo's), and a recipe
that names another model without ``model.kwargs`` gets none of the defaults'
(:func:`~.merge.for_model_name`). ``_base_`` exists only in files: the resolved config, which a
run saves, has none.

Reading a recipe runs no code of its own and reads nothing but the files it names, each within
:data:`~visattn.bounded.MAX_CONFIG_BYTES` and as plain YAML without aliases or a key given twice
(:func:`~visattn.bounded.read_yaml`).
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ...bounded import UnreadableFileError, read_yaml, shorten
from ...data import dataset_defaults
from .merge import apply_overrides, for_model_name, merge_config, model_kwargs_named
from .schema import Config, ConfigError
from .validation import validate_config

__all__ = ["read_recipe", "load_config", "dump_config"]


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
        recipe = read_yaml(path)
    except UnreadableFileError as err:
        raise ConfigError(f"config file {err}") from None
    recipe = {} if recipe is None else recipe
    if not isinstance(recipe, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not a {type(recipe).__name__}")
    recipe = dict(recipe)
    names = recipe.pop(_BASE_KEY, [])
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ConfigError(f"{_BASE_KEY!r} in {path} must be a file name or a list of file names, got {shorten(names)}")
    merge_config(Config(), recipe, where=f" in {path}")  # names this file in a key error
    chain += (path,)
    merged: dict[str, Any] = {}
    for name in names:
        base = path.parent / name
        if not base.is_file():
            state = "is not a file" if base.exists() else "does not exist"
            raise ConfigError(f"config file {path} names the base {name!r}, which {state} ({base})")
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
        with_recipe = for_model_name(start, merge_config(start, recipe, where=f" in {path}"), model_kwargs_named(recipe))
        return apply_overrides(with_recipe, overrides)

    if base is not None:
        return validate_config(build(base))
    cfg = build(Config())
    return validate_config(build(merge_config(Config(), {"data": dataset_defaults(cfg.data.dataset)})))


def dump_config(cfg: Config) -> str:
    """``cfg`` as YAML, read back by :func:`load_config`. Where ``train.epochs`` is set it governs the
    run's length, and ``train.iters`` says so in a comment."""
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)
    if cfg.train.epochs is not None:
        text = re.sub(r"^(  iters: .*)$", r"\1  # not used: train.epochs sets the length", text, count=1, flags=re.M)
    return text
