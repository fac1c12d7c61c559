"""A training run's directory: its layout, its checkpoints, and the weights it offers for inference
(:func:`visattn.trained.load_trained` builds the trained model from them).

Layout::

    config.yaml            the resolved configuration (re-read by --resume, eval and predict)
    metrics.jsonl          one JSON line per log step and per evaluation
    tb/                    TensorBoard events
    checkpoints/           step_XXXXXXX.safetensors (weights) + step_XXXXXXX.state.pt (optimizer,
                           scheduler, step, RNG states, with train.ema the weight average; torch.save,
                           loadable with weights_only=True) and ``latest`` naming the newest complete pair
    best.safetensors       weights with the best validation mIoU (top-1 for classification)
    best.json              that evaluation's metrics and step
    model.safetensors      the final weights
    final.json             their evaluation, the step, the seconds and threads it trained with: written
                           last, so the run is complete exactly when it is there
    class_weights.json     computed train.class_weights: the method, the weights, the pixel counts
    lock                   "PID HOST" of the process training in it, while it trains

Every file is written atomically (:func:`visattn.weights.atomic_write`): a reader, or a run killed
while writing, never leaves a half-written file behind. One process at a time trains in a run
directory (:meth:`RunDir.lock`), and a new run only starts in an empty one
(:meth:`RunDir.ensure_empty`). Nothing read from a run directory runs code: checkpoints are
safetensors and ``weights_only`` pickles, and a config naming code to import
(``model.name: "module:builder"``) builds only with ``trust_code=True``.

With ``train.ema`` the evaluated weights, and so best.safetensors and model.safetensors, are the
weight average (:mod:`visattn.engine.ema`); the checkpoints' .safetensors keep the trained weights.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import socket
import warnings
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path

import torch
from torch import Tensor, nn

from ..weights import atomic_write, read_state_dict, save_state_dict
from .config import Config, dump_config, load_config

__all__ = ["RunDir"]

_STATE_KEYS = ("step", "optimizer", "scheduler", "scaler", "best", "rng")
# Run directories this process holds the lock of: a lock file naming this PID is stale unless listed
# (a restarted container reuses PIDs).
_HELD: set[Path] = set()


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
    final_metrics = property(lambda self: self.path / "final.json")
    class_weights = property(lambda self: self.path / "class_weights.json")
    lock_file = property(lambda self: self.path / "lock")

    # -- one process at a time, new runs in empty directories

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory's ``lock`` file (``PID HOST``, created exclusively) while the block runs;
        on exit, exceptions included, remove it, and the directory too if this call created it and it
        is still empty. A lock whose process is alive, or on another host, raises ``FileExistsError``;
        one left by a dead process of this host (killed, crashed) is taken over."""
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        owner = f"{os.getpid()} {socket.gethostname()}"
        try:
            self._take_lock(owner)
            _HELD.add(self.path.resolve())
            try:
                yield
            finally:
                _HELD.discard(self.path.resolve())
                if self._lock_owner() == owner:
                    self.lock_file.unlink()
        finally:
            if created:
                with contextlib.suppress(OSError):  # not empty: the run wrote something
                    self.path.rmdir()

    def _take_lock(self, owner: str) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._lock_owner()
                if not self._is_stale(holder):
                    pid, _, host = (holder or "? ?").partition(" ")
                    raise FileExistsError(
                        f"run directory {self.path} is in use by process {pid} on {host} (its {self.lock_file.name} "
                        f"file); if no such process is training in it, delete {self.lock_file}") from None
                with contextlib.suppress(FileNotFoundError):
                    self.lock_file.unlink()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(owner)
            if self._lock_owner() == owner:
                return
        raise FileExistsError(f"run directory {self.path}: another process took its lock ({self.lock_file})")

    def _lock_owner(self) -> str | None:
        try:
            return self.lock_file.read_text().strip()
        except FileNotFoundError:
            return None

    def _is_stale(self, holder: str | None) -> bool:
        """A lock naming a process of this host that is gone (or this process, not holding it)."""
        pid, _, host = (holder or "").partition(" ")
        if not pid.isdigit() or host != socket.gethostname() or os.name == "nt":
            return False  # being written, another host's, or Windows (where os.kill terminates): cannot tell
        if int(pid) == os.getpid():
            return self.path.resolve() not in _HELD
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False

    def ensure_empty(self) -> None:
        """Raise ``FileExistsError`` unless the directory is missing or holds nothing but the lock:
        a new run never writes over another run, or over files of anything else."""
        if not self.path.is_dir():
            return
        found = sorted(p.name for p in self.path.iterdir() if p != self.lock_file)
        if self.latest_checkpoint() is not None:
            raise FileExistsError(f"run directory {self.path} already holds checkpoints; continue it with "
                                  f"`visattn train --resume {self.path}` or choose another run.dir")
        if found:
            listed = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
            raise FileExistsError(f"run directory {self.path} is not empty ({listed}); a new run starts in a new "
                                  "or empty directory: choose another run.dir")

    # -- configuration, metrics and weights

    def write_config(self, cfg: Config) -> None:
        atomic_write(self.config, lambda tmp: Path(tmp).write_text(dump_config(cfg)))

    def load_config(self, overrides: Iterable[str] = ()) -> Config:
        if not self.path.is_dir():
            raise FileNotFoundError(f"not a run directory: {self.path} does not exist")
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

    def save_final_metrics(self, record: dict) -> None:
        """The final evaluation ``record`` (metrics, classes, step, seconds, threads): the run is complete."""
        atomic_write(self.final_metrics, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))

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
        older = [n for n in self._checkpoint_names() if n != name]
        for old in older[: max(0, len(older) - (keep - 1))]:
            self._checkpoint(old, ".safetensors").unlink(missing_ok=True)
            self._checkpoint(old, ".state.pt").unlink(missing_ok=True)
        return name

    def load_checkpoint(self) -> tuple[str, dict[str, Tensor], dict]:
        """Name, weights and training state of the newest checkpoint whose two files both read
        (without unpickling code) and hold a training state. Newer ones that do not (truncated,
        corrupt, foreign) are skipped with a warning naming them and why; with none readable,
        ``ValueError`` names every file tried."""
        names = self._checkpoint_names()
        if not names:
            raise FileNotFoundError(f"no checkpoint to resume in {self.checkpoints}")
        skipped = []
        for name in reversed(names):
            try:
                weights = read_state_dict(self._checkpoint(name, ".safetensors"))
                state = _read_training_state(self._checkpoint(name, ".state.pt"))
            except (FileNotFoundError, ValueError) as err:
                skipped.append(str(err))
                continue
            if skipped:
                warnings.warn(f"resuming from {name}, the newest readable checkpoint in {self.checkpoints}; "
                              f"skipped: {'; '.join(skipped)}", stacklevel=2)
            return name, weights, state
        raise ValueError(f"no readable checkpoint in {self.checkpoints}: {'; '.join(skipped)}")

    def _checkpoint_names(self) -> list[str]:
        """``step_XXXXXXX`` of every checkpoint with at least one of its files, oldest first."""
        names = {p.name.split(".")[0] for p in self.checkpoints.glob("step_*.*")
                 if p.name.endswith((".safetensors", ".state.pt"))}
        return sorted(names, key=lambda name: int(name.removeprefix("step_")))


def _read_training_state(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{path} holds objects other than tensors and plain data; not loaded, "
                         "since unpickling them could run code") from None
    except Exception as err:  # truncated or corrupt
        raise ValueError(f"cannot read {path}: {str(err).split('. ')[0]}") from None
    missing = [k for k in _STATE_KEYS if k not in state] if isinstance(state, dict) else list(_STATE_KEYS)
    if missing:
        raise ValueError(f"{path} is not a training state (no {', '.join(missing)})")
    return state
