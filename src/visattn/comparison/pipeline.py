"""A comparison from the names to the report (:func:`compare`): the recipe and the entries checked,
the output directory claimed, the missing runs trained, the cost measured, the report written; or
the missing runs written as batch jobs instead (:func:`emit_jobs`)."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

import torch

from ..benchmark import machine_info
from ..engine.config import Config, ConfigError, apply_overrides, load_config, validate_config
from ..engine.distributed import resolve_device
from .cost import measure_cost_once
from .entries import Entry, entry_config, make_entries, recipe
from .jobs import write_jobs
from .output import FINAL_METRICS, CompareDir, default_output, read_final
from .report import draw_pictures, save_report
from .runner import Job, Progress, print_progress, train_in_parallel, train_sequentially
from .stats import CONFIDENCE, summarise

__all__ = ["compare", "emit_jobs"]


def compare(config: str | os.PathLike | Config | None = None, models: Iterable[str] = (),
            attentions: Iterable[str] = (), seeds: int = 3, overrides: Iterable[str] = (),
            output: str | os.PathLike | None = None, jobs: int = 1,
            log: Callable[[str], None] = print_progress, baselines: Iterable[str] = ()) -> dict:
    """Train every entry of ``models`` and ``attentions`` (see :mod:`visattn.comparison`) for seeds
    ``0 .. seeds-1`` on the recipe ``config`` (a YAML file, a :class:`Config`, ``None``: the default)
    with ``overrides`` (``key=value``), measure their cost and write the report to ``output``
    (default: ``run.root/compare-<config>-<recipe hash>``). ``jobs``: runs trained at once, in subprocesses
    with a GPU each if there are several, else ``cores // jobs`` threads (``1``: here); ``log``: progress lines;
    ``baselines``: entries every entry is also differenced against (a ΔmIoU column each, beside the
    first entry's). The cost is measured once per set of entries and machine (cost.json): reporting
    a finished comparison again, e.g. against other baselines, trains and measures nothing.

    Returns the report (report.json's content). A run stopped by Ctrl-C raises ``KeyboardInterrupt``
    (call again to continue); bad names, a bad config or an output directory holding another
    comparison raise ``ConfigError`` before anything is trained.
    """
    overrides, baselines = list(overrides), list(baselines)
    base, config_name, entries, configs, cdir = _claim(config, models, attentions, seeds, overrides, output, jobs,
                                                       baselines)
    log(f"compare {len(entries)} entries x {seeds} seeds in {cdir}")
    seed_list, device = list(range(seeds)), resolve_device(base.train.device)
    records = _train_runs(base, entries, seed_list, cdir, device, jobs, log)
    cost = measure_cost_once(cdir.cost_json, configs, device, log=log)
    report = {
        "config": config_name, "overrides": overrides, "output": str(cdir), "recipe": recipe(base),
        "seeds": seed_list, "reference": entries[0].name, "baselines": baselines, "confidence": CONFIDENCE,
        "classes": list(records[entries[0].name, 0]["classes"]), "image_index": 0,
        "entries": summarise(entries, configs, records, seed_list, cdir, baselines), "cost_setup": cost["setup"],
        "machine": machine_info(), "date": datetime.now().isoformat(timespec="seconds"),
    }
    for row in report["entries"]:
        row["cost"] = cost["entries"][row["name"]]
    draw_pictures(report, entries, cdir, base, device)
    save_report(report, cdir)
    log(f"report: {cdir.report_md}")
    return report


def emit_jobs(file: str | os.PathLike, config: str | os.PathLike | Config | None = None, models: Iterable[str] = (),
              attentions: Iterable[str] = (), seeds: int = 3, overrides: Iterable[str] = (),
              output: str | os.PathLike | None = None, baselines: Iterable[str] = ()) -> list[str]:
    """Write to ``file`` one ``visattn train`` command per run that :func:`compare` with the same
    arguments would train (see :mod:`~visattn.comparison.jobs`), and nothing else: no run is trained.
    The output directory is claimed as :func:`compare` claims it, so that :func:`compare` collects the
    runs once the commands have run. A run training now (its directory locked) is not listed.
    ``baselines`` are checked as :func:`compare` checks them, so that the report's command is known
    to work. Returns the commands (none when every run is complete or in progress)."""
    base, _, entries, _, cdir = _claim(config, models, attentions, seeds, list(overrides), output, 1, list(baselines))
    runs = [_job(base, entry, seed, cdir) for seed in range(seeds) for entry in entries]
    return write_jobs(cdir, [job for job in runs if read_final(job.run) is None and not job.run.in_use()], file)


def _claim(config: str | os.PathLike | Config | None, models: Iterable[str], attentions: Iterable[str], seeds: int,
           overrides: list[str], output: str | os.PathLike | None, jobs: int,
           baselines: Sequence[str] = ()) -> tuple[Config, str | None, list[Entry], dict[str, Config], CompareDir]:
    """The recipe, its file's name, the entries, their configs, and the output directory claimed
    for them (every check done before anything is written)."""
    base, config_name = _base_config(config, overrides)
    _check_counts(seeds, jobs)
    entries = make_entries(models, attentions)
    _check_baselines(baselines, entries)
    configs = _entry_configs(base, entries)
    cdir = CompareDir(output if output is not None else default_output(base, config_name))
    cdir.claim(base, [{"name": e.name, "model": configs[e.name].model.name, "kwargs": configs[e.name].model.kwargs}
                      for e in entries], seeds)
    return base, config_name, entries, configs, cdir


def _job(base: Config, entry: Entry, seed: int, cdir: CompareDir) -> Job:
    """The run of ``entry`` and ``seed``: its config, its run directory and its log."""
    return Job(entry, seed, entry_config(base, entry, seed, cdir.run(entry, seed).path), cdir.run(entry, seed),
               cdir.log(entry, seed))


def _base_config(config: str | os.PathLike | Config | None, overrides: list[str]) -> tuple[Config, str | None]:
    """The recipe with ``overrides`` applied, validated, and the name of its file (``None``: not a file)."""
    if isinstance(config, Config):
        base, config_name = validate_config(apply_overrides(config, overrides)), None
    else:
        base, config_name = load_config(config, overrides), None if config is None else str(config)
    if base.task != "segmentation":
        raise ConfigError(f"compare ranks segmentors by mIoU; the config's task is {base.task!r}")
    return base, config_name


def _check_counts(seeds: int, jobs: int) -> None:
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds must be a positive integer (seeds 0 .. seeds-1), got {seeds!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be a positive integer, got {jobs!r}")


def _check_baselines(baselines: Sequence[str], entries: Sequence[Entry]) -> None:
    names = [e.name for e in entries]
    for name in baselines:
        if name not in names:
            raise ConfigError(f"baseline {name!r} is not an entry of this comparison ({' '.join(names)}): "
                              "add it to --models or --attentions (an attention module as attnet-<name>)")
        if name == names[0]:
            raise ConfigError(f"baseline {name!r} is the first entry, which every entry is already differenced against")
    twice = sorted({b for b in baselines if baselines.count(b) > 1})
    if twice:
        raise ConfigError(f"baselines given twice: {' '.join(twice)}")


def _entry_configs(base: Config, entries: Sequence[Entry]) -> dict[str, Config]:
    """Each entry's config (seed 0), validated: an error names the entry."""
    configs = {}
    for entry in entries:
        try:
            configs[entry.name] = validate_config(entry_config(base, entry, 0))
        except ConfigError as err:
            raise ConfigError(f"entry {entry.name}: {err}") from None
    return configs


def _train_runs(base: Config, entries: Sequence[Entry], seeds: Sequence[int], cdir: CompareDir, device: torch.device,
                jobs: int, log: Callable[[str], None]) -> dict[tuple[str, int], dict]:
    """The final record of every run, ``(entry name, seed) -> record``: read where the run is
    complete, else trained (``jobs`` at once), seed-major so that a first complete comparison comes
    as early as possible."""
    progress = Progress(len(entries) * len(seeds), log)
    records, pending = {}, []
    for seed in seeds:
        for entry in entries:
            job = _job(base, entry, seed, cdir)
            record = read_final(job.run)
            if record is None:
                if job.run.latest_checkpoint() is None:
                    job.run.check_clearable(also=(FINAL_METRICS,))  # before any run trains: nothing foreign there
                pending.append(job)
            else:
                records[entry.name, seed] = record
                progress.finished(job, record, "(complete before)")
    if jobs == 1 or len(pending) <= 1:
        records.update(train_sequentially(pending, progress))
    else:
        gpus = torch.cuda.device_count() if device.type == "cuda" and base.train.device in ("auto", "cuda") else 0
        records.update(train_in_parallel(pending, min(jobs, len(pending)), gpus, progress))
    return records
