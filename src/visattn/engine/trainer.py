"""The training loop: SGD (the papers') or AdamW, poly LR with warm-up, weighted multi-output
losses, AMP, gradient accumulation, DDP, checkpoints that resume exactly, and a run directory that
keeps everything.

Run directory::

    config.yaml            the resolved configuration (re-read by --resume, eval and predict)
    metrics.jsonl          one JSON line per log step and per evaluation
    tb/                    TensorBoard events
    checkpoints/           step_XXXXXXX.safetensors (weights) + step_XXXXXXX.state.pt (optimizer,
                           scheduler, step, RNG states; torch.save, loadable with weights_only=True)
                           and ``latest`` naming the newest complete pair
    best.safetensors       weights with the best validation mIoU (top-1 for classification)
    best.json              that evaluation's metrics and step
    model.safetensors      the final weights

Exact resume: the global batch of step ``t`` is a fixed slice of the epoch's permutation (seeded by
``seed`` and the epoch), each sample's augmentation is seeded by ``(seed, epoch, index)`` and the
global RNG is reseeded from ``(seed, rank, t)`` before every step (dropout). So the state of a run at
a step boundary is the weights + optimizer + scheduler (+ AMP scaler), all checkpointed, and a
resumed run replays the remaining steps bit for bit. Ctrl-C (or SIGTERM, which torchrun sends)
stops at the next step boundary of the update, saves a checkpoint and returns.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ..data import CLASSIFICATION_DATASETS, build_dataset, dataset_info
from ..weights import atomic_write, read_state_dict, save_state_dict
from .config import dump_config
from .distributed import DistInfo, cleanup_distributed, init_distributed, resolve_device
from .evaluate import evaluate, format_table
from .losses import weighted_loss

__all__ = ["train", "build_model", "LRSchedule", "load_checkpoint", "latest_checkpoint", "AMP_DTYPES"]

AMP_DTYPES = {None: None, "none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class LRSchedule:
    """LR factor at step ``t``: ``(1 - t / total) ** power`` (poly, the segmentation papers'), or
    ``gamma ** (number of milestones <= t)`` (step, the ImageNet papers'); never below
    ``min_factor``; times a linear warm-up from ``warmup_factor`` to 1 over ``warmup_iters`` steps."""

    def __init__(self, total: int, power: float = 0.9, warmup_iters: int = 0, warmup_factor: float = 0.1,
                 min_factor: float = 0.0, milestones: list[int] | None = None, gamma: float = 0.1) -> None:
        self.total, self.power, self.warmup_iters = total, power, warmup_iters
        self.warmup_factor, self.min_factor = warmup_factor, min_factor
        self.milestones, self.gamma = sorted(milestones) if milestones else None, gamma

    def __call__(self, step: int) -> float:
        if self.milestones is not None:
            factor = self.gamma ** sum(step >= m for m in self.milestones)
        else:
            factor = (1 - min(step, self.total) / self.total) ** self.power
        factor = max(factor, self.min_factor)
        if step < self.warmup_iters:
            factor *= self.warmup_factor + (1 - self.warmup_factor) * step / self.warmup_iters
        return factor


class _ShardSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled per epoch, tail dropped) that yields ``length`` indices
    starting at ``start``, so a resumed epoch skips the batches already trained on."""

    def __init__(self, dataset: Dataset, info: DistInfo, seed: int, length: int) -> None:
        super().__init__(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed, drop_last=True)
        self.length, self.start = length, 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:self.length])

    def __len__(self) -> int:
        return self.length - self.start


def build_model(cfg: Mapping[str, Any], num_classes: int) -> nn.Module:
    """The model of config section ``cfg`` (``model``): a registered name or ``"module:builder"``."""
    name, kwargs = cfg["name"], dict(cfg.get("kwargs") or {})
    if ":" in name:
        module, fn = name.split(":", 1)
        return getattr(importlib.import_module(module), fn)(num_classes=num_classes, **kwargs)
    from ..models import create_model

    return create_model(name, num_classes=num_classes, pretrained=cfg.get("pretrained", False), **kwargs)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """Path prefix (without suffix) of the newest complete checkpoint of ``run_dir``."""
    pointer = run_dir / "checkpoints" / "latest"
    return run_dir / "checkpoints" / pointer.read_text().strip() if pointer.is_file() else None


def load_checkpoint(prefix: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Weights and training state of a checkpoint (both read without unpickling code)."""
    weights = read_state_dict(prefix.with_name(prefix.name + ".safetensors"))
    state = torch.load(prefix.with_name(prefix.name + ".state.pt"), map_location="cpu", weights_only=True)
    return weights, state


def _save_checkpoint(run_dir: Path, step: int, model: nn.Module, state: dict, keep: int) -> Path:
    ckpt = run_dir / "checkpoints"
    name = f"step_{step:07d}"
    save_state_dict(model.state_dict(), ckpt / f"{name}.safetensors")
    atomic_write(ckpt / f"{name}.state.pt", lambda tmp: torch.save(state, tmp))
    atomic_write(ckpt / "latest", lambda tmp: Path(tmp).write_text(name))  # the pair is complete
    old = sorted(p for p in ckpt.glob("step_*.safetensors") if p.name != f"{name}.safetensors")
    for path in old[: max(0, len(old) - (keep - 1))]:
        path.unlink(missing_ok=True)
        path.with_name(path.name.replace(".safetensors", ".state.pt")).unlink(missing_ok=True)
    return ckpt / name


@contextlib.contextmanager
def _defer_interrupt():
    """Hold SIGINT during the parameter update so a checkpoint never sees a half-applied step."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *a: received.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _raise_interrupt(*_):
    raise KeyboardInterrupt


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _run_dir(cfg: dict, info: DistInfo, resume: Path | None) -> Path:
    if resume is not None:
        return resume
    run = cfg["run"]
    if run["dir"]:
        path = Path(run["dir"])
    else:
        name = run["name"] or f"{cfg['model']['name'].split(':')[-1]}-{cfg['data']['dataset']}"
        path = Path(run["root"]) / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if info.enabled:  # every process must write to rank 0's directory
        box = [str(path)]
        dist.broadcast_object_list(box, src=0)
        path = Path(box[0])
    if latest_checkpoint(path) is not None:
        raise FileExistsError(f"run directory {path} already holds checkpoints; continue it with "
                              f"`visattn train --resume {path}` or choose another run.dir")
    return path


class _Log:
    """metrics.jsonl + TensorBoard on rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None) -> None:
        self.enabled, self.path, self.writer = enabled, run_dir / "metrics.jsonl", None
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():  # drop lines written after the checkpoint
            lines = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= resume_step]
            atomic_write(self.path, lambda tmp: Path(tmp).write_text("".join(ln + "\n" for ln in lines)))
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)

    def write(self, record: dict, prefix: str) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _optimizer(model: nn.Module, t: Mapping[str, Any]) -> torch.optim.Optimizer:
    mult = t["head_lr_mult"]
    if mult == 1:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    else:
        if not hasattr(model, "encoder"):
            raise ValueError("train.head_lr_mult needs a model with an `encoder` submodule")
        enc = {id(p) for p in model.encoder.parameters()}
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if id(p) in enc]},
                  {"params": [p for p in params if id(p) not in enc], "lr": t["lr"] * mult}]
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"],
                               nesterov=t["nesterov"])
    if t["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=t["lr"], betas=tuple(t["betas"]), weight_decay=t["weight_decay"])
    raise ValueError(f"train.optimizer must be 'sgd' or 'adamw', got {t['optimizer']!r}")


def train(cfg: dict, resume: str | Path | None = None, quiet: bool = False) -> dict:
    """Train from a resolved config (see :mod:`visattn.engine.config`); ``resume``: a run directory.

    Returns ``{"run_dir", "step", "metrics", "best", "interrupted"}``. Launched by ``torchrun``
    (``WORLD_SIZE > 1``) it runs DDP; every process calls ``train`` with the same config.
    """
    t, task = cfg["train"], cfg["task"]
    device = resolve_device(t["device"], int(os.environ.get("LOCAL_RANK", "0")))
    if t["amp"] not in AMP_DTYPES:
        raise ValueError(f"train.amp must be null, bf16 or fp16, got {t['amp']!r}")
    amp = AMP_DTYPES[t["amp"]]
    if amp is torch.float16 and device.type != "cuda":
        raise ValueError("train.amp=fp16 needs CUDA; use bf16 on CPU")
    if (cfg["data"]["dataset"] in CLASSIFICATION_DATASETS) != (task == "classification"):
        raise ValueError(f"task {task!r} does not match dataset {cfg['data']['dataset']!r}")
    info = init_distributed(device)
    log = None
    try:
        if t["deterministic"]:
            torch.use_deterministic_algorithms(True, warn_only=True)
        resume = Path(resume) if resume is not None else None
        run_dir = _run_dir(cfg, info, resume)
        seed = int(t["seed"])

        train_ds = build_dataset(cfg["data"], cfg["data"]["train_split"], train=True, seed=seed)
        val_ds = build_dataset(cfg["data"], cfg["data"]["val_split"], train=False, seed=seed)
        classes, _ = dataset_info(train_ds)
        num_classes = len(classes)
        global_batch, accum = int(t["batch_size"]), int(t["accum_steps"])
        if global_batch % (info.world_size * accum):
            raise ValueError(f"train.batch_size={global_batch} must be divisible by processes x accum_steps "
                             f"= {info.world_size} x {accum}")
        micro = global_batch // (info.world_size * accum)
        iters_per_epoch = len(train_ds) // global_batch
        if iters_per_epoch == 0:
            raise ValueError(f"the training set ({len(train_ds)} items) is smaller than one batch ({global_batch})")
        total = int(t["epochs"]) * iters_per_epoch if t["epochs"] else int(t["iters"])

        torch.manual_seed(seed)  # identical initial weights in every process
        model = build_model(cfg["model"], num_classes).to(device)
        weights = dict(t["loss_weights"] or getattr(model, "loss_weights", None) or {"out": 1.0})
        optimizer = _optimizer(model, t)
        if t["schedule"] not in ("poly", "step"):
            raise ValueError(f"train.schedule must be 'poly' or 'step', got {t['schedule']!r}")
        # step milestones count epochs in epoch-based runs, else steps
        milestones = [int(m) * (iters_per_epoch if t["epochs"] else 1) for m in t["lr_steps"]] \
            if t["schedule"] == "step" else None
        schedule = LRSchedule(total, t["power"], t["warmup_iters"], t["warmup_factor"], t["min_lr"] / t["lr"],
                              milestones, t["lr_gamma"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
        step, best = 0, -math.inf
        if resume is not None:
            prefix = latest_checkpoint(run_dir)
            if prefix is None:
                raise FileNotFoundError(f"no checkpoint to resume in {run_dir}/checkpoints")
            state_dict, state = load_checkpoint(prefix)
            model.load_state_dict(state_dict)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            step, best = int(state["step"]), float(state["best"])
            if state["rng"]["world_size"] == info.world_size:
                torch.set_rng_state(state["rng"]["torch"][info.rank])

        if info.enabled:
            if device.type == "cuda" and t["sync_bn"]:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            resolved = dict(cfg, run=dict(cfg["run"], dir=str(run_dir)))
            atomic_write(run_dir / "config.yaml", lambda tmp: Path(tmp).write_text(dump_config(resolved)))
        log = _Log(run_dir, info.is_main, step if resume is not None else None)

        sampler = _ShardSampler(train_ds, info, seed, iters_per_epoch * micro * accum)
        loader = DataLoader(train_ds, batch_size=micro, sampler=sampler, num_workers=cfg["data"]["workers"],
                            drop_last=True, pin_memory=device.type == "cuda", generator=torch.Generator())
        val_loader = DataLoader(Subset(val_ds, range(info.rank, len(val_ds), info.world_size)),
                                batch_size=cfg["eval"]["batch_size"], num_workers=cfg["data"]["workers"])
        e = cfg["eval"]
        seg_kwargs = {} if task != "segmentation" else dict(
            scales=e["scales"], flip=e["flip"], mode=e["mode"],
            crop=e["crop_size"] or cfg["data"]["crop_size"], stride=e["stride"])
        key_metric = "mIoU" if task == "segmentation" else "top1"

        def checkpoint_state() -> dict:
            rng = [torch.get_rng_state()]
            if info.enabled:
                rng = [None] * info.world_size
                dist.all_gather_object(rng, torch.get_rng_state())
            return {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "best": best, "seed": seed,
                    "rng": {"torch": rng, "world_size": info.world_size}}

        def run_eval() -> dict:
            nonlocal best
            metrics = evaluate(_unwrap(model), val_loader, num_classes, task, device, amp, **seg_kwargs)
            if info.is_main:
                log.write({"step": step, **{k: v for k, v in metrics.items() if k != "per_class_iou"}}, "val")
                if metrics[key_metric] > best:
                    best = metrics[key_metric]
                    save_state_dict(_unwrap(model).state_dict(), run_dir / "best.safetensors")
                    atomic_write(run_dir / "best.json",
                                 lambda tmp: Path(tmp).write_text(json.dumps({"step": step, **metrics}, indent=1)))
            return metrics

        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, desc="train", disable=quiet or not info.is_main, dynamic_ncols=True)
        previous_term = signal.signal(signal.SIGTERM, _raise_interrupt) if threading.current_thread() is threading.main_thread() else None
        metrics: dict = {}
        interrupted = False
        model.train()
        data_iter, running, t0 = None, [], time.perf_counter()
        try:
            while step < total:
                if data_iter is None:
                    epoch, skip = divmod(step, iters_per_epoch)
                    sampler.set_epoch(epoch)
                    sampler.start = skip * micro * accum
                    train_ds.set_epoch(epoch)
                    data_iter = iter(loader)
                torch.manual_seed((seed * 1_000_003 + info.rank) * 10_000_019 + step)
                optimizer.zero_grad(set_to_none=True)
                for a in range(accum):
                    image, target = next(data_iter)
                    image, target = image.to(device, non_blocking=True), target.to(device, non_blocking=True)
                    sync = model.no_sync() if info.enabled and a < accum - 1 else contextlib.nullcontext()
                    with sync:
                        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                            outputs = model(image)
                        loss, terms = weighted_loss(outputs, target, weights, t["ohem"], t["ohem_thresh"],
                                                    t["ohem_min_kept"], t["label_smoothing"])
                        scaler.scale(loss / accum).backward()
                    running.append(loss.detach())
                lr = optimizer.param_groups[0]["lr"]
                with _defer_interrupt():
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    step += 1
                if step % iters_per_epoch == 0:
                    data_iter = None
                bar.update(1)
                if step % t["log_every"] == 0 or step == total:
                    mean_loss = float(torch.stack(running).mean())
                    if not math.isfinite(mean_loss):
                        raise FloatingPointError(f"loss is {mean_loss} at step {step}; lower train.lr or disable AMP")
                    record = {"step": step, "epoch": step / iters_per_epoch, "lr": lr, "loss": mean_loss,
                              **{f"loss_{k}": float(v) for k, v in terms.items()},
                              "sec_per_step": (time.perf_counter() - t0) / len(running) * accum}
                    log.write(record, "train")
                    bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}")
                    running, t0 = [], time.perf_counter()
                if t["eval_every"] and step % t["eval_every"] == 0 and step < total:
                    metrics = run_eval()
                    if info.is_main:
                        bar.write(f"step {step}: {key_metric} {100 * metrics[key_metric]:.2f}")
                if step % t["ckpt_every"] == 0 or step == total:
                    state = checkpoint_state()
                    if info.is_main:
                        _save_checkpoint(run_dir, step, _unwrap(model), state, t["keep_ckpts"])
            bar.close()
            metrics = run_eval()
            if info.is_main:
                save_state_dict(_unwrap(model).state_dict(), run_dir / "model.safetensors")
        except KeyboardInterrupt:
            interrupted = True
            bar.close()
            if info.is_main:  # no collectives here: other processes may already be gone
                state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "scaler": scaler.state_dict(), "best": best, "seed": seed,
                         "rng": {"torch": [torch.get_rng_state()], "world_size": 1}}
                _save_checkpoint(run_dir, step, _unwrap(model), state, t["keep_ckpts"])
                print(f"\ninterrupted at step {step}/{total}; checkpoint saved. Continue with:\n"
                      f"  visattn train --resume {run_dir}", flush=True)
        finally:
            if previous_term is not None:
                signal.signal(signal.SIGTERM, previous_term)
        return {"run_dir": run_dir, "step": step, "total": total, "metrics": metrics, "best": best,
                "interrupted": interrupted, "classes": classes, "table": format_table(metrics, classes) if metrics else ""}
    finally:
        if log is not None:
            log.close()
        cleanup_distributed(info)
