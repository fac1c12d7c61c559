"""Reading, writing and importing weights without unpickling code.

``load_official`` imports the authors' released checkpoints, with their key names, into visattn
modules and networks. A module or network whose parameter names differ from the official layout
defines ``convert_official_state_dict(state_dict)`` returning the state dict in its own naming;
everything else loads as it is.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["load_official", "read_state_dict", "save_state_dict", "atomic_write"]

_WRAPPER_KEYS = ("state_dict", "model", "model_state", "net")


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_state_dict(state_dict: Mapping[str, Tensor], path: str | os.PathLike) -> Path:
    """Write tensors atomically: safetensors for ``.safetensors``, else ``torch.save``."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        return atomic_write(path, lambda tmp: save_file(tensors, tmp))
    return atomic_write(path, lambda tmp: torch.save(tensors, tmp))


def read_state_dict(source: Mapping[str, Tensor] | str | os.PathLike) -> dict[str, Tensor]:
    """A state dict from a mapping, a ``.safetensors`` file or a ``torch.save`` file.

    Files saved by ``torch.save`` are read with ``weights_only=True`` (no code is unpickled).
    Training checkpoints that wrap the weights (``{"state_dict": ...}``, ``{"model": ...}``) are
    unwrapped; a leading ``module.`` (DataParallel/DDP) is stripped from every key.
    """
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # corrupt, truncated, or pickles code
            raise ValueError(f"cannot read checkpoint {path}: {err}") from err
    for key in _WRAPPER_KEYS:
        if key in state and isinstance(state[key], Mapping):
            state = dict(state[key])
            break
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"checkpoint entries are not tensors: {', '.join(map(str, bad[:10]))}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_official(obj: nn.Module, state_dict_or_path: Mapping[str, Tensor] | str | os.PathLike) -> nn.Module:
    """Import an authors' released checkpoint into ``obj`` (strict) and return ``obj``.

    Accepts a state dict or a path (safetensors, or a ``torch.save`` file read with
    ``weights_only=True``). Raises ``ValueError`` listing missing and unexpected keys, or keys
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
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = [f"cannot load official weights into {type(obj).__name__}:"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:20])}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched[:20])}")
        raise ValueError("\n  ".join(parts))
    obj.load_state_dict(state, strict=True)
    return obj
