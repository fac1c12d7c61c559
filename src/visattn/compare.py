"""Which attention helps on your data, at what cost: segmentors and attention heads trained under one
recipe, several seeds each, measured side by side (``visattn compare``, :func:`compare`).

An *entry* is a registered segmentor (``fcn``, ``danet``, ``ccnet``, ...) or an attention module of
``visattn.list_attentions()`` as the head of ``attnet`` (entry ``attnet-<name>``). Every entry is
trained on the base config with only ``model.name`` (and ``attnet``'s ``attention``) replaced, for
seeds ``0 .. n-1`` (``train.seed``: the seed orders the samples and draws their augmentation, so every
entry sees the same batches in the same order for a given seed; it also draws the initial weights).
The encoder arguments of the base (``encoder``, ``output_stride``, ``aux``, ... :func:`segmentor_arguments`)
are kept; the base model's own head arguments are kept only by the entry that is the base model.

Output directory (:class:`CompareDir`)::

    compare.yaml                 the base recipe and the entries: a re-run continues only the same recipe
    runs/<entry>/seed<k>/        a training run directory (:class:`~visattn.engine.run_dir.RunDir`)
                                 + final.json: the final evaluation, written when the run is complete
    logs/<entry>-seed<k>.log     output of a run trained in a subprocess (``jobs > 1``)
    report.md, report.json       the table; everything, per seed too
    miou_vs_cost.png, per_class_iou_delta.png, attention_maps.png

Re-running the same comparison skips the complete runs (those with ``final.json``), resumes the
interrupted ones from their latest checkpoint, and restarts those killed before their first one.

Cost is measured after training, every entry in the same conditions (:func:`measure_cost`):
parameters; GFLOPs of one forward at the evaluation size (:func:`visattn.profiling.count_flops`);
milliseconds per training step (the recipe's batch, entries interleaved, median); peak training
memory, each entry in a fresh subprocess (CUDA: ``max_memory_allocated``; CPU: the peak RSS, as
:mod:`visattn.benchmark` measures it, :mod:`visattn.profiling`).

Statistics (:func:`paired_difference`): mIoU and mAcc as mean ± standard deviation over the seeds,
and each entry's mIoU difference to the first entry with a Student t confidence interval over the
per-seed differences (paired: seed ``k`` of both saw the same data).
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import hashlib
import inspect
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import yaml

from .engine.config import Config, ConfigError, apply_overrides, dump_config, load_config, merge_config, validate_config
from .engine.run_dir import RunDir
from .profiling import MEMORY_ENV, PeakMemoryMeter, count_flops, timed
from .weights import atomic_write

__all__ = ["compare", "Entry", "make_entries", "entry_config", "segmentor_arguments", "CompareDir", "train_run",
           "measure_cost", "paired_difference", "t_quantile", "format_table", "RunFailedError", "FINAL_METRICS",
           "WARMUP_STEPS", "TIMED_STEPS"]

FINAL_METRICS = "final.json"  # in a run directory: the final evaluation of a complete run
WARMUP_STEPS, TIMED_STEPS = 2, 5  # training steps per entry before timing, and timed (median)
CONFIDENCE = 0.95
_LOG = functools.partial(print, flush=True)


class RunFailedError(RuntimeError):
    """A training run of the comparison failed; the message names it and its log."""


# ---------------------------------------------------------------------------------------------
# entries and their configs


@dataclass(frozen=True)
class Entry:
    """One model of a comparison: registered segmentor ``model`` (with ``attention`` for ``attnet``)."""

    name: str
    model: str
    attention: str | None = None


def make_entries(models: Iterable[str] = (), attentions: Iterable[str] = ()) -> list[Entry]:
    """The entries of ``models`` (registered names) then ``attentions`` (as ``attnet-<name>``);
    an unknown or repeated name is a :class:`ConfigError` naming it."""
    from .attention import list_attentions
    from .models import list_models

    models, attentions = list(models), list(attentions)
    for names, known, kind, listing in ((models, list_models(), "model", "visattn models"),
                                        (attentions, list_attentions(), "attention", "visattn.list_attentions()")):
        for name in names:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
                hint = f"did you mean {', '.join(close)}? " if close else ""
                raise ConfigError(f"unknown {kind} {name!r} ({hint}`{listing}` lists them)")
    entries = [Entry(m, m) for m in models] + [Entry(f"attnet-{a}", "attnet", a) for a in attentions]
    if not entries:
        raise ConfigError("nothing to compare: name models and/or attentions")
    seen = [e.name for e in entries]
    repeated = sorted({n for n in seen if seen.count(n) > 1})
    if repeated:
        raise ConfigError(f"entries given twice: {', '.join(repeated)}")
    return entries


@functools.cache
def segmentor_arguments() -> frozenset[str]:
    """The builder arguments every segmentor shares (:func:`~visattn.models.segmentation.build_segmentor`'s
    keyword-only ones: the encoder, its weights, the auxiliary head): what every entry keeps of the base."""
    from .models.segmentation import build_segmentor

    return frozenset(p.name for p in inspect.signature(build_segmentor).parameters.values()
                     if p.kind is inspect.Parameter.KEYWORD_ONLY)


def entry_config(base: Config, entry: Entry, seed: int, run_dir: str | os.PathLike | None = None) -> Config:
    """``base`` with ``entry``'s model, ``train.seed = seed`` and ``run.dir = run_dir`` (not validated).

    The entry that is the base model keeps all of ``model.kwargs``; the others keep the
    :func:`segmentor_arguments` among them (a head argument of the base's head is not theirs)."""
    kwargs = dict(base.model.kwargs)
    is_base = entry.model == base.model.name and entry.attention in (None, kwargs.get("attention"))
    if not is_base:
        kwargs = {k: v for k, v in kwargs.items() if k in segmentor_arguments()}
    if entry.attention is not None:
        kwargs["attention"] = entry.attention
    return dataclasses.replace(
        base, model=dataclasses.replace(base.model, name=entry.model, kwargs=kwargs),
        train=dataclasses.replace(base.train, seed=seed),
        run=dataclasses.replace(base.run, dir=None if run_dir is None else str(run_dir)))


def recipe(cfg: Config) -> dict:
    """What makes two comparisons the same: the resolved config without ``run`` (where) and
    ``train.seed`` (each run's own), as plain YAML data."""
    data = cfg.to_dict()
    data.pop("run")
    data["train"].pop("seed")
    return yaml.safe_load(yaml.safe_dump(data))


def _config_from_text(text: str) -> Config:
    """A config dumped by :func:`~visattn.engine.config.dump_config`, read back and validated."""
    return validate_config(merge_config(Config(), yaml.safe_load(text), where=" in the comparison's config"))


# ---------------------------------------------------------------------------------------------
# the output directory


class CompareDir:
    """The files of the comparison in ``path`` (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    spec = property(lambda self: self.path / "compare.yaml")
    report_md = property(lambda self: self.path / "report.md")
    report_json = property(lambda self: self.path / "report.json")
    miou_vs_cost = property(lambda self: self.path / "miou_vs_cost.png")
    per_class_iou_delta = property(lambda self: self.path / "per_class_iou_delta.png")
    attention_maps = property(lambda self: self.path / "attention_maps.png")

    def run(self, entry: Entry, seed: int) -> RunDir:
        return RunDir(self.path / "runs" / entry.name / f"seed{seed}")

    def log(self, entry: Entry, seed: int) -> Path:
        return self.path / "logs" / f"{entry.name}-seed{seed}.log"

    def claim(self, base: Config, entries: Sequence[dict], seeds: int) -> None:
        """Write compare.yaml, unless the directory holds another comparison (``ConfigError``
        naming the keys that differ) or something else (``FileExistsError``)."""
        wanted = recipe(base)
        if self.spec.is_file():
            saved = (yaml.safe_load(self.spec.read_text()) or {}).get("recipe")
            if saved != wanted:
                changed = _differences(wanted, saved or {})
                listed = "; ".join(changed[:5]) + ("; ..." if len(changed) > 5 else "")
                raise ConfigError(f"{self.path} holds a comparison of another recipe ({self.spec.name}): {listed}; "
                                  "give another output directory, or the recipe of that comparison")
        elif self.path.is_dir() and any(self.path.iterdir()):
            raise FileExistsError(f"{self.path} is not empty and holds no {self.spec.name}: a comparison starts in a "
                                  "new or empty directory, or continues in its own")
        text = yaml.safe_dump({"recipe": wanted, "entries": list(entries), "seeds": seeds}, sort_keys=False)
        atomic_write(self.spec, lambda tmp: Path(tmp).write_text(text))


def _differences(new: dict, old: dict, prefix: str = "") -> list[str]:
    """``key: value here, value there`` for every dotted key whose value differs."""
    out = []
    for key in sorted(set(new) | set(old), key=str):
        a, b = new.get(key, "(absent)"), old.get(key, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} here, {b!r} there")
    return out


def default_output(base: Config, config: str | os.PathLike | None) -> Path:
    """``run.root/compare-<config name>-<recipe hash>``: the same comparison lands in the same
    directory, another recipe in another."""
    digest = hashlib.sha256(yaml.safe_dump(recipe(base), sort_keys=True).encode()).hexdigest()[:8]
    stem = Path(config).stem if config is not None else "default"
    return Path(base.run.root) / f"compare-{stem}-{digest}"


# ---------------------------------------------------------------------------------------------
# training runs


def final_metrics_file(run: RunDir) -> Path:
    return run.path / FINAL_METRICS


def read_final(run: RunDir) -> dict | None:
    """The record :func:`train_run` wrote when the run completed, ``None`` if it has not."""
    path = final_metrics_file(run)
    return json.loads(path.read_text()) if path.is_file() else None


def train_run(cfg: Config, path: str | os.PathLike) -> dict | None:
    """Train ``cfg`` in the run directory ``path``: resumed from its latest checkpoint if it has one,
    else started anew (what a run killed before its first checkpoint left is removed). Writes and
    returns the record of :data:`FINAL_METRICS` (final metrics, step, seconds, threads); ``None`` if
    the run was interrupted (it can be resumed)."""
    from .engine.trainer import train

    run = RunDir(path)
    resume = run.latest_checkpoint() is not None
    if not resume and run.path.is_dir():
        _clear(run)
    start = time.perf_counter()
    result = train(cfg, resume=run.path if resume else None, quiet=True)
    if result["interrupted"]:
        return None
    record = {"step": result["step"], "total": result["total"], "seconds": time.perf_counter() - start,
              "resumed": resume, "threads": torch.get_num_threads(), "classes": list(result["classes"]),
              "metrics": result["metrics"]}
    atomic_write(final_metrics_file(run), lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))
    return record


def _clear(run: RunDir) -> None:
    """Empty a run directory without a checkpoint, holding its lock (a live run keeps it)."""
    import shutil

    with run.lock():
        for item in run.path.iterdir():
            if item != run.lock_file:
                shutil.rmtree(item) if item.is_dir() else item.unlink()


@dataclass
class _Job:
    entry: Entry
    seed: int
    cfg: Config
    run: RunDir
    log: Path

    @property
    def label(self) -> str:
        return f"{self.entry.name} seed {self.seed}"


class _Progress:
    def __init__(self, total: int, log: Callable[[str], None]) -> None:
        self.total, self.done, self.log = total, 0, log

    def finished(self, job: _Job, record: dict, how: str) -> None:
        self.done += 1
        self.log(f"[{self.done}/{self.total}] {job.label}: mIoU {100 * record['metrics']['mIoU']:.2f} {how}")


def _train_sequentially(jobs: Sequence[_Job], progress: _Progress) -> dict[tuple[str, int], dict]:
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


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _train_in_parallel(jobs: Sequence[_Job], workers: int, gpus: int, progress: _Progress) -> dict[tuple[str, int], dict]:
    """``workers`` runs at a time, each in a subprocess (:func:`_worker_main`) with ``cores // workers``
    torch threads and, with ``gpus > 1``, its own GPU (``CUDA_VISIBLE_DEVICES``, round-robin over slots)."""
    threads = max(1, _cpu_count() // workers)
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
                        proc = subprocess.Popen([sys.executable, "-m", "visattn.compare", "train", str(job.run.path),
                                                 str(threads)], stdin=subprocess.PIPE, stdout=out,
                                                stderr=subprocess.STDOUT, env=env, text=True)
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
    except KeyboardInterrupt:  # Ctrl-C reached the workers too: each stops at a step boundary and saves
        for proc, _, _ in running.values():
            proc.wait()
        raise
    if failed:
        raise RunFailedError(f"{len(failed)} run(s) failed: {'; '.join(failed)}")
    return records


def _stop_with_parent() -> None:
    """SIGTERM this process when its parent dies: the trainer then stops at the next step boundary
    and saves a checkpoint, so an orphaned worker leaves a resumable run."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


def _worker_main(run_dir: str, threads: str) -> int:
    """``python -m visattn.compare train RUN_DIR THREADS`` with the run's config on stdin."""
    cfg = _config_from_text(sys.stdin.read())
    torch.set_num_threads(int(threads))
    _stop_with_parent()
    return 0 if train_run(cfg, run_dir) is not None else 130


# ---------------------------------------------------------------------------------------------
# cost


def recipe_batch(cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """The first training batch of the recipe (``train.batch_size`` items, epoch 0, its augmentation)."""
    from .data import build_dataset

    data = build_dataset(cfg.data, cfg.data.train_split, train=True, seed=cfg.train.seed)
    items = [data[i] for i in range(min(cfg.train.batch_size, len(data)))]
    return torch.stack([torch.as_tensor(i) for i, _ in items]), torch.stack([torch.as_tensor(t) for _, t in items])


def evaluation_size(cfg: Config) -> tuple[int, int]:
    """Input size of one evaluation forward: the sliding window in ``slide`` mode, else the first
    validation image's size."""
    if cfg.eval.mode == "slide":
        size = cfg.eval.crop_size or cfg.data.crop_size
        return (size, size) if isinstance(size, int) else tuple(size)  # type: ignore[return-value]
    from .data import build_dataset

    image, _ = build_dataset(cfg.data, cfg.data.val_split, train=False).dataset[0]
    return tuple(torch.as_tensor(image).shape[-2:])  # type: ignore[return-value]


def _num_classes(cfg: Config) -> int:
    from .data import classes_and_palette

    return len(classes_and_palette(cfg.data)[0])


def _training_step(cfg: Config, device: torch.device) -> tuple[torch.nn.Module, Callable]:
    """The model of ``cfg`` (seeded, no starting weights read) and ``step(images, targets)``: one
    optimizer step as the trainer takes it (``accum_steps`` micro-batches, the AMP dtype, the
    weighted loss), synchronised on CUDA."""
    from .engine.build import build_model, build_optimizer
    from .engine.losses import LossTerms, output_weights, weighted_loss
    from .engine.trainer import amp_dtype

    t = cfg.train
    torch.manual_seed(t.seed)
    num_classes = _num_classes(cfg)
    model = build_model(cfg.model, num_classes, pretrained=False).to(device).train()
    optimizer = build_optimizer(model, t)
    weights = output_weights(t, model)
    # a weighting computed from the masks costs what any list of weights does
    class_weights = [1.0] * num_classes if isinstance(t.class_weights, str) else t.class_weights
    criterion = LossTerms.from_config(t, class_weights, device)
    amp = amp_dtype(t.amp, device)

    def step(images: torch.Tensor, targets: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        for image, target in zip(images.chunk(t.accum_steps), targets.chunk(t.accum_steps)):
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                outputs = model(image)
            loss, _ = weighted_loss(outputs, target, weights, criterion)
            (loss / t.accum_steps).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return model, step


def count_gflops(cfg: Config, size: tuple[int, int], device: torch.device) -> float:
    """GFLOPs of one forward of ``cfg``'s model in eval mode on a ``(1, 3, *size)`` input
    (:func:`visattn.profiling.count_flops`), on the ``meta`` device where every operation allows it."""
    from .engine.build import build_model

    try:
        with torch.device("meta"):
            model = build_model(cfg.model, _num_classes(cfg), pretrained=False)
        return count_flops(model.eval(), torch.empty(1, 3, *size, device="meta")) / 1e9
    except (RuntimeError, NotImplementedError):  # autocast and a few kernels do not exist on meta
        model = build_model(cfg.model, _num_classes(cfg), pretrained=False).to(device)
        return count_flops(model.eval(), torch.zeros(1, 3, *size, device=device)) / 1e9


def _peak_memory_main(threads: str) -> int:
    """``python -m visattn.compare peak-memory THREADS`` with an entry's config on stdin: print
    ``{"peak_mb", "method"}``, the peak memory of two training steps of a fresh model on the
    recipe's batch (weights, gradients, optimizer state, activations), after a step at 32x32 that
    initialises the libraries."""
    from .engine.distributed import resolve_device

    cfg = _config_from_text(sys.stdin.read())
    torch.set_num_threads(int(threads))
    device = resolve_device(cfg.train.device)
    images, targets = recipe_batch(cfg)
    warm_up = _training_step(cfg, device)[1]  # the model lives in the closure only: freed with it
    warm_up(images[:2, :, :32, :32].to(device), targets[:2, :32, :32].to(device))
    del warm_up
    meter = PeakMemoryMeter(device)
    meter.start()
    _, step = _training_step(cfg, device)
    images, targets = images.to(device), targets.to(device)
    for _ in range(2):
        step(images, targets)
    print(json.dumps({"peak_mb": meter.peak_mb(), "method": meter.method}))
    return 0


def peak_memory(cfg: Config, threads: int) -> dict:
    """:func:`_peak_memory_main` in a fresh subprocess; ``{"error": ...}`` if it fails (e.g. out of memory)."""
    proc = subprocess.run([sys.executable, "-m", "visattn.compare", "peak-memory", str(threads)],
                          input=dump_config(cfg), capture_output=True, text=True, env=MEMORY_ENV | dict(os.environ))
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_cost(configs: dict[str, Config], device: torch.device, warmup: int = WARMUP_STEPS,
                 reps: int = TIMED_STEPS, log: Callable[[str], None] = _LOG) -> dict:
    """Cost of each ``name -> config`` on ``device``, measured side by side: ``{"entries": {name:
    {"params_m", "gflops", "ms_per_step", "peak_train_mb", "memory_method"}}, "setup": {...}}``.

    Time: every model built and stepped ``warmup`` times on the recipe's first batch, then ``reps``
    rounds of one step each, the entries in rotating order; the median per entry. The rounds run
    back to back, so every entry sees the same load. Peak memory: each entry in its own subprocess
    (:func:`peak_memory`)."""
    first = next(iter(configs.values()))
    size = evaluation_size(first)
    threads = torch.get_num_threads()
    out: dict[str, dict] = {name: {} for name in configs}
    for name, cfg in configs.items():
        log(f"cost of {name}: peak training memory (subprocess), GFLOPs at {size[0]}x{size[1]}")
        memory = peak_memory(cfg, threads)
        out[name].update(peak_train_mb=memory.get("peak_mb"), memory_method=memory.get("method", memory.get("error")))
        out[name]["gflops"] = count_gflops(cfg, size, device)
    images, targets = recipe_batch(first)
    images, targets = images.to(device), targets.to(device)
    steps = {}
    for name, cfg in configs.items():
        model, steps[name] = _training_step(cfg, device)
        out[name]["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    log(f"cost: {warmup} warm-up and {reps} timed training steps per entry, interleaved, batch "
        f"{'x'.join(map(str, images.shape))}")
    for _ in range(warmup):
        for step in steps.values():
            step(images, targets)
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for rep in range(reps):
        for name in order[rep % len(order):] + order[:rep % len(order)]:
            times[name].append(timed(functools.partial(steps[name], images, targets)))
    for name, ts in times.items():
        out[name]["ms_per_step"] = 1e3 * statistics.median(ts)
    setup = {"device": str(device), "threads": threads, "batch": list(images.shape), "eval_size": list(size),
             "warmup_steps": warmup, "timed_steps": reps}
    if device.type == "cuda":
        setup["gpu"] = torch.cuda.get_device_name(device)
    return {"entries": out, "setup": setup}


# ---------------------------------------------------------------------------------------------
# statistics


def _t_cdf(t: float, df: int) -> float:
    """Student t CDF at ``t >= 0`` for integer ``df`` (Abramowitz & Stegun 26.7.3-4, exact)."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:
        term = series = math.cos(theta) if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= 2 * k / (2 * k + 1) * c2
            series += term
        two_sided = 2 / math.pi * (theta + math.sin(theta) * series)
    else:
        term = series = 1.0
        for k in range(1, df // 2):
            term *= (2 * k - 1) / (2 * k) * c2
            series += term
        two_sided = math.sin(theta) * series
    return 0.5 + 0.5 * two_sided


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (``0.5 <= p < 1``) of Student's t with ``df`` degrees of freedom (bisection
    on the exact CDF; no SciPy needed)."""
    if not 0.5 <= p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 <= p < 1 and df >= 1, got p={p}, df={df}")
    low, high = 0.0, 1.0
    while _t_cdf(high, df) < p:
        low, high = high, 2 * high
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if _t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


def mean_and_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def paired_difference(values: Sequence[float], reference: Sequence[float], level: float = CONFIDENCE) -> dict:
    """``values - reference`` seed by seed: ``{"per_seed", "mean", "low", "high", "level"}``, the
    interval ``mean ± t_{(1+level)/2, n-1} * sd / sqrt(n)`` (``low``/``high`` ``None`` for one seed)."""
    diffs = [v - r for v, r in zip(values, reference, strict=True)]
    mean, sd = mean_and_std(diffs)
    if sd is None:
        return {"per_seed": diffs, "mean": mean, "low": None, "high": None, "level": level}
    half = t_quantile((1 + level) / 2, len(diffs) - 1) * sd / math.sqrt(len(diffs))
    return {"per_seed": diffs, "mean": mean, "low": mean - half, "high": mean + half, "level": level}


def _class_means(runs: Sequence[dict]) -> list[float | None]:
    """Per-class IoU averaged over the runs where it is defined (``None`` where it never is)."""
    table = np.array([[math.nan if v is None else v for v in r["metrics"]["per_class_iou"]] for r in runs])
    defined = ~np.isnan(table)
    sums = np.where(defined, table, 0).sum(0)
    return [float(s / n) if n else None for s, n in zip(sums, defined.sum(0))]


def summarise(entries: Sequence[Entry], configs: dict[str, Config], records: dict[tuple[str, int], dict],
              seeds: Sequence[int], cdir: CompareDir) -> list[dict]:
    """Per entry: its runs and the statistics over them (fractions, as the trainer's metrics)."""
    reference = [records[entries[0].name, s]["metrics"]["mIoU"] for s in seeds]
    reference_classes: list[float | None] = []
    rows = []
    for entry in entries:
        runs = [{"seed": s, "run_dir": str(cdir.run(entry, s).path.relative_to(cdir.path)),
                 **records[entry.name, s]} for s in seeds]
        miou = [r["metrics"]["mIoU"] for r in runs]
        macc = [r["metrics"]["mAcc"] for r in runs]
        classes = _class_means(runs)
        reference_classes = reference_classes or classes
        cfg = configs[entry.name]
        rows.append({
            "name": entry.name, "model": cfg.model.name, "kwargs": cfg.model.kwargs, "runs": runs,
            "mIoU": dict(zip(("mean", "std"), mean_and_std(miou))), "mAcc": dict(zip(("mean", "std"), mean_and_std(macc))),
            "delta_mIoU": None if entry is entries[0] else paired_difference(miou, reference),
            "per_class_iou": classes,
            "per_class_iou_delta": [None if a is None or b is None else a - b for a, b in zip(classes, reference_classes)],
        })
    return rows


# ---------------------------------------------------------------------------------------------
# report


def _signed(value: float) -> str:
    return f"{100 * value:+.2f}"


def _spread(stat: dict) -> str:
    return f"{100 * stat['mean']:.2f}" + ("" if stat["std"] is None else f" ± {100 * stat['std']:.2f}")


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(report: dict) -> str:
    """The comparison as a Markdown table (metrics in %, differences in points)."""
    reference = report["entries"][0]["name"]
    lines = [f"| entry | params (M) | GFLOPs | ms/step | peak train memory (MB) | mIoU | mAcc "
             f"| ΔmIoU vs {reference} ({100 * CONFIDENCE:.0f}% CI) |", "|---" * 8 + "|"]
    for row in report["entries"]:
        cost, delta = row["cost"], row["delta_mIoU"]
        if delta is None:
            shown = "reference"
        else:
            shown = _signed(delta["mean"])
            if delta["low"] is not None:
                shown += f" [{_signed(delta['low'])}, {_signed(delta['high'])}]"
        lines.append(f"| {row['name']} | {cost['params_m']:.2f} | {cost['gflops']:.2f} | {cost['ms_per_step']:.1f} "
                     f"| {_number(cost['peak_train_mb'], '.0f')} | {_spread(row['mIoU'])} | {_spread(row['mAcc'])} "
                     f"| {shown} |")
    return "\n".join(lines)


def _markdown(report: dict) -> str:
    t, setup = report["recipe"]["train"], report["cost_setup"]
    n = len(report["seeds"])
    length = f"{t['epochs']} epochs" if t["epochs"] else f"{t['iters']} steps"
    where = setup.get("gpu") or f"{report['machine']['cpu']}, {setup['threads']} threads"
    reference = report["entries"][0]["name"]
    ci = (f"ΔmIoU: the mean over seeds of each seed's mIoU minus {reference}'s (points), with its "
          f"{100 * CONFIDENCE:.0f}% Student t interval over the {n} per-seed differences ({n - 1} "
          f"degree{'s' if n > 2 else ''} of freedom); an interval that excludes 0 is a difference the seeds do not explain."
          if n > 1 else f"ΔmIoU: mIoU minus {reference}'s (points); one seed, so no interval.")
    maps = "; ".join(f"{row['name']}: {m['module']} {m['map']}" if (m := row["attention_map"]) else
                     f"{row['name']}: none" for row in report["entries"])
    return "\n".join([
        "# Attention comparison", "",
        f"Recipe: {report['config'] or 'the default config'}"
        + (f" with {', '.join(report['overrides'])}" if report["overrides"] else "")
        + f"; data {report['recipe']['data']['dataset']}; {length} x batch {t['batch_size']}; "
        f"model arguments {report['recipe']['model']['kwargs']}; seeds {', '.join(map(str, report['seeds']))}.", "",
        format_table(report), "",
        "mIoU, mAcc: mean ± standard deviation over seeds (%), the final evaluation of each run. " + ci, "",
        f"Cost, measured after training on {setup['device']} ({where}): parameters; GFLOPs of one forward at "
        f"{setup['eval_size'][0]}x{setup['eval_size'][1]}; ms/step: median of {setup['timed_steps']} training steps "
        f"on a batch of {'x'.join(map(str, setup['batch']))} after {setup['warmup_steps']} warm-up steps, entries "
        "interleaved; peak train memory: two training steps of a fresh model in its own process (weights, "
        "gradients, optimizer state, activations).", "",
        "![mIoU against cost](miou_vs_cost.png)", "",
        f"![per-class IoU difference to {reference}](per_class_iou_delta.png)", "",
        f"![attention maps](attention_maps.png) (validation image {report['image_index']}, query pixel "
        f"{tuple(report['query_point'])}; {maps})", "",
    ])


def query_point(mask: np.ndarray) -> tuple[int, int]:
    """The pixel nearest the centre whose class is not the image's most frequent one (an object rather
    than the background); the centre if every labelled pixel has one class."""
    from .data import IGNORE_INDEX

    h, w = mask.shape
    labelled = mask[mask != IGNORE_INDEX]
    if labelled.size:
        values, counts = np.unique(labelled, return_counts=True)
        ys, xs = np.nonzero((mask != values[counts.argmax()]) & (mask != IGNORE_INDEX))
        if len(ys):
            i = int(np.argmin((ys - (h - 1) / 2) ** 2 + (xs - (w - 1) / 2) ** 2))
            return int(ys[i]), int(xs[i])
    return h // 2, w // 2


def _draw(report: dict, entries: Sequence[Entry], cdir: CompareDir, base: Config, device: torch.device) -> None:
    """The three pictures; each entry's attention map from its seed-0 model (best weights)."""
    from .data import build_dataset, classes_and_palette
    from .engine.run_dir import load_trained
    from .viz import attention_map_of, save_attention_maps, save_miou_vs_cost, save_per_class_iou_delta

    rows = report["entries"]
    save_miou_vs_cost([r["name"] for r in rows], [100 * r["mIoU"]["mean"] for r in rows],
                      [100 * (r["mIoU"]["std"] or 0) for r in rows], [r["cost"]["ms_per_step"] for r in rows],
                      [r["cost"]["params_m"] for r in rows], cdir.miou_vs_cost)
    classes, _ = classes_and_palette(base.data)
    save_per_class_iou_delta(classes, [r["name"] for r in rows[1:]],
                             [[math.nan if d is None else 100 * d for d in r["per_class_iou_delta"]] for r in rows[1:]],
                             rows[0]["name"], cdir.per_class_iou_delta)
    image, mask = build_dataset(base.data, base.data.val_split, train=False).dataset[report["image_index"]]
    image = torch.as_tensor(image).permute(1, 2, 0).numpy()
    point = query_point(np.asarray(mask))
    panels = []
    for entry, row in zip(entries, rows):
        _, model = load_trained(cdir.run(entry, report["seeds"][0]).path, device=device)
        found = attention_map_of(model, image, point, base.data.mean, base.data.std)
        row["attention_map"] = None if found is None else {"module": found[0], "map": found[1].key}
        panels.append((entry.name, None if found is None else found[1]))
    save_attention_maps(panels, image, point, cdir.attention_maps)
    report["query_point"] = list(point)


# ---------------------------------------------------------------------------------------------
# the comparison


def compare(config: str | os.PathLike | Config | None = None, models: Iterable[str] = (),
            attentions: Iterable[str] = (), seeds: int = 3, overrides: Iterable[str] = (),
            output: str | os.PathLike | None = None, jobs: int = 1, log: Callable[[str], None] = _LOG) -> dict:
    """Train every entry of ``models`` and ``attentions`` (see the module docstring) for seeds
    ``0 .. seeds-1`` on the recipe ``config`` (a YAML file, a :class:`Config`, ``None``: the default)
    with ``overrides`` (``key=value``), measure their cost and write the report to ``output``
    (default: ``run.root/compare-<config>-<recipe hash>``). ``jobs``: runs trained at once, each in a
    subprocess (a CUDA device each when there are several, else ``cores // jobs`` threads each);
    ``1``: in this process. ``log``: where progress lines go.

    Returns the report (report.json's content). A run stopped by Ctrl-C raises ``KeyboardInterrupt``
    (call again to continue); bad names, a bad config or an output directory holding another
    comparison raise ``ConfigError`` before anything is trained.
    """
    from .benchmark import machine_info
    from .engine.distributed import resolve_device

    overrides = list(overrides)
    if isinstance(config, Config):
        base = validate_config(apply_overrides(config, overrides))
        config_name = None
    else:
        base = load_config(config, overrides)
        config_name = None if config is None else str(config)
    if base.task != "segmentation":
        raise ConfigError(f"compare ranks segmentors by mIoU; the config's task is {base.task!r}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds must be a positive integer (seeds 0 .. seeds-1), got {seeds!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be a positive integer, got {jobs!r}")
    entries = make_entries(models, attentions)
    configs = {}
    for entry in entries:
        try:
            configs[entry.name] = validate_config(entry_config(base, entry, 0))
        except ConfigError as err:
            raise ConfigError(f"entry {entry.name}: {err}") from None
    cdir = CompareDir(output if output is not None else default_output(base, config_name))
    cdir.claim(base, [{"name": e.name, "model": configs[e.name].model.name, "kwargs": configs[e.name].model.kwargs}
                      for e in entries], seeds)

    seed_list = list(range(seeds))
    progress = _Progress(len(entries) * seeds, log)
    log(f"compare {len(entries)} entries x {seeds} seeds in {cdir}")
    records, pending = {}, []
    for seed in seed_list:  # seed-major: a first complete comparison as early as possible
        for entry in entries:
            job = _Job(entry, seed, entry_config(base, entry, seed, cdir.run(entry, seed).path), cdir.run(entry, seed),
                       cdir.log(entry, seed))
            record = read_final(job.run)
            if record is None:
                pending.append(job)
            else:
                records[entry.name, seed] = record
                progress.finished(job, record, "(complete before)")
    device = resolve_device(base.train.device)
    if jobs == 1 or len(pending) <= 1:
        records.update(_train_sequentially(pending, progress))
    else:
        gpus = torch.cuda.device_count() if device.type == "cuda" and base.train.device in ("auto", "cuda") else 0
        records.update(_train_in_parallel(pending, min(jobs, len(pending)), gpus, progress))

    cost = measure_cost(configs, device, log=log)
    report = {
        "config": config_name, "overrides": overrides, "output": str(cdir), "recipe": recipe(base),
        "seeds": seed_list, "reference": entries[0].name, "confidence": CONFIDENCE,
        "classes": list(records[entries[0].name, 0]["classes"]), "image_index": 0,
        "entries": summarise(entries, configs, records, seed_list, cdir),
        "cost_setup": cost["setup"], "machine": machine_info(),
        "date": datetime.now().isoformat(timespec="seconds"),
    }
    for row in report["entries"]:
        row["cost"] = cost["entries"][row["name"]]
    _draw(report, entries, cdir, base, device)
    atomic_write(cdir.report_json, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    atomic_write(cdir.report_md, lambda tmp: Path(tmp).write_text(_markdown(report)))
    log(f"report: {cdir.report_md}")
    return report


class _CallableModule(types.ModuleType):
    """``visattn.compare`` is this module once it is imported (Python sets a package's attribute to
    its submodule), and :func:`compare` before: either way ``visattn.compare(...)`` runs the comparison."""

    def __call__(self, *args, **kwargs) -> dict:
        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


if __name__ == "__main__":  # the subprocesses: a training run (jobs > 1) and a peak-memory measurement
    command, *arguments = sys.argv[1:]
    sys.exit({"train": _worker_main, "peak-memory": _peak_memory_main}[command](*arguments))
