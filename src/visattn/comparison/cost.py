"""What each entry of a comparison costs, measured after training in the same conditions: parameters,
GFLOPs of one forward at the evaluation size, milliseconds per training step (the trainer's own
step, :class:`~visattn.engine.step.TrainingStep`, entries interleaved) and the peak memory of
training (each entry in a fresh subprocess, ``python -m visattn.comparison peak-memory``); kept in
the comparison's cost.json for the next report of the same entries (:func:`measure_cost_once`)."""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from .. import __version__
from ..benchmark import machine_info
from ..bounded import read_json
from ..data import build_dataset, classes_and_palette
from ..engine.build import build_model
from ..engine.config import Config, dump_config
from ..engine.distributed import resolve_device
from ..engine.losses import LossTerms
from ..engine.step import TrainingStep
from ..profiling import MEMORY_ENV, PeakMemoryMeter, count_flops, interleaved_times
from ..weights import atomic_write
from .entries import config_from_text
from .runner import print_progress

__all__ = ["measure_cost", "measure_cost_once", "training_step", "step_on", "count_gflops", "peak_memory",
           "peak_memory_main", "recipe_batch", "evaluation_size", "num_classes", "WARMUP_STEPS", "TIMED_STEPS"]

WARMUP_STEPS, TIMED_STEPS = 2, 5  # training steps per entry before timing, and timed (median)


def recipe_batch(cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """The first training batch of the recipe (``train.batch_size`` items, epoch 0, its augmentation)."""
    data = build_dataset(cfg.data, cfg.data.train_split, train=True, seed=cfg.train.seed)
    items = [data[i] for i in range(min(cfg.train.batch_size, len(data)))]
    return torch.stack([torch.as_tensor(i) for i, _ in items]), torch.stack([torch.as_tensor(t) for _, t in items])


def evaluation_size(cfg: Config) -> tuple[int, int]:
    """Input size of one evaluation forward: the sliding window in ``slide`` mode, else the first
    validation image's size."""
    if cfg.eval.mode == "slide":
        size = cfg.eval.crop_size or cfg.data.crop_size
        return (size, size) if isinstance(size, int) else tuple(size)  # type: ignore[return-value]
    image, _ = build_dataset(cfg.data, cfg.data.val_split, train=False).dataset[0]
    return tuple(torch.as_tensor(image).shape[-2:])  # type: ignore[return-value]


def num_classes(cfg: Config) -> int:
    return len(classes_and_palette(cfg.data)[0])


def training_step(cfg: Config, device: torch.device) -> TrainingStep:
    """The trainer's optimizer step (:class:`~visattn.engine.step.TrainingStep`) for ``cfg.train`` on
    the model of ``cfg`` (seeded, no starting weights read): the AMP dtype and scaler,
    ``accum_steps``, ``clip_grad``, ``ema``, ``channels_last``, ``grad_checkpointing`` and ``compile``
    as training applies them. A class weighting computed from the masks costs what any list of
    weights does, so all-ones stand in for it."""
    t = cfg.train
    torch.manual_seed(t.seed)
    classes = num_classes(cfg)
    model = build_model(cfg.model, classes, pretrained=False).to(device).train()
    class_weights = [1.0] * classes if isinstance(t.class_weights, str) else t.class_weights
    criterion = LossTerms.from_config(t, class_weights, device)
    return TrainingStep(model, t, criterion, device, cfg.model.name).wrap_model()


def step_on(step: TrainingStep, images: torch.Tensor, targets: torch.Tensor) -> Callable[[], None]:
    """``step`` on the batch ``images, targets`` (split into its ``accum_steps`` micro-batches) as
    a call, which waits for the device (CUDA) to finish it."""
    micro_batches = list(zip(images.chunk(step.accum), targets.chunk(step.accum)))

    def call() -> None:
        step.run(micro_batches)
        if step.device.type == "cuda":
            torch.cuda.synchronize(step.device)

    return call


def count_gflops(cfg: Config, size: tuple[int, int], device: torch.device) -> float:
    """GFLOPs of one forward of ``cfg``'s model in eval mode on a ``(1, 3, *size)`` input
    (:func:`visattn.profiling.count_flops`), on the ``meta`` device where every operation allows it."""
    try:
        with torch.device("meta"):
            model = build_model(cfg.model, num_classes(cfg), pretrained=False)
        return count_flops(model.eval(), torch.empty(1, 3, *size, device="meta")) / 1e9
    except (RuntimeError, NotImplementedError):  # autocast and a few kernels do not exist on meta
        model = build_model(cfg.model, num_classes(cfg), pretrained=False).to(device)
        return count_flops(model.eval(), torch.zeros(1, 3, *size, device=device)) / 1e9


def peak_memory_main(threads: str) -> int:
    """``python -m visattn.comparison peak-memory THREADS`` with an entry's config on stdin: print
    ``{"peak_mb", "method"}``, the peak memory of two training steps of a fresh model on the
    recipe's batch (weights, gradients, optimizer state, activations), after a step at 32x32 that
    initialises the libraries."""
    cfg = config_from_text(sys.stdin.read())
    torch.set_num_threads(int(threads))
    device = resolve_device(cfg.train.device)
    images, targets = recipe_batch(cfg)
    step_on(training_step(cfg, device), images[:2, :, :32, :32].to(device), targets[:2, :32, :32].to(device))()
    meter = PeakMemoryMeter(device)
    meter.start()
    step = step_on(training_step(cfg, device), images.to(device), targets.to(device))
    for _ in range(2):
        step()
    print(json.dumps({"peak_mb": meter.peak_mb(), "method": meter.method}))
    return 0


def peak_memory(cfg: Config, threads: int) -> dict:
    """:func:`peak_memory_main` in a fresh subprocess; ``{"error": ...}`` if it fails (e.g. out of memory)."""
    proc = subprocess.run([sys.executable, "-m", "visattn.comparison", "peak-memory", str(threads)],
                          input=dump_config(cfg), capture_output=True, text=True, env=MEMORY_ENV | dict(os.environ))
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_cost(configs: dict[str, Config], device: torch.device, warmup: int = WARMUP_STEPS,
                 reps: int = TIMED_STEPS, log: Callable[[str], None] = print_progress) -> dict:
    """Cost of each ``name -> config`` on ``device``, measured side by side: ``{"entries": {name:
    {"params_m", "gflops", "ms_per_step", "peak_train_mb", "memory_method"}}, "setup": {...}}``.

    Time: every entry's :func:`training_step` (the trainer's own) built and stepped ``warmup`` times on
    the recipe's first batch, then ``reps`` rounds of one step each, the entries in rotating order
    (:func:`~visattn.profiling.interleaved_times`); the median per entry. The rounds run
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
        step = training_step(cfg, device)
        out[name]["params_m"] = sum(p.numel() for p in step.module.parameters()) / 1e6
        steps[name] = step_on(step, images, targets)
    log(f"cost: {warmup} warm-up and {reps} timed training steps per entry, interleaved, batch "
        f"{'x'.join(map(str, images.shape))}")
    times = interleaved_times(steps, reps, warmup)
    for name, ts in times.items():
        out[name]["ms_per_step"] = 1e3 * statistics.median(ts)
    setup = {"device": str(device), "threads": threads, "batch": list(images.shape), "eval_size": list(size),
             "warmup_steps": warmup, "timed_steps": reps}
    if device.type == "cuda":
        setup["gpu"] = torch.cuda.get_device_name(device)
    return {"entries": out, "setup": setup}


def measure_cost_once(path: str | os.PathLike, configs: dict[str, Config], device: torch.device,
                      log: Callable[[str], None] = print_progress) -> dict:
    """:func:`measure_cost`, or what it returned for the same measurement, kept in ``path``
    (cost.json) with what the figures depend on: each entry's config, the device, the machine (with
    torch's version and thread count) and visattn's version. Any difference measures every entry
    again, side by side (timings from different moments would not be comparable); so does a file
    that is not such a record, named in the log."""
    path = Path(path)
    digests = {name: hashlib.sha256(dump_config(cfg).encode()).hexdigest() for name, cfg in configs.items()}
    conditions = {"configs": digests, "device": str(device), "machine": machine_info(), "visattn": __version__}
    if path.is_file():
        try:
            saved = read_json(path)
        except ValueError as err:
            saved = None
            log(f"cost: {err}; measuring again")
        if isinstance(saved, dict) and saved.get("conditions") == conditions:
            problem = _cost_problem(saved.get("cost"), list(configs))
            if problem is None:
                log(f"cost: measured before, read from {path}")
                return saved["cost"]
            log(f"cost: {path} is not a cost record ({problem}); measuring again")
    cost = measure_cost(configs, device, log=log)
    record = json.dumps({"conditions": conditions, "cost": cost}, indent=1)
    atomic_write(path, lambda tmp: Path(tmp).write_text(record))
    return cost


def _cost_problem(cost: object, names: list[str]) -> str | None:
    """What makes ``cost`` other than :func:`measure_cost`'s result for the entries ``names``."""
    def number(value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if not (isinstance(cost, dict) and isinstance(cost.get("entries"), dict) and isinstance(cost.get("setup"), dict)):
        return "not a mapping of 'entries' and 'setup'"
    if sorted(cost["entries"]) != sorted(names):
        return "other entries"
    for name, row in cost["entries"].items():
        if not isinstance(row, dict) or not all(number(row.get(k)) for k in ("params_m", "gflops", "ms_per_step")):
            return f"entry {name!r} lacks a number of params_m, gflops or ms_per_step"
        if row.get("peak_train_mb") is not None and not number(row["peak_train_mb"]):
            return f"entry {name!r}: peak_train_mb is not a number"
    setup = cost["setup"]
    if not all(isinstance(setup.get(k), list) for k in ("batch", "eval_size")) or not all(
            number(setup.get(k)) for k in ("threads", "warmup_steps", "timed_steps")):
        return "'setup' lacks batch, eval_size, threads, warmup_steps or timed_steps"
    return None
