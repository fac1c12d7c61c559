"""The training runs of a comparison: one at a time in this process, or several at once in worker
subprocesses (``python -m visattn.comparison train``), each stopping at a step boundary with a
resumable checkpoint on Ctrl-C, on SIGTERM, or when the comparison's process dies."""
from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..engine.config import Config, dump_config
from ..engine.run_dir import RunDir
from ..engine.trainer import train
from .entries import Entry, config_from_text
from .output import FINAL_METRICS, read_final

__all__ = ["RunFailedError", "train_run", "Job", "Progress", "train_sequentially", "train_in_parallel", "worker_main",
           "print_progress"]

print_progress = functools.partial(print, flush=True)  # where a comparison's progress lines go by default


class RunFailedError(RuntimeError):
    """A training run of the comparison failed; the message names it and its log."""


def train_run(cfg: Config, path: str | os.PathLike) -> dict | None:
    """Train ``cfg`` in the run directory ``path``: resumed from its latest checkpoint if it has one,
    else started anew (what a run killed before its first checkpoint left is removed). Returns the
    record the trainer wrote as :data:`~visattn.comparison.output.FINAL_METRICS` (final metrics, step,
    seconds, threads); ``None`` if the run was interrupted (it can be resumed)."""
    run = RunDir(path)
    resume = run.latest_checkpoint() is not None
    if not resume:
        run.clear(also=(FINAL_METRICS,))  # what a run killed before its first checkpoint left
    result = train(cfg, resume=run.path if resume else None, quiet=True)
    return None if result["interrupted"] else read_final(run)


@dataclass
class Job:
    entry: Entry
    seed: int
    cfg: Config
    run: RunDir
    log: Path

    @property
    def label(self) -> str:
        return f"{self.entry.name} seed {self.seed}"


class Progress:
    def __init__(self, total: int, log: Callable[[str], None]) -> None:
        self.total, self.done, self.log = total, 0, log

    def finished(self, job: Job, record: dict, how: str) -> None:
        self.done += 1
        self.log(f"[{self.done}/{self.total}] {job.label}: mIoU {100 * record['metrics']['mIoU']:.2f} {how}")


def train_sequentially(jobs: Sequence[Job], progress: Progress) -> dict[tuple[str, int], dict]:
    records = {}
    for job in jobs:
        progress.log(f"start {job.label}")
        start = time.perf_counter()
        try:
            record = train_run(job.cfg, job.run.path)
        except Exception:
            progress.log(f"{job.label} stopped by an error (run directory {job.run})")
            raise
        if record is None:
            raise KeyboardInterrupt
        records[job.entry.name, job.seed] = record
        progress.finished(job, record, f"in {time.perf_counter() - start:.0f} s")
    return records


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def train_in_parallel(jobs: Sequence[Job], workers: int, gpus: int, progress: Progress) -> dict[tuple[str, int], dict]:
    """``workers`` runs at a time, each in a subprocess (:func:`worker_main`) with ``cores // workers``
    torch threads and, with ``gpus > 1``, its own GPU (``CUDA_VISIBLE_DEVICES``, round-robin over slots).

    The workers run in sessions of their own, so a Ctrl-C reaches them through this process alone:
    it starts no more runs and passes each Ctrl-C on (:func:`_stop_workers`)."""
    threads = max(1, cpu_count() // workers)
    queue, running, records, failed = list(jobs), {}, {}, []
    try:
        while running or (queue and not failed):
            for slot in range(workers):
                if slot not in running and queue and not failed:
                    job = queue.pop(0)
                    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
                    where = f"{threads} threads"
                    if gpus > 1:
                        env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
                        where = f"GPU {slot % gpus}, {where}"
                    job.log.parent.mkdir(parents=True, exist_ok=True)
                    with job.log.open("w") as out:
                        proc = subprocess.Popen([sys.executable, "-m", "visattn.comparison", "train", str(job.run.path),
                                                 str(threads)], stdin=subprocess.PIPE, stdout=out,
                                                stderr=subprocess.STDOUT, env=env, text=True, start_new_session=True)
                    with contextlib.suppress(BrokenPipeError):  # a worker that died at once: its log tells why
                        proc.stdin.write(dump_config(job.cfg))
                        proc.stdin.close()
                    running[slot] = (proc, job, time.perf_counter())
                    progress.log(f"start {job.label} ({where})")
            time.sleep(0.2)
            for slot, (proc, job, start) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[slot]
                if proc.returncode == 0 and (record := read_final(job.run)) is not None:
                    records[job.entry.name, job.seed] = record
                    progress.finished(job, record, f"in {time.perf_counter() - start:.0f} s")
                elif proc.returncode == 130:
                    raise KeyboardInterrupt
                else:
                    tail = job.log.read_text().strip().splitlines()[-1:] or ["no output"]
                    failed.append(f"{job.label} (exit {proc.returncode}: {tail[0]}; log {job.log})")
                    progress.log(f"{job.label} failed; its log: {job.log}")
    except KeyboardInterrupt:
        _stop_workers([proc for proc, _, _ in running.values()])
        raise
    if failed:
        raise RunFailedError(f"{len(failed)} run(s) failed: {'; '.join(failed)}")
    return records


def _stop_workers(procs: Sequence[subprocess.Popen]) -> None:
    """Pass a Ctrl-C on to the running workers, each of which stops at its next safe point with a
    resumable run, and wait for them; a further Ctrl-C meanwhile is passed on too (they stop at once)."""
    for proc in procs:
        proc.send_signal(signal.SIGINT)
    while True:
        try:
            for proc in procs:
                proc.wait()
            return
        except KeyboardInterrupt:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)


def _stop_with_parent() -> None:
    """SIGTERM this process when its parent dies: the trainer then stops at the next step boundary
    and saves a checkpoint, so an orphaned worker leaves a resumable run."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


def worker_main(run_dir: str, threads: str) -> int:
    """``python -m visattn.comparison train RUN_DIR THREADS`` with the run's config on stdin."""
    cfg = config_from_text(sys.stdin.read())
    torch.set_num_threads(int(threads))
    _stop_with_parent()
    return 0 if train_run(cfg, run_dir) is not None else 130
