"""Reading, writing and importing weights without unpickling code.

``load_official`` imports the authors' released checkpoints, with their key names, into visattn
modules and networks. A module or network whose parameter names differ from the official layout
defines ``convert_official_state_dict(state_dict)`` returning the state dict in its own naming;
everything else loads as it is. ``load_weights`` loads visattn's own (trained) weights.

A file that cannot be read, holds no state dict, or does not fit the model raises
:class:`WeightsError`, a one-line message naming the file. A download that fails (offline, a
host that cannot be resolved, a missing file) raises :class:`DownloadError`, a one-line message
naming what was fetched, from where, the local file it would be read from, and ``HF_HUB_OFFLINE=1``
(:func:`fetch`); a host that cannot be resolved is not tried (no retries, no waiting).
"""
from __future__ import annotations

import os
import pickle
import re
import socket
import tempfile
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import huggingface_hub

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

__all__ = ["WeightsError", "DownloadError", "HUB_PREFIX", "fetch", "host_resolves", "hub_cache_file", "load_official",
           "load_weights", "read_state_dict", "save_state_dict", "atomic_write"]

# A Hugging Face Hub repository named where a path could stand: "hf-hub:<repo id>[@revision]" (timm's spelling)
HUB_PREFIX = "hf-hub:"

_WRAPPER_KEYS = ("state_dict", "model", "model_state", "net")


class WeightsError(ValueError):
    """A weights file that cannot be read, holds no state dict, or does not fit the model."""


class DownloadError(WeightsError, FileNotFoundError):
    """Weights that could not be downloaded (also a ``FileNotFoundError``: the file is not here)."""


_T = TypeVar("_T")


def host_resolves(url: str) -> bool:
    """Whether the host of ``url`` has an address (one DNS lookup, answered at once offline): a
    download from a host that does not would only be retried until it times out."""
    host = urllib.parse.urlsplit(url).hostname
    if host is None:
        return True
    try:
        socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return True


def _is_download_failure(err: Exception) -> bool:
    """Whether ``err`` is a failed download (no connection, not found, offline) rather than a bug:
    ``OSError`` (``URLError``, ``huggingface_hub``'s ``LocalEntryNotFoundError`` and
    ``OfflineModeIsEnabled``), ``huggingface_hub``'s HTTP errors, or an HTTP client's own."""
    return isinstance(err, (OSError, huggingface_hub.errors.HfHubHTTPError)) or \
        type(err).__module__.split(".")[0] in ("httpx", "httpcore", "requests", "urllib3")


def fetch(download: Callable[[], _T], *, source: str, cache_file: str | os.PathLike, what: str | None = None,
          check_host: str | None = None) -> _T:
    """``download()``, which fetches ``source`` (a URL or Hub id) into the local ``cache_file`` unless
    it is there already; a failed download is a :class:`DownloadError` naming ``what`` it is for,
    ``source``, ``cache_file`` (where to place the file by hand) and ``HF_HUB_OFFLINE=1``.

    ``check_host``: a URL whose host ``download`` would retry: when the file is not cached, Hub
    downloads are not offline (``HF_HUB_OFFLINE``) and the host cannot be resolved, nothing is tried.
    """
    if check_host is not None and not Path(cache_file).is_file() and not huggingface_hub.constants.is_offline_mode() \
            and not host_resolves(check_host):
        host = urllib.parse.urlsplit(check_host).hostname
        raise _download_error(what, source, cache_file, f"cannot resolve the host {host}")
    try:
        return download()
    except Exception as err:
        if not _is_download_failure(err):
            raise
        raise _download_error(what, source, cache_file, _one_line(err) or type(err).__name__) from None


def _download_error(what: str | None, source: str, cache_file: str | os.PathLike, reason: str) -> DownloadError:
    prefix = f"{what}: " if what else ""
    return DownloadError(f"{prefix}cannot fetch {source}: {reason}. Offline, place the file at {os.fspath(cache_file)} "
                         "and set HF_HUB_OFFLINE=1 (local files only, no retries)")


def hub_cache_file(repo_id: str, filename: str, revision: str | None = None) -> Path:
    """Where ``hf_hub_download`` keeps ``filename`` of the Hub model ``repo_id``: the cached file if
    there is one, else its place in the cache's layout (``<revision>`` standing for the commit)."""
    cached = huggingface_hub.try_to_load_from_cache(repo_id, filename, revision=revision)
    if isinstance(cached, str):
        return Path(cached)
    folder = huggingface_hub.file_download.repo_folder_name(repo_id=repo_id, repo_type="model")
    return Path(huggingface_hub.constants.HF_HUB_CACHE, folder, "snapshots", "<revision>", filename)


def _umask() -> int:
    mask = os.umask(0o022)  # os.umask only sets: read the old value, then put it back
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file.
    The file gets the mode ``open()`` would give it (``0o666`` less the umask). A writer failing with
    ``RuntimeError`` or ``SafetensorError`` (torch's and safetensors' for a full disk) raises
    ``OSError`` naming ``path``; nothing is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            write(tmp)
        except (RuntimeError, SafetensorError) as err:  # a full disk: "PytorchStreamWriter failed writing file ..."
            raise OSError(f"cannot write {path}: {_one_line(err)}") from err
        # after the write: mkstemp makes 0600, and writers that replace the file (safetensors) make it anew
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_state_dict(state_dict: Mapping[str, Tensor], path: str | os.PathLike,
                    metadata: Mapping[str, str] | None = None) -> Path:
    """Write tensors atomically: safetensors for ``.safetensors`` (with ``metadata`` in its header),
    else ``torch.save``."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    if str(path).endswith(".safetensors"):
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=dict(metadata or {}) or None))
    if metadata:
        raise ValueError(f"metadata is kept in .safetensors files only, not in {path}")
    return atomic_write(path, lambda tmp: torch.save(tensors, tmp))


def read_state_dict(source: Mapping[str, Tensor] | str | os.PathLike) -> dict[str, Tensor]:
    """A state dict from a mapping, a ``.safetensors`` file or a ``torch.save`` file.

    Files saved by ``torch.save`` are read with ``weights_only=True`` (no code is unpickled).
    Training checkpoints that wrap the weights (``{"state_dict": ...}``, ``{"model": ...}``) are
    unwrapped; a leading ``module.`` (DataParallel/DDP) is stripped from every key. Anything but a
    mapping of names to tensors raises :class:`WeightsError`.
    """
    origin = "state dict"
    if isinstance(source, Mapping):
        state: Any = dict(source)
    else:
        path = Path(source)
        origin = f"checkpoint {path}"
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        try:
            if path.suffix == ".safetensors":
                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:  # torch's message advises weights_only=False: never pass that on
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
            what = f" ({found[1]})" if found else ""
            raise WeightsError(f"{origin} holds objects other than tensors and plain data{what}; not loaded, since "
                               "unpickling them could run code: save the weights as safetensors") from None
        except Exception as err:  # corrupt, truncated
            raise WeightsError(f"cannot read {origin}: {_one_line(err)}") from err
    if not isinstance(state, Mapping):
        raise WeightsError(f"{origin} holds a {type(state).__name__}, not a mapping of parameter names to tensors")
    for key in _WRAPPER_KEYS:
        if key in state and isinstance(state[key], Mapping):
            state = dict(state[key])
            break
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise WeightsError(f"{origin}: entries are not tensors: {', '.join(map(str, bad[:10]))}")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _check_fit(obj: nn.Module, state: dict[str, Tensor], what: str) -> None:
    """Raise :class:`WeightsError` listing the missing and unexpected keys of ``state`` for ``obj``,
    and the keys whose shapes differ; ``what`` names the weights in the message."""
    own = obj.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:20])}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched[:20])}")
        raise WeightsError(f"cannot load {what} into {type(obj).__name__}: {' | '.join(parts)}")


def _describe(source: Mapping[str, Tensor] | str | os.PathLike, default: str) -> str:
    return default if isinstance(source, Mapping) else f"{default} {source}"


def load_weights(obj: nn.Module, state_dict_or_path: Mapping[str, Tensor] | str | os.PathLike) -> nn.Module:
    """Load visattn weights (a training run's, :func:`save_state_dict`'s) into ``obj`` (strict) and
    return ``obj``; a state dict that does not fit raises :class:`WeightsError` naming the file and
    listing missing and unexpected keys and shape mismatches."""
    state = read_state_dict(state_dict_or_path)
    _check_fit(obj, state, _describe(state_dict_or_path, "weights"))
    obj.load_state_dict(state, strict=True)
    return obj


def load_official(obj: nn.Module, state_dict_or_path: Mapping[str, Tensor] | str | os.PathLike) -> nn.Module:
    """Import an authors' released checkpoint into ``obj`` (strict) and return ``obj``.

    Accepts a state dict or a path (safetensors, or a ``torch.save`` file read with
    ``weights_only=True``). Raises :class:`WeightsError` listing missing and unexpected keys, or keys
    whose shapes differ, so a checkpoint for another model or configuration never loads silently.
    """
    state = read_state_dict(state_dict_or_path)
    convert = getattr(obj, "convert_official_state_dict", None)
    if convert is not None:
        state = convert(state)
    own = obj.state_dict()
    for key in own:  # checkpoints older than PyTorch 0.4 have no BatchNorm step counter
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = own[key]
    _check_fit(obj, state, _describe(state_dict_or_path, "official weights"))
    obj.load_state_dict(state, strict=True)
    return obj
