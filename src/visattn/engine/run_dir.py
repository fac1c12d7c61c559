"""A training run's directory: its layout, its checkpoints, and the trained model it offers.

Layout::

    config.yaml            the resolved configuration (re-read by --resume, eval and predict)
    metrics.jsonl          one JSON line per log step and per evaluation
    tb/                    TensorBoard events
    checkpoints/           step_XXXXXXX.safetensors (weights) + step_XXXXXXX.state.pt (optimizer,
                           scheduler, step, RNG states; torch.save, loadable with weights_only=True)
                           and ``latest`` naming the newest complete pair
    best.safetensors       weights with the best validation mIoU (top-1 for classification)
    best.json              that evaluation's metrics and step
    model.safetensors      the final weights

Every file is written atomically (:func:`visattn.weights.atomic_write`): a reader, or a run killed
while writing, never leaves a half-written file behind.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import torch
from torch import Tensor, nn

from ..data import classes_and_palette
from ..weights import atomic_write, read_state_dict, save_state_dict
from .build import build_model
from .config import Config, dump_config, load_config

__all__ = ["RunDir", "load_trained"]


class RunDir:
    """The files of the training run in ``path`` (nothing is created until written)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @classmethod
    def new(cls, cfg: Config) -> RunDir:
        """``run.dir``, else ``run.root/<run.name or model-dataset>-<date>-<time>``."""
        if cfg.run.dir:
            return cls(cfg.run.dir)
        name = cfg.run.name or f"{cfg.model.name.split(':')[-1]}-{cfg.data.dataset}"
        return cls(Path(cfg.run.root) / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    tensorboard = property(lambda self: self.path / "tb")
    checkpoints = property(lambda self: self.path / "checkpoints")
    best_weights = property(lambda self: self.path / "best.safetensors")
    best_metrics = property(lambda self: self.path / "best.json")
    final_weights = property(lambda self: self.path / "model.safetensors")

    # -- configuration, metrics and weights

    def write_config(self, cfg: Config) -> None:
        atomic_write(self.config, lambda tmp: Path(tmp).write_text(dump_config(cfg)))

    def load_config(self, overrides: Iterable[str] = ()) -> Config:
        if not self.config.is_file():
            raise FileNotFoundError(f"not a run directory (no {self.config.name}): {self.path}")
        return load_config(self.config, overrides)

    def truncate_metrics(self, step: int) -> None:
        """Drop the metrics lines written after ``step`` (a resumed run writes them again)."""
        if not self.metrics.is_file():
            return
        lines = [ln for ln in self.metrics.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= step]
        atomic_write(self.metrics, lambda tmp: Path(tmp).write_text("".join(ln + "\n" for ln in lines)))

    def save_best(self, model: nn.Module, record: dict) -> None:
        """``model``'s weights and the evaluation ``record`` (metrics and step) that made them the best."""
        save_state_dict(model.state_dict(), self.best_weights)
        atomic_write(self.best_metrics, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))

    def save_final(self, model: nn.Module) -> None:
        save_state_dict(model.state_dict(), self.final_weights)

    def inference_weights(self) -> Path:
        """The weights the run offers for inference: best, else final."""
        for path in (self.best_weights, self.final_weights):
            if path.is_file():
                return path
        raise FileNotFoundError(f"no {self.best_weights.name} or {self.final_weights.name} in run directory {self.path}")

    # -- checkpoints: a weights file and a state file per step, and a pointer to the newest pair

    def _checkpoint(self, name: str, suffix: str) -> Path:
        return self.checkpoints / f"{name}{suffix}"

    def latest_checkpoint(self) -> str | None:
        """Name (``step_XXXXXXX``) of the newest complete checkpoint, ``None`` without one."""
        pointer = self.checkpoints / "latest"
        return pointer.read_text().strip() if pointer.is_file() else None

    def save_checkpoint(self, step: int, model: nn.Module, state: dict, keep: int) -> str:
        """Write ``model``'s weights and the training ``state`` of ``step``, point ``latest`` at them
        once both are complete, and delete all but the newest ``keep`` pairs."""
        name = f"step_{step:07d}"
        save_state_dict(model.state_dict(), self._checkpoint(name, ".safetensors"))
        atomic_write(self._checkpoint(name, ".state.pt"), lambda tmp: torch.save(state, tmp))
        atomic_write(self.checkpoints / "latest", lambda tmp: Path(tmp).write_text(name))
        older = sorted(p.name.removesuffix(".safetensors") for p in self.checkpoints.glob("step_*.safetensors"))
        older.remove(name)
        for old in older[: max(0, len(older) - (keep - 1))]:
            self._checkpoint(old, ".safetensors").unlink(missing_ok=True)
            self._checkpoint(old, ".state.pt").unlink(missing_ok=True)
        return name

    def load_checkpoint(self) -> tuple[dict[str, Tensor], dict]:
        """Weights and training state of the newest checkpoint (both read without unpickling code)."""
        name = self.latest_checkpoint()
        if name is None:
            raise FileNotFoundError(f"no checkpoint to resume in {self.checkpoints}")
        weights = read_state_dict(self._checkpoint(name, ".safetensors"))
        state = torch.load(self._checkpoint(name, ".state.pt"), map_location="cpu", weights_only=True)
        return weights, state


def load_trained(run: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
                 weights: str | os.PathLike | None = None, overrides: Iterable[str] = (),
                 device: torch.device | str = "cpu") -> tuple[Config, nn.Module]:
    """``(config, model in eval mode)`` from ``run`` (its config.yaml and best weights) or from
    ``config`` + ``weights``; ``weights`` overrides the run's."""
    if run is not None:
        run = RunDir(run)
        cfg = run.load_config(overrides)
        weights = weights or run.inference_weights()
    else:
        cfg = load_config(config, overrides)
    if weights is None:
        raise ValueError("give --run RUN_DIR, or --weights FILE (with --config)")
    classes, _ = classes_and_palette(cfg.data)
    model = build_model(cfg.model, len(classes), pretrained=False)
    model.load_state_dict(read_state_dict(weights))
    return cfg, model.to(device).eval()
