"""Loading a trained model, wherever it was saved: a training run directory (:class:`RunDir`), a
directory in the Hub layout written by :func:`visattn.save_pretrained`, a Hub repository
(``hf-hub:user/repo[@revision]``), or a config and a weights file.

Each source gives the same pair, the run configuration and the model in eval mode, so ``eval``,
``predict``, ``explain`` and ``export`` read any of them. Nothing loaded runs code: models are
built from registered names (a config naming ``"module:builder"`` builds only with
``trust_code=True``, and a Hub layout never names one), weights are safetensors.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import classes_and_palette, dataset_defaults
from .engine.build import build_model
from .engine.config import Config, ConfigError, load_config, merge_config
from .engine.run_dir import RunDir
from .hub import CONFIG_NAME, WEIGHTS_NAME, is_pretrained_source, local_dir, read_hub_config, run_hub_config
from .models.registry import without_starting_weights
from .weights import load_weights

__all__ = ["load_trained", "load_pretrained", "from_pretrained"]


def load_trained(run: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
                 weights: str | os.PathLike | None = None, overrides: Iterable[str] = (),
                 device: torch.device | str = "cpu", trust_code: bool = False) -> tuple[Config, nn.Module]:
    """``(config, model in eval mode)`` from ``run`` (its config.yaml and best weights) or from
    ``config`` + ``weights``; ``weights`` overrides the run's. ``run`` may also be a directory saved by
    :func:`visattn.save_pretrained` or a Hub id ``hf-hub:user/repo`` (:func:`load_pretrained`).
    ``trust_code``: build a model the config names as ``"module:builder"`` (importing that module runs
    its code; never one a Hub config names)."""
    if run is not None:
        if is_pretrained_source(run):
            return load_pretrained(run, overrides, weights, device, trust_code)
        run = RunDir(run)
        cfg, origin = run.load_config(overrides), str(run.config)
        weights = weights or run.inference_weights()
    else:
        cfg, origin = load_config(config, overrides), str(config or "the default config")
    if weights is None:
        raise ValueError("give --run RUN_DIR, or --weights FILE (with --config)")
    classes, _ = classes_and_palette(cfg.data)
    model = build_model(cfg.model, len(classes), pretrained=False, trust_code=trust_code, origin=origin)
    load_weights(model, weights)
    return cfg, model.to(device).eval()


def load_pretrained(source: str | os.PathLike, overrides: Iterable[str] = (), weights: str | os.PathLike | None = None,
                    device: torch.device | str = "cpu", trust_code: bool = False,
                    revision: str | None = None) -> tuple[Config, nn.Module]:
    """``(config, model in eval mode)`` from a Hub-layout directory or ``hf-hub:user/repo[@revision]``;
    ``weights`` replaces its ``model.safetensors``, ``overrides`` (``key=value``) its config.
    ``trust_code`` applies to an override naming ``module:builder`` only: the downloaded config never
    names code. The model's ``hub_config`` attribute holds the ``config.json``."""
    directory = local_dir(source, revision)
    origin = directory / CONFIG_NAME
    config = read_hub_config(origin)
    cfg = _run_config(config, origin, overrides)
    classes, _ = classes_and_palette(cfg.data)
    if len(classes) != config["num_classes"]:
        raise ConfigError(f"{origin}: num_classes {config['num_classes']} but its dataset "
                          f"{cfg.data.dataset!r} has {len(classes)} classes")
    model = build_model(cfg.model, len(classes), pretrained=False, trust_code=trust_code, origin=str(origin))
    weights = Path(weights) if weights is not None else directory / WEIGHTS_NAME
    if weights.suffix != ".safetensors":
        raise ConfigError(f"{weights}: weights of a pretrained directory are read from .safetensors files only")
    load_weights(model, weights)
    model.hub_config = config
    return cfg, model.to(device).eval()


def from_pretrained(source: str | os.PathLike, *, revision: str | None = None,
                    device: torch.device | str = "cpu") -> nn.Module:
    """The model saved by :func:`visattn.save_pretrained` in directory ``source``, or in the Hub
    repository ``"hf-hub:user/repo"`` (``"hf-hub:user/repo@revision"`` or ``revision`` pins a branch,
    tag or commit), or trained in the run directory ``source`` (its best weights, as every command
    reads a run), in eval mode on ``device``. Its ``hub_config`` attribute holds the
    ``config.json`` (classes, palette), which :func:`visattn.save_pretrained` and
    :func:`visattn.push_to_hub` reuse."""
    if is_pretrained_source(source):
        return load_pretrained(source, device=device, revision=revision)[1]
    if not RunDir(source).config.is_file():
        raise FileNotFoundError(f"{source}: neither a training run directory (config.yaml) nor a directory saved by "
                                f"visattn.save_pretrained ({CONFIG_NAME})")
    _, model = load_trained(source, device=device)
    model.hub_config = run_hub_config(source)[0]
    return model


def _run_config(config: dict[str, Any], origin: Path, overrides: Iterable[str]) -> Config:
    """The run configuration ``config.json`` describes (validated as a run's): the recorded training
    config when there is one, with the model section always from the checked top-level keys."""
    task = config.get("task", "segmentation")
    recipe = {k: v for k, v in config.get("config", {}).items() if k != "run"}
    data = dict(recipe.get("data") or {})
    if "dataset" not in data:  # a model saved on its own: its classes in a folder dataset
        data["dataset"] = "folder" if task == "segmentation" else "imagefolder"
        data = {**dataset_defaults(data["dataset"]), "num_classes": config["num_classes"],
                "classes": config.get("classes"), **data}
    # where it trained is not where it loads
    recipe["train"] = {**(recipe.get("train") or {}), "device": "auto"}
    model = {"name": config["model"], "kwargs": without_starting_weights(config.get("model_kwargs", {})),
             "pretrained": False}
    recipe.update(task=task, data=data, model=model)
    base = merge_config(Config(), recipe, where=f" in {origin}")
    return load_config(None, overrides, base=base)
