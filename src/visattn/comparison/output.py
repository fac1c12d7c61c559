"""The output directory of a comparison (:class:`CompareDir`): its recipe, the runs, their logs, the report."""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import yaml

from ..engine.config import Config, ConfigError
from ..engine.run_dir import RunDir
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
    report_md = property(lambda self: self.path / "report.md")
    report_json = property(lambda self: self.path / "report.json")
    miou_vs_cost = property(lambda self: self.path / "miou_vs_cost.png")
    per_class_iou_delta = property(lambda self: self.path / "per_class_iou_delta.png")
    attention_maps = property(lambda self: self.path / "attention_maps.png")

    def run(self, entry: Entry, seed: int) -> RunDir:
        return RunDir(self.path / "runs" / entry.name / f"seed{seed}")

    def log(self, entry: Entry, seed: int) -> Path:
        return self.path / "logs" / f"{entry.name}-seed{seed}.log"

    def claim(self, base: Config, entries: Sequence[dict], seeds: int) -> None:
        """Write compare.yaml, unless the directory holds another comparison (``ConfigError``
        naming the keys that differ) or something else (``FileExistsError``)."""
        wanted = recipe(base)
        if self.spec.is_file():
            saved = (yaml.safe_load(self.spec.read_text()) or {}).get("recipe")
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
    compare or ``visattn train`` trained it), ``None`` if it has not."""
    path = run.path / FINAL_METRICS
    return json.loads(path.read_text()) if path.is_file() else None
