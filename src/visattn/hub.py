"""The Hugging Face Hub layout of a trained model: a directory (or Hub repository) holding
``config.json`` and ``model.safetensors``.

``config.json``::

    {"model": "danet_r101_d8",          a registered model name (visattn.list_models())
     "model_kwargs": {...},             keyword arguments of its builder
     "num_classes": 19,
     "task": "segmentation",            or "classification"
     "classes": [...], "palette": [[r, g, b], ...],
     "config": {...}}                   a training run's resolved config (data, eval), when saved from one

``save_pretrained`` writes the layout from a model or a training run directory, ``push_to_hub``
uploads it (:meth:`huggingface_hub.HfApi.upload_folder`), :func:`local_dir` finds it in a directory
or fetches ``"hf-hub:user/repo[@revision]"`` (:func:`huggingface_hub.hf_hub_download`, which reads
the local Hugging Face cache first and only it under ``HF_HUB_OFFLINE=1``), and
:func:`read_hub_config` reads and checks its ``config.json``. :mod:`visattn.trained` loads the
model (:func:`visattn.from_pretrained`).

Loading is as safe as loading a run directory: the model is built from a registered name (a config
naming ``"module:builder"`` is refused: no code from a download is imported), and the weights are
read from safetensors (nothing is unpickled).
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
from huggingface_hub import HfApi, hf_hub_download
from torch import nn

from . import __version__
from .bounded import MAX_CLASSES, MAX_CONFIG_BYTES, UnreadableFileError, read_json, shorten
from .data import classes_and_palette
from .engine.config import ConfigError
from .engine.run_dir import RunDir
from .models import create_model
from .models.registry import without_starting_weights
from .models.segmentation.base import Segmentor
from .weights import (
    HUB_PREFIX, WeightsError, atomic_write, fetch, host_resolves, hub_cache_file, read_state_dict, save_state_dict,
)

__all__ = ["save_pretrained", "push_to_hub", "is_pretrained_source", "local_dir", "read_hub_config", "HUB_PREFIX",
           "CONFIG_NAME", "WEIGHTS_NAME", "run_hub_config"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_TASKS = ("segmentation", "classification")


def is_pretrained_source(source: str | os.PathLike) -> bool:
    """``source`` is a Hub id (``hf-hub:user/repo``) or a directory of the Hub layout (``config.json``,
    no run ``config.yaml``)."""
    if str(source).startswith(HUB_PREFIX):
        return True
    path = Path(source)
    return (path / CONFIG_NAME).is_file() and not (path / "config.yaml").exists()


def local_dir(source: str | os.PathLike, revision: str | None = None) -> Path:
    """The directory holding ``source``'s files: itself, or the Hub snapshot ``hf_hub_download`` finds
    in the local cache or downloads into it."""
    if not str(source).startswith(HUB_PREFIX):
        path = Path(source)
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {path}: not a directory saved by visattn.save_pretrained")
        return path
    repo_id, _, pinned = str(source).removeprefix(HUB_PREFIX).partition("@")
    revision = pinned or revision
    # a host out of reach is not retried: the cache alone answers (and without the file, nothing is tried)
    local_only = not host_resolves(huggingface_hub.constants.ENDPOINT)
    try:
        files = [fetch(lambda name=name: hf_hub_download(repo_id, name, revision=revision, library_name="visattn",
                                                         library_version=__version__, local_files_only=local_only),
                       source=str(source), cache_file=hub_cache_file(repo_id, name, revision),
                       check_host=huggingface_hub.constants.ENDPOINT)
                 for name in (CONFIG_NAME, WEIGHTS_NAME)]
    except WeightsError:
        raise
    except ValueError as err:  # an invalid id
        raise FileNotFoundError(f"cannot fetch {source}: {' '.join(str(err).split())}") from err
    return Path(files[0]).parent


def read_hub_config(path: Path) -> dict[str, Any]:
    """``config.json`` at ``path``, checked: a registered model name, its keyword arguments, the
    classes (at most :data:`~visattn.bounded.MAX_CLASSES`). The file is read within
    :data:`~visattn.bounded.MAX_CONFIG_BYTES`. Anything else is a :class:`ConfigError` naming the file."""
    try:
        config = read_json(path, MAX_CONFIG_BYTES)
    except UnreadableFileError as err:
        raise ConfigError(str(err)) from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    name, kwargs, num_classes = config.get("model"), config.get("model_kwargs", {}), config.get("num_classes")
    if not isinstance(name, str) or ":" in name:
        raise ConfigError(f"'model' in {path} must be a registered model name (`visattn models`), got {shorten(name)}; "
                          "a downloaded config never names code to import")
    if not isinstance(kwargs, dict):
        raise ConfigError(f"'model_kwargs' in {path} must be an object, got {shorten(kwargs)}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or not 0 < num_classes <= MAX_CLASSES:
        raise ConfigError(f"'num_classes' in {path} must be an integer in [1, {MAX_CLASSES}], "
                          f"got {shorten(num_classes)}")
    if config.get("task", "segmentation") not in _TASKS:
        raise ConfigError(f"'task' in {path} must be one of {', '.join(_TASKS)}, got {shorten(config['task'])}")
    classes = config.get("classes")
    if classes is not None and (not isinstance(classes, list) or len(classes) != num_classes
                                or not all(isinstance(c, str) for c in classes)):
        raise ConfigError(f"'classes' in {path} must be {num_classes} names, got {shorten(classes)}")
    if not isinstance(config.get("config", {}), dict):
        raise ConfigError(f"'config' in {path} must be an object")
    return config


def _same_shapes(model: nn.Module, name: str, kwargs: dict, num_classes: int) -> bool:
    """Whether ``create_model(name, num_classes, **kwargs)`` has ``model``'s state-dict keys and
    shapes (built on the meta device: no memory, no weights read)."""
    try:
        with torch.device("meta"):
            fresh = create_model(name, num_classes=num_classes, pretrained=False, **kwargs)
    except (RuntimeError, NotImplementedError):  # an operation the meta device lacks: cannot tell
        return True
    shapes = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    return shapes == {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _model_config(model: nn.Module, model_name: str | None, model_kwargs: dict | None, num_classes: int | None,
                  classes: Sequence[str] | None, palette: Sequence[Sequence[int]] | None) -> dict[str, Any]:
    known = dict(getattr(model, "hub_config", None) or {})
    if model_name not in (None, known.get("model")):
        known = {}
    config = {**known, **{k: v for k, v in {"model": model_name, "model_kwargs": model_kwargs,
                                            "num_classes": num_classes, "classes": classes, "palette": palette}.items()
                          if v is not None}}
    if "model" not in config or "num_classes" not in config:
        raise ValueError("save_pretrained needs model_name= and num_classes= (and model_kwargs=) for a model "
                         "not loaded by from_pretrained: the registered name and arguments that rebuild it")
    config["model_kwargs"] = without_starting_weights(config.get("model_kwargs") or {})
    config.setdefault("task", "segmentation" if isinstance(model, Segmentor) else "classification")
    if ":" in config["model"]:
        raise ValueError(f"model {config['model']!r} is not a registered name: the Hub layout rebuilds models "
                         "from registered names only")
    if config.get("classes") is not None and len(config["classes"]) != config["num_classes"]:
        raise ValueError(f"{len(config['classes'])} classes given for num_classes={config['num_classes']}")
    if not _same_shapes(model, config["model"], config["model_kwargs"], config["num_classes"]):
        raise ValueError(f"the model's weights do not fit create_model({config['model']!r}, "
                         f"num_classes={config['num_classes']}, **{config['model_kwargs']!r}): "
                         "give the model_name, model_kwargs and num_classes it was built with")
    return config


def run_hub_config(run_dir: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """``config.json`` of a training run and the weights it offers for inference."""
    run = RunDir(run_dir)
    cfg = run.load_config()
    if ":" in cfg.model.name:
        raise ValueError(f"run {run} builds {cfg.model.name!r}, not a registered model: the Hub layout rebuilds "
                         "models from registered names only")
    classes, palette = classes_and_palette(cfg.data)
    recipe = {k: v for k, v in cfg.to_dict().items() if k != "run"}
    config = {"model": cfg.model.name, "model_kwargs": without_starting_weights(cfg.model.kwargs), "num_classes": len(classes),
              "task": cfg.task, "classes": list(classes), "palette": [list(c) for c in palette], "config": recipe}
    return config, run.inference_weights()


def save_pretrained(model_or_run: nn.Module | str | os.PathLike, directory: str | os.PathLike, *,
                    model_name: str | None = None, model_kwargs: dict | None = None, num_classes: int | None = None,
                    classes: Sequence[str] | None = None,
                    palette: Sequence[Sequence[int]] | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` and return it.

    ``model_or_run``: a training run directory (its config and best weights; classes, palette and
    recipe come along), or a model. A model needs the registered ``model_name``, ``model_kwargs``
    and ``num_classes`` that rebuild it with :func:`visattn.create_model` (checked against its
    weights), unless :func:`visattn.from_pretrained` loaded it; ``classes`` and ``palette`` are optional.
    """
    if isinstance(model_or_run, nn.Module):
        config = _model_config(model_or_run, model_name, model_kwargs, num_classes, classes, palette)
        state = model_or_run.state_dict()
    else:
        config, weights = run_hub_config(model_or_run)
        state = read_state_dict(weights)
    directory = Path(directory)
    save_state_dict(state, directory / WEIGHTS_NAME)
    text = json.dumps(config, indent=1) + "\n"
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return directory


def push_to_hub(model_or_run: nn.Module | str | os.PathLike, repo_id: str, *, private: bool | None = None,
                token: str | None = None, revision: str | None = None,
                commit_message: str = "Upload visattn model", **save_kwargs) -> str:
    """:func:`save_pretrained` into a temporary directory, then upload it to the Hub repository
    ``repo_id`` (``user/repo``, created if missing); returns the commit's URL. ``save_kwargs`` go to
    :func:`save_pretrained`. Everything local (the id's form, the run or model, its weights) is
    checked before anything is sent."""
    repo_id = repo_id.removeprefix(HUB_PREFIX)
    huggingface_hub.utils.validate_repo_id(repo_id)
    with tempfile.TemporaryDirectory() as tmp:
        # everything local first: a mistyped run leaves no empty repository behind
        save_pretrained(model_or_run, tmp, **save_kwargs)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision, commit_message=commit_message)
    return str(getattr(commit, "commit_url", commit))
