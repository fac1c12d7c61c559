"""A comparison that outgrows one machine: its missing runs as batch jobs (``visattn compare
--emit-jobs FILE``), one ``visattn train`` command per line, for a Slurm array or any batch system.

Each command trains exactly the run the comparison would train: a run not started yet from its
resolved config (written to ``jobs/<entry>-seed<k>.yaml`` in the comparison directory: the recipe,
the entry's model, ``train.seed``) into ``runs/<entry>/seed<k>``; a run with a checkpoint continues
with ``visattn train --resume``; a run in progress (its directory's lock held) is not listed. The
trainer marks a complete run with its final evaluation (``final.json``,
:meth:`~visattn.engine.run_dir.RunDir.save_final_metrics`), the file the comparison reads, so the
same ``visattn compare`` afterwards collects the finished runs and reports.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from ..engine.config import Config, dump_config
from ..weights import atomic_write
from .output import CompareDir
from .runner import Job

__all__ = ["job_config_path", "job_command", "write_jobs"]


def job_config_path(cdir: CompareDir, job: Job) -> Path:
    """Where the config of ``job``'s ``visattn train`` command is written: ``jobs/<entry>-seed<k>.yaml``."""
    return cdir.path / "jobs" / f"{job.entry.name}-seed{job.seed}.yaml"


def job_command(cdir: CompareDir, job: Job) -> list[str]:
    """The ``visattn train`` words that train ``job``'s run into its run directory (absolute paths:
    a batch job may start in another directory), writing the config it reads when the run has no
    checkpoint yet (clearing what a job killed before its first checkpoint left there, as
    :func:`~visattn.comparison.compare` does before it trains such a run)."""
    run_dir = os.path.abspath(job.run.path)
    if job.run.latest_checkpoint() is not None:
        return ["visattn", "train", "--resume", run_dir, "--quiet"]
    job.run.clear()
    config = os.path.abspath(job_config_path(cdir, job))
    cfg: Config = dataclasses.replace(job.cfg, run=dataclasses.replace(job.cfg.run, dir=run_dir))
    atomic_write(config, lambda tmp: Path(tmp).write_text(dump_config(cfg)))
    return ["visattn", "train", "--config", config, "--output-dir", run_dir, "--quiet"]


def write_jobs(cdir: CompareDir, jobs: Sequence[Job], file: str | os.PathLike) -> list[str]:
    """Write ``file`` (atomically): one shell-quoted :func:`job_command` line per job, in order.
    Returns the lines."""
    lines = [shlex.join(job_command(cdir, job)) for job in jobs]
    atomic_write(file, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in lines)))
    return lines
