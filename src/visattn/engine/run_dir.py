"""A training run's directory: its layout, its checkpoints, and the weights it offers for inference
(:func:`visattn.trained.load_trained` builds the trained model from them).

Layout::

    config.yaml            the resolved configuration (re-read by --resume, eval and predict)
    metrics.jsonl          one JSON object per line, per log step and per evaluation
    tb/                    TensorBoard events
    checkpoints/           step_XXXXXXX.safetensors (weights) + step_XXXXXXX.state.pt (optimizer,
                           scheduler, step, RNG states, with train.ema the weight average; torch.save,
                           loadable with weights_only=True) and ``latest`` naming the newest complete pair
    best.safetensors       weights with the best validation mIoU (top-1 for classification); its header
                           holds that evaluation's record (:meth:`RunDir.best_record`)
    best.json              a copy of the record, written after the weights, with their SHA-256: a kill
                           between the two writes leaves a best.json naming other weights, never
                           weights without their record
    model.safetensors      the final weights
    final.json             their evaluation, the step, the seconds and threads it trained with: written
                           last, so the run is complete exactly when it is there
    class_weights.json     computed train.class_weights: the method, the weights, the pixel counts
    lock                   "PID HOST" of the process training in it, while it trains

Every file is written atomically (:func:`visattn.weights.atomic_write`): a reader, or a run killed
while writing, never leaves a half-written file behind. metrics.jsonl, which grows, is appended to
by whole lines, each flushed to the disk before the run goes on: what a crash (a full disk) can
leave is a torn last line, which :func:`read_metrics_file` drops with a warning, while any other
line that is not a JSON object with an integer ``step`` is an error naming the file and the line.
Nothing is written through a symbolic link in the directory: files are replaced, metrics.jsonl is
not opened through one, and a linked checkpoints/ or tb/ is refused when a run takes the directory.
:meth:`RunDir.clear` removes these files and nothing else. One process at a time trains in a run
directory (:meth:`RunDir.lock`), and a new run only starts in an empty one
(:meth:`RunDir.ensure_empty`). Nothing read from a run directory runs code: checkpoints are
safetensors and ``weights_only`` pickles, and a config naming code to import
(``model.name: "module:builder"``) builds only with ``trust_code=True``.

With ``train.ema`` the evaluated weights, and so best.safetensors and model.safetensors, are the
weight average (:mod:`visattn.engine.ema`); the checkpoints' .safetensors keep the trained weights.
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import pickle
import socket
import warnings
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn

from ..bounded import MAX_LOG_BYTES, read_text, shorten
from ..weights import atomic_write, read_state_dict, save_state_dict
from .config import Config, dump_config, load_config

__all__ = ["RunDir", "read_metrics_file"]

_STATE_KEYS = ("step", "optimizer", "scheduler", "scaler", "best", "rng")
_BEST_RECORD_KEY = "visattn.best"  # best.safetensors' header entry holding the record (JSON)
# the files inside the run's folders, by RunDir attribute: TensorBoard's events; the checkpoint pairs and their pointer
_FOLDER_FILES = {"tensorboard": ("events.out.tfevents.*",),
                 "checkpoints": ("step_*.safetensors", "step_*.state.pt", "latest")}
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
        one left by a dead process of this host (killed, crashed) is taken over. A run's folder
        (checkpoints/, tb/) that is a symbolic link raises ``FileExistsError``: writing through it
        would write outside the directory."""
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        for folder in (self.checkpoints, self.tensorboard):
            if folder.is_symlink():
                raise FileExistsError(f"{folder} is a symbolic link (to {os.readlink(folder)}); a run writes only "
                                      f"inside {self.path}: remove the link")
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

    def in_use(self) -> bool:
        """Whether a process holds the directory's lock now (a run training in it)."""
        holder = self._lock_owner()
        return holder is not None and not self._is_stale(holder)

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

    def check_clearable(self, also: Iterable[str] = ()) -> list[Path]:
        """The files :meth:`clear` would delete; ``FileExistsError`` naming the directory when it is a
        symbolic link or holds anything but files of the run layout (and the top-level names ``also``)."""
        if self.path.is_symlink():
            raise FileExistsError(f"run directory {self.path} is a symbolic link (to {os.readlink(self.path)}); "
                                  "visattn removes only what it wrote: remove the link or choose another directory")
        if not self.path.is_dir():
            return []
        ours, foreign = self._layout_files(set(also))
        if foreign:
            listed = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise FileExistsError(f"run directory {self.path} holds files that are not a run's ({listed}); "
                                  "visattn removes only what it wrote: move them or choose another directory")
        return ours

    def clear(self, also: Iterable[str] = ()) -> None:
        """Delete the files of the run layout (and the top-level names ``also``), holding the lock,
        once :meth:`check_clearable` found nothing else there (else nothing is deleted)."""
        self.check_clearable(also)  # before the lock, which creates a missing directory
        if not self.path.is_dir():
            return
        with self.lock():
            for path in self.check_clearable(also):
                path.unlink()
            for folder in _FOLDER_FILES:
                with contextlib.suppress(FileNotFoundError):
                    getattr(self, folder).rmdir()

    def _layout_files(self, also: set[str]) -> tuple[list[Path], list[str]]:
        """The files of the run layout in the directory (and its temporary files, which a killed write
        leaves: ``.<name>.<random>.tmp``), and the names of anything else, relative to it."""
        top = {p.name for p in (self.config, self.metrics, self.best_weights, self.best_metrics, self.final_weights,
                                self.class_weights)} | also
        folders = {getattr(self, attribute).name: patterns for attribute, patterns in _FOLDER_FILES.items()}
        ours, foreign = [], []
        for item in sorted(self.path.iterdir()):
            if item == self.lock_file:
                continue
            if item.name in folders and item.is_dir() and not item.is_symlink():
                for inner in sorted(item.iterdir()):
                    if _is_file_named(inner, folders[item.name]):
                        ours.append(inner)
                    else:
                        foreign.append(f"{item.name}/{inner.name}")
            elif _is_file_named(item, top):
                ours.append(item)
            else:
                foreign.append(item.name)
        return ours, foreign

    # -- configuration, metrics and weights

    def write_config(self, cfg: Config) -> None:
        atomic_write(self.config, lambda tmp: Path(tmp).write_text(dump_config(cfg)))

    def load_config(self, overrides: Iterable[str] = ()) -> Config:
        if not self.path.is_dir():
            raise FileNotFoundError(f"not a run directory: {self.path} does not exist")
        if not self.config.is_file():
            raise FileNotFoundError(f"not a run directory (no {self.config.name}): {self.path}")
        return load_config(self.config, overrides)

    def read_metrics(self) -> list[dict]:
        """The records of metrics.jsonl (:func:`read_metrics_file`), none when it is missing."""
        return read_metrics_file(self.metrics) if self.metrics.is_file() else []

    def rewrite_metrics(self, records: Iterable[dict]) -> None:
        """Replace metrics.jsonl by ``records``, atomically."""
        text = "".join(json.dumps(record) + "\n" for record in records)
        atomic_write(self.metrics, lambda tmp: Path(tmp).write_text(text))

    def append_metrics(self, record: dict) -> None:
        """Add ``record`` to metrics.jsonl as one line, on the disk when this returns (a symbolic link
        there is not followed: ``OSError``)."""
        fd = os.open(self.metrics, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        with open(fd, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def save_best(self, model: nn.Module, record: dict) -> None:
        """``model``'s weights and the evaluation ``record`` (metrics and step) that made them the best:
        the record in the weights file's header (one write), then its copy in best.json."""
        text = json.dumps(record, indent=1)
        save_state_dict(model.state_dict(), self.best_weights, metadata={_BEST_RECORD_KEY: text})
        digest = hashlib.sha256(self.best_weights.read_bytes()).hexdigest()
        copy = {**record, "weights": self.best_weights.name, "weights_sha256": digest}
        atomic_write(self.best_metrics, lambda tmp: Path(tmp).write_text(json.dumps(copy, indent=1)))

    def best_record(self) -> dict | None:
        """The evaluation record of best.safetensors, read from its header; ``None`` without one."""
        if not self.best_weights.is_file():
            return None
        with safe_open(self.best_weights, "pt") as f:
            text = (f.metadata() or {}).get(_BEST_RECORD_KEY)
        return None if text is None else json.loads(text)

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


def read_metrics_file(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl (at most :data:`~visattn.bounded.MAX_LOG_BYTES`): a JSON
    object with an integer ``step`` per line (blank lines skipped). A last line cut short (no
    newline after it, not JSON), as a crash while appending leaves it, is dropped with a warning;
    any other line that is not such a record is a ``ValueError`` naming the file and the line."""
    path = Path(path)
    text = read_text(path, MAX_LOG_BYTES)
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as err:
            if number == len(lines) and not text.endswith("\n"):
                warnings.warn(f"{path}: dropped its last line ({number}), cut short by an interrupted write",
                              stacklevel=2)
                break
            raise ValueError(f"{path}, line {number}: not a JSON record ({err})") from None
        step = record.get("step") if isinstance(record, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            raise ValueError(f"{path}, line {number}: not a metrics record (a JSON object with an integer step), "
                             f"got {shorten(line)}")
        records.append(record)
    return records


def _is_file_named(path: Path, patterns: Iterable[str]) -> bool:
    """``path`` is a regular file (not a link) named by one of the ``patterns``, or the temporary file
    :func:`~visattn.weights.atomic_write` makes for one."""
    if path.is_symlink() or not path.is_file():
        return False
    name = path.name
    if name.startswith(".") and name.endswith(".tmp"):
        name = name[1:].rsplit(".", 2)[0]
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


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
