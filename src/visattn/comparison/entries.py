"""The entries of a comparison and the config each is trained with: a registered segmentor, or an
attention module as the head of ``attnet``, on the base recipe with only the model replaced."""
from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import os
from collections.abc import Iterable
from dataclasses import dataclass

import yaml

from ..attention import list_attentions
from ..bounded import load_yaml
from ..engine.config import Config, ConfigError, merge_config, validate_config
from ..models import list_models
from ..models.segmentation import build_segmentor

__all__ = ["Entry", "make_entries", "segmentor_arguments", "entry_config", "recipe", "config_from_text"]


@dataclass(frozen=True)
class Entry:
    """One model of a comparison: registered segmentor ``model`` (with ``attention`` for ``attnet``)."""

    name: str
    model: str
    attention: str | None = None


def make_entries(models: Iterable[str] = (), attentions: Iterable[str] = ()) -> list[Entry]:
    """The entries of ``models`` (registered names) then ``attentions`` (as ``attnet-<name>``);
    an unknown or repeated name is a :class:`ConfigError` naming it."""
    models, attentions = list(models), list(attentions)
    for names, known, kind, listing in ((models, list_models(), "model", "visattn models"),
                                        (attentions, list_attentions(), "attention", "visattn.list_attentions()")):
        for name in names:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
                hint = f"did you mean {', '.join(close)}? " if close else ""
                raise ConfigError(f"unknown {kind} {name!r} ({hint}`{listing}` lists them)")
    entries = [Entry(m, m) for m in models] + [Entry(f"attnet-{a}", "attnet", a) for a in attentions]
    if not entries:
        raise ConfigError("nothing to compare: name models and/or attentions")
    seen = [e.name for e in entries]
    repeated = sorted({n for n in seen if seen.count(n) > 1})
    if repeated:
        raise ConfigError(f"entries given twice: {', '.join(repeated)}")
    return entries


@functools.cache
def segmentor_arguments() -> frozenset[str]:
    """The builder arguments every segmentor shares (:func:`~visattn.models.segmentation.build_segmentor`'s
    keyword-only ones: the encoder, its weights, the auxiliary head): what every entry keeps of the base."""
    return frozenset(p.name for p in inspect.signature(build_segmentor).parameters.values()
                     if p.kind is inspect.Parameter.KEYWORD_ONLY)


def entry_config(base: Config, entry: Entry, seed: int, run_dir: str | os.PathLike | None = None) -> Config:
    """``base`` with ``entry``'s model, ``train.seed = seed`` and ``run.dir = run_dir`` (not validated).

    The entry that is the base model keeps all of ``model.kwargs``; the others keep the
    :func:`segmentor_arguments` among them (a head argument of the base's head is not theirs)."""
    kwargs = dict(base.model.kwargs)
    is_base = entry.model == base.model.name and entry.attention in (None, kwargs.get("attention"))
    if not is_base:
        kwargs = {k: v for k, v in kwargs.items() if k in segmentor_arguments()}
    if entry.attention is not None:
        kwargs["attention"] = entry.attention
    return dataclasses.replace(
        base, model=dataclasses.replace(base.model, name=entry.model, kwargs=kwargs),
        train=dataclasses.replace(base.train, seed=seed),
        run=dataclasses.replace(base.run, dir=None if run_dir is None else str(run_dir)))


def recipe(cfg: Config) -> dict:
    """What makes two comparisons the same: the resolved config without ``run`` (where) and
    ``train.seed`` (each run's own), as plain YAML data."""
    data = cfg.to_dict()
    data.pop("run")
    data["train"].pop("seed")
    return yaml.safe_load(yaml.safe_dump(data))


def config_from_text(text: str) -> Config:
    """A config dumped by :func:`~visattn.engine.config.dump_config`, read back and validated."""
    return validate_config(merge_config(Config(), load_yaml(text, "the comparison's config"),
                                        where=" in the comparison's config"))
