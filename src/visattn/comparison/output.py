"""The output directory of a comparison (:class:`CompareDir`): its recipe, the runs, their logs, the report."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import yaml

from ..bounded import read_json, read_yaml
from ..engine.config import Config, ConfigError
from ..engine.run_dir import RunDir
from ..filenames import path_component
from ..weights import atomic_write
from .entries import Entry, recipe

__all__ = ["CompareDir", "default_output", "FINAL_METRICS", "read_final"]

FINAL_METRICS = RunDir(".").final_metrics.name  # in a run directory: the trainer's record of a complete run


class CompareDir:
    """The files of the comparison in ``path`` (the layout is in :mod:`visattn.comparison`)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    spec = property(lambda self: self.path / "compare.yaml")
    cost_json = property(lambda self: self.path / "cost.json")
    report_md = property(lambda self: self.path / "report.md")
    report_json = property(lambda self: self.path / "report.json")
    miou_vs_cost = property(lambda self: self.path / "miou_vs_cost.png")
    per_class_iou_delta = property(lambda self: self.path / "per_class_iou_delta.png")
    attention_maps = property(lambda self: self.path / "attention_maps.png")

    def run(self, entry: Entry, seed: int) -> RunDir:
        """The run directory of ``entry`` and ``seed``; ``FileExistsError`` when a folder on the way
        from ``runs/`` is a symbolic link (visattn writes and cleans only under this directory)."""
        return RunDir(self._inside("runs", path_component(entry.name, "comparison entry"), f"seed{seed}"))

    def log(self, entry: Entry, seed: int) -> Path:
        return self._inside("logs", f"{path_component(entry.name, 'comparison entry')}-seed{seed}.log")

    def _inside(self, *parts: str) -> Path:
        path = self.path
        for part in parts:
            path = path / part
            if path.is_symlink():
                raise FileExistsError(f"{path} is a symbolic link (to {os.readlink(path)}); a comparison writes "
                                      f"only inside {self.path}: remove the link or choose another output directory")
        return path

    def claim(self, base: Config, entries: Sequence[dict], seeds: int) -> None:
        """Write compare.yaml, unless the directory holds another comparison (``ConfigError``
        naming the keys that differ) or something else (``FileExistsError``)."""
        wanted = recipe(base)
        if self.spec.is_file():
            saved = _read_spec(self.spec).get("recipe")
            if saved != wanted:
                changed = _differences(wanted, saved or {})
                listed = "; ".join(changed[:5]) + ("; ..." if len(changed) > 5 else "")
                raise ConfigError(f"{self.path} holds a comparison of another recipe ({self.spec.name}): {listed}; "
                                  "give another output directory, or the recipe of that comparison")
        elif self.path.is_dir() and any(self.path.iterdir()):
            raise FileExistsError(f"{self.path} is not empty and holds no {self.spec.name}: a comparison starts in a "
                                  "new or empty directory, or continues in its own")
        text = yaml.safe_dump({"recipe": wanted, "entries": list(entries), "seeds": seeds}, sort_keys=False)
        atomic_write(self.spec, lambda tmp: Path(tmp).write_text(text))


def _read_spec(path: Path) -> dict:
    """compare.yaml's mapping; ``ConfigError`` naming the file when it is not one (broken or tampered)."""
    try:
        spec = read_yaml(path) or {}
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if not isinstance(spec, dict) or not isinstance(spec.get("recipe", {}), dict):
        raise ConfigError(f"{path} is not a comparison's spec (a mapping with a 'recipe' mapping)")
    return spec


def _differences(new: dict, old: dict, prefix: str = "") -> list[str]:
    """``key: value here, value there`` for every dotted key whose value differs."""
    out = []
    for key in sorted(set(new) | set(old), key=str):
        a, b = new.get(key, "(absent)"), old.get(key, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} here, {b!r} there")
    return out


def default_output(base: Config, config: str | os.PathLike | None) -> Path:
    """``run.root/compare-<config name>-<recipe hash>``: the same comparison lands in the same
    directory, another recipe in another."""
    digest = hashlib.sha256(yaml.safe_dump(recipe(base), sort_keys=True).encode()).hexdigest()[:8]
    stem = Path(config).stem if config is not None else "default"
    return Path(base.run.root) / f"compare-{stem}-{digest}"


def read_final(run: RunDir) -> dict | None:
    """The record the trainer wrote when the run completed (:meth:`RunDir.save_final_metrics`, whether
    compare or ``visattn train`` trained it), ``None`` if it has not; ``ValueError`` naming the file
    when it does not hold such a record (damaged or tampered)."""
    path = run.path / FINAL_METRICS
    if not path.is_file():
        return None
    try:
        record = read_json(path)
    except ValueError as err:
        raise ValueError(f"{err}; delete it to train the run again") from None
    problem = _final_problem(record)
    if problem:
        raise ValueError(f"{path} is not a complete run's record ({problem}); delete it to train the run again")
    return record


def _final_problem(record: object) -> str | None:
    """What makes ``record`` other than the trainer's final record, ``None`` if nothing."""
    def number(value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if not isinstance(record, dict):
        return f"a {type(record).__name__}, not a mapping"
    for key, kind in (("step", int), ("total", int), ("seconds", (int, float)), ("threads", int), ("classes", list),
                      ("metrics", dict)):
        if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
            return f"{key!r} is missing or not a {getattr(kind, '__name__', 'number')}"
    classes, metrics = record["classes"], record["metrics"]
    if not classes or not all(isinstance(c, str) for c in classes):
        return "'classes' is not a list of names"
    for key in ("mIoU", "mAcc"):
        if not number(metrics.get(key)):
            return f"'metrics.{key}' is missing or not a number"
    per_class = metrics.get("per_class_iou")
    if not isinstance(per_class, list) or len(per_class) != len(classes) or not all(
            v is None or number(v) for v in per_class):
        return f"'metrics.per_class_iou' is not {len(classes)} numbers, one per class"
    return None
