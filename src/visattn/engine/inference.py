"""Rebuild a trained model from a run directory, or from a config plus a weights file."""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from ..data import classes_and_palette
from ..weights import read_state_dict
from .config import load_config
from .trainer import build_model

__all__ = ["load_trained", "run_weights"]


def run_weights(run_dir: Path) -> Path:
    """The weights a run directory offers for inference: best, else final."""
    for name in ("best.safetensors", "model.safetensors"):
        if (run_dir / name).is_file():
            return run_dir / name
    raise FileNotFoundError(f"no best.safetensors or model.safetensors in run directory {run_dir}")


def load_trained(run: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
                 weights: str | os.PathLike | None = None, overrides: Iterable[str] = (),
                 device: torch.device | str = "cpu") -> tuple[dict, nn.Module]:
    """``(config, model in eval mode)`` from ``run`` (its config.yaml and best weights) or from
    ``config`` + ``weights``; ``weights`` overrides the run's."""
    if run is not None:
        run = Path(run)
        if not (run / "config.yaml").is_file():
            raise FileNotFoundError(f"not a run directory (no config.yaml): {run}")
        cfg = load_config(run / "config.yaml", overrides)
        weights = weights or run_weights(run)
    else:
        cfg = load_config(config, overrides)
    if weights is None:
        raise ValueError("give --run RUN_DIR, or --weights FILE (with --config)")
    classes, _ = classes_and_palette(cfg["data"])
    model = build_model(dict(cfg["model"], pretrained=False), len(classes))
    model.load_state_dict(read_state_dict(weights))
    return cfg, model.to(device).eval()
