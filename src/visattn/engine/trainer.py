"""The training loop: SGD (the papers') or AdamW, poly LR with warm-up, weighted multi-output
losses, AMP, gradient accumulation, DDP, checkpoints that resume exactly, and a run directory that
keeps everything (:class:`~visattn.engine.run_dir.RunDir`).

Switches (``train.*``):

- ``clip_grad``: the gradients of a step (all of them together, after accumulation, and unscaled
  under fp16 AMP) are scaled down to this norm when above it, before the update; the train log's
  ``grad_norm`` is the mean norm before clipping since the previous log line.
- ``ema``: an exponential moving average of the weights (:mod:`visattn.engine.ema`), updated after
  every optimizer step. It is what the periodic and final evaluations measure and what
  best.safetensors and model.safetensors hold; the checkpoints keep both the trained weights
  (step_*.safetensors) and the average (``"ema"`` in step_*.state.pt).
- ``grad_checkpointing``: the encoder recomputes its activations in backward
  (:func:`~visattn.engine.build.enable_grad_checkpointing`).
- ``channels_last``: the model and the training batches in ``torch.channels_last`` memory format.
- ``compile``: the training forward and backward run through ``torch.compile``; if the first step
  fails compiled (no C compiler, an error raised by the compiler), one warning says why and the
  run trains eagerly from that step on. Evaluation and the saved weights use the uncompiled
  module, so no key carries ``_orig_mod.``.

``channels_last`` and ``compile`` change the floating-point summation order (not the math), and
``grad_checkpointing`` leaves the gradients as they are but updates the running statistics of the
recomputed BatchNorm layers a second time in backward. No checkpoint records these three: a
resumed run may switch them, and then differs from the uninterrupted run by as much.

:class:`Trainer` reads top-down: the constructor builds the data, the model and the
:class:`~visattn.engine.step.TrainingStep` that holds the optimizer, schedule and switches (or restores
them from a checkpoint); :meth:`Trainer.fit` loops over :meth:`Trainer.train_step`, logging,
:meth:`Trainer.evaluate` and :meth:`Trainer.checkpoint`.

Exact resume: the global batch of step ``t`` is a fixed slice of the epoch's permutation (seeded by
``seed`` and the epoch), each sample's augmentation is seeded by ``(seed, epoch, index)`` and the
global RNG is reseeded from ``(seed, rank, t)`` before every step (dropout). So the state of a run at
a step boundary is the weights + optimizer + scheduler (+ AMP scaler), all checkpointed, and a
resumed run replays the remaining steps bit for bit.

Stopping keeps that guarantee:

- SIGINT (Ctrl-C) and SIGTERM (which torchrun and schedulers send) only raise a flag; the loop looks
  at it at step boundaries (after the update, the evaluation and the periodic checkpoint), then saves
  a checkpoint of that step (unless it was just saved) and returns. Under DDP the flag is OR-ed over
  the processes in every step, so all of them stop after the same step.
- An evaluation looks at the flag between its batches too (one process; under DDP, whose processes
  hold different numbers of batches, it finishes first). Stopped in a periodic evaluation, the run
  checkpoints the step with its evaluation marked as due, and a resumed run evaluates it before its
  next step; stopped in the final evaluation, it returns as interrupted (``final`` weights written,
  no result), and a resumed run evaluates again. Either way the run is resumable.
- A second stop signal stops at once: it raises ``KeyboardInterrupt`` wherever the run is (the
  handling of errors below applies).
- SIGKILL at any moment: every file is written atomically and ``checkpoints/latest`` is updated last,
  so the latest checkpoint is always a complete step; at most the steps since it are lost.
- An error raised inside a step (out of memory, a ``KeyboardInterrupt`` raised by code) rolls the
  model's buffers (BatchNorm statistics) back to the step's start; the last completed step is then
  checkpointed unless the error came during the parameter update, and the error is re-raised (a
  ``KeyboardInterrupt`` returns as an interrupted run). A data loading error is agreed on by all
  processes before any state changes, so the main process saves it under DDP too.
- A non-finite loss raises :class:`NonFiniteLossError` before the update and saves nothing: the
  weights that produced it are not worth resuming, and the latest checkpoint stays the last good one.

The files of the training and validation sets are checked from their headers before the first step
(:mod:`visattn.data.validate`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm.auto import tqdm

from .._extras import MissingExtraError, require
from ..bounded import shorten
from ..data import build_dataset, dataset_info, dataset_spec
from ..data.inputs import collate_same_size, same_size_runs
from ..data.validate import bad_files_error, dataset_files, find_bad_files
from .build import build_model
from .class_weights import resolve_class_weights, save_class_weights
from .config import Config, ConfigError
from .distributed import DistInfo, cleanup_distributed, init_distributed, resolve_device
from .inference import segment_options
from .losses import LossTerms
from .metrics import evaluate as evaluate_model
from .metrics import PER_CLASS_KEYS, EvaluationStopped, format_table
from .precision import amp_dtype
from .run_dir import RunDir
from .step import TrainingStep

__all__ = ["train", "Trainer", "FIXED_ON_RESUME", "DATA_FREE_ON_RESUME", "NonFiniteLossError"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# train.* keys a resumed run must keep: the checkpoint restores the optimizer's hyperparameters, the
# learning-rate schedule and the weights' average, its step counts batches of this size, the seed
# orders the samples, and gradient clipping belongs to the update rule as the learning rate does;
# the loss (its terms, their weights, the class weights) is what the steps so far minimised.
FIXED_ON_RESUME = ("iters", "epochs", "batch_size", "seed", "optimizer", "lr", "momentum", "nesterov", "betas",
                   "weight_decay", "schedule", "power", "lr_steps", "lr_gamma", "warmup_iters", "warmup_factor",
                   "min_lr", "head_lr_mult", "clip_grad", "ema", "loss", "loss_weights", "class_weights",
                   "focal_gamma", "ohem", "ohem_thresh", "ohem_min_kept", "label_smoothing")
# data.* keys a resumed run may change: where the files lie and how many workers read them. The
# others (the dataset, its splits and classes, the augmentation) are what the steps so far learned
# from, and stay, as ``task`` does: config.yaml describes every step of the run.
DATA_FREE_ON_RESUME = ("root", "workers")


class NonFiniteLossError(FloatingPointError, ValueError):
    """The loss became NaN or infinite (also a ``ValueError``: a bad setting, reported without a traceback)."""


def train(cfg: Config, resume: str | os.PathLike | RunDir | None = None, quiet: bool = False, trust_code: bool = False,
          resume_config: Config | None = None) -> dict:
    """Train from a resolved config (see :mod:`visattn.engine.config`); ``resume``: a run directory,
    ``resume_config``: its config.yaml when the caller has read it already (else it is read here).

    Returns ``{"run_dir", "step", "total", "metrics", "best", "interrupted", "classes", "table"}``.
    Launched by ``torchrun`` (``WORLD_SIZE > 1``) it runs DDP; every process calls ``train`` with the
    same config. ``trust_code``: build a model named ``"module:builder"`` (importing it runs code).

    The run directory is locked while the run lasts (:meth:`RunDir.lock`); a new run starts only in
    a new or empty directory. A resumed run continues from the newest readable checkpoint, under
    the run's own length, batch size, optimizer and learning-rate schedule (the checkpoint restores
    them), seed, loss and data: a ``cfg`` that changes one of them (:data:`FIXED_ON_RESUME`, ``task``
    and the ``data`` keys but :data:`DATA_FREE_ON_RESUME`) raises ``ConfigError``, so config.yaml
    always describes the steps that ran. To train longer or differently, start a new run.
    """
    device = resolve_device(cfg.train.device, int(os.environ.get("LOCAL_RANK", "0")))
    info = init_distributed(device)
    try:
        with Trainer(cfg, device, info, resume, quiet, trust_code, resume_config) as trainer:
            return trainer.fit()
    finally:
        cleanup_distributed(info)


class Trainer:
    """One training run of ``cfg`` on ``device`` as process ``info`` of a (possibly single-process) group.
    It holds the run directory's lock from the end of construction until :meth:`close` (or the end
    of a ``with`` block)."""

    def __init__(self, cfg: Config, device: torch.device, info: DistInfo = DistInfo(),
                 resume: str | os.PathLike | RunDir | None = None, quiet: bool = False, trust_code: bool = False,
                 resume_config: Config | None = None) -> None:
        self.cfg, self.device, self.info, self.quiet, self.seed = cfg, device, info, quiet, int(cfg.train.seed)
        self._check_setting()
        self.resumed = resume is not None
        self.run = self._resumable_run_dir(resume, resume_config) if self.resumed else self._new_run_dir()
        self._build_datasets()
        self._plan_steps()
        self.training_step = self._build_training_step(trust_code)
        self.module = self.training_step.module  # the bare network, whose weights the checkpoints hold
        self.ema = self.training_step.ema
        self.step, self.best = 0, -math.inf
        self._evaluation_due = False  # the current step's periodic evaluation has not completed
        self._signal = None  # the stop signal received, if any (while fit runs)
        if self.resumed:
            self._restore()
            self._logged = [r for r in self.run.read_metrics() if r["step"] <= self.step]  # read before writing
        self.training_step.wrap_model(self._distributed if info.enabled else None)
        self._build_loaders()
        self.segment_options = segment_options(cfg) if cfg.task == "segmentation" else {}
        self.key_metric = "mIoU" if cfg.task == "segmentation" else "top1"
        self._claim_run_dir()  # last: a failed start leaves nothing on disk

    def _check_setting(self) -> None:
        """The precision fits the device and the task the dataset; deterministic kernels if asked for."""
        self.amp = amp_dtype(self.cfg.train.amp, self.device)
        if dataset_spec(self.cfg.data.dataset).task != self.cfg.task:
            raise ValueError(f"task {self.cfg.task!r} does not match dataset {self.cfg.data.dataset!r}")
        if self.cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

    def _build_datasets(self) -> None:
        """The training and validation sets, their files checked, and the class names."""
        data = self.cfg.data
        self.train_set = build_dataset(data, data.train_split, train=True, seed=self.seed)
        self.val_set = build_dataset(data, data.val_split, train=False, seed=self.seed)
        self._check_files()
        self.classes, _ = dataset_info(self.train_set)

    def _plan_steps(self) -> None:
        """Each process's micro-batch, the steps per epoch and the run's length in steps."""
        t, world_size = self.cfg.train, self.info.world_size
        global_batch, self.accum = int(t.batch_size), int(t.accum_steps)
        if global_batch % (world_size * self.accum):
            raise ValueError(f"train.batch_size={global_batch} must be divisible by processes x accum_steps "
                             f"= {world_size} x {self.accum}")
        self.micro_batch = global_batch // (world_size * self.accum)
        self.iters_per_epoch = len(self.train_set) // global_batch
        if self.iters_per_epoch == 0:
            raise ValueError(f"the training set ({len(self.train_set)} items) is smaller than one batch ({global_batch})")
        self.total = int(t.epochs) * self.iters_per_epoch if t.epochs else int(t.iters)

    def _build_training_step(self, trust_code: bool) -> TrainingStep:
        """The model (the same initial weights in every process), the loss with its class weights,
        and the optimizer, schedule and switches around them."""
        cfg, t = self.cfg, self.cfg.train
        torch.manual_seed(self.seed)
        model = build_model(cfg.model, len(self.classes), trust_code=trust_code,
                            origin=str(self.run.config) if self.resumed else "the config").to(self.device)
        if self.info.is_main and not self.quiet:  # what was built, whatever the config's arguments meant
            print(f"model {cfg.model.name}: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
        class_weights, self._new_class_weights = resolve_class_weights(
            t.class_weights, self.train_set, self.classes, self.run.class_weights if self.resumed else None, self.info,
            self.device, self.quiet)
        self.criterion = LossTerms.from_config(t, class_weights, self.device)
        return TrainingStep(model, t, self.criterion, self.device, cfg.model.name, self.total, self.iters_per_epoch,
                            warn_on_fallback=self.info.is_main)

    def _build_loaders(self) -> None:
        """The training batches (this process's shard of each global batch) and the validation batches."""
        data, info = self.cfg.data, self.info
        self.sampler = _ShardSampler(self.train_set, info, self.seed, self.iters_per_epoch * self.micro_batch * self.accum)
        self.loader = DataLoader(self.train_set, batch_size=self.micro_batch, sampler=self.sampler,
                                 num_workers=data.workers, drop_last=True, pin_memory=self.device.type == "cuda",
                                 generator=torch.Generator(), worker_init_fn=_ignore_stop_signals)
        self.val_loader = DataLoader(Subset(self.val_set, range(info.rank, len(self.val_set), info.world_size)),
                                     batch_size=self.cfg.eval.batch_size, num_workers=data.workers,
                                     collate_fn=collate_same_size, worker_init_fn=_ignore_stop_signals)

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the run directory's lock."""
        self._held.close()

    def _new_run_dir(self) -> RunDir:
        run = RunDir.new(self.cfg)
        if self.info.enabled:  # every process writes to rank 0's directory (its name holds the time)
            box = [str(run)]
            dist.broadcast_object_list(box, src=0)
            run = RunDir(box[0])
        return run

    def _claim_run_dir(self) -> None:
        """Rank 0 locks the run directory, refuses a non-empty one for a new run and writes
        config.yaml; every process raises rank 0's refusal."""
        self._held, error = contextlib.ExitStack(), None
        if self.info.is_main:
            try:
                self._held.enter_context(self.run.lock())
                if not self.resumed:
                    self.run.ensure_empty()
                ran = dataclasses.replace(self.cfg, run=dataclasses.replace(self.cfg.run, dir=str(self.run)))
                self.run.write_config(ran)
                if self._new_class_weights is not None:
                    save_class_weights(self.run.class_weights, self._new_class_weights)
            except OSError as err:
                self._held.close()
                error = err
        if self.info.enabled:
            box = [error]
            dist.broadcast_object_list(box, src=0)
            error = box[0]
        if error is not None:
            raise error

    def _resumable_run_dir(self, resume: str | os.PathLike | RunDir, saved: Config | None) -> RunDir:
        """The run directory to resume, after checking that the config keeps every key of
        :data:`FIXED_ON_RESUME` of its config.yaml (``saved``, read here if not given); else ``ConfigError``."""
        run = resume if isinstance(resume, RunDir) else RunDir(resume)
        self._check_resumable(run, saved if saved is not None else run.load_config())
        return run

    def _check_resumable(self, run: RunDir, saved: Config) -> None:
        """Raise ``ConfigError`` if the config changes a key of ``saved`` that a resumed run keeps
        (:data:`FIXED_ON_RESUME`, ``task``, ``data`` but :data:`DATA_FREE_ON_RESUME`)."""
        given, kept = _dotted(self.cfg), _dotted(saved)
        fixed = ["task", *(f"train.{key}" for key in FIXED_ON_RESUME),
                 *(key for key in kept if key.startswith("data.") and key[5:] not in DATA_FREE_ON_RESUME)]
        changed = [f"{key}={shorten(given[key])} (the run's is {shorten(kept[key])})"
                   for key in fixed if given[key] != kept[key]]
        if changed:
            raise ConfigError(f"{', '.join(changed)}: a resumed run keeps the length, batch size, optimizer, "
                              f"learning-rate schedule, loss and data of {run.config} (the checkpoint restores the "
                              "schedule; config.yaml describes every step); to train longer or differently, "
                              "start a new run")

    def _restore(self) -> None:
        """The weights, the optimizer, schedule, scaler and average, the step and the RNG of the latest checkpoint."""
        name, weights, state = self.run.load_checkpoint()
        step = self.training_step
        try:
            self.module.load_state_dict(weights)
            step.optimizer.load_state_dict(state["optimizer"])
            step.scheduler.load_state_dict(state["scheduler"])
            step.scaler.load_state_dict(state["scaler"])
            self.step, self.best = int(state["step"]), float(state["best"])
            self._evaluation_due = bool(state.get("evaluation_due", False))
            if self.ema is not None:
                if "ema" not in state:
                    raise ValueError("it holds no weight average (train.ema)")
                self.ema.load_state_dict(state["ema"])
            if state["rng"]["world_size"] == self.info.world_size:
                torch.set_rng_state(state["rng"]["torch"][self.info.rank])
        except Exception as err:  # a checkpoint is input: report it, whatever it holds
            raise ValueError(f"checkpoint {name} in {self.run.checkpoints} does not fit this run: {err}") from err

    def _distributed(self, model: nn.Module) -> nn.Module:
        """``model`` wrapped in DDP (its BatchNorm layers synchronised with ``train.sync_bn`` on CUDA)."""
        if self.device.type == "cuda" and self.cfg.train.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda"
                                                   else None)

    def _check_files(self) -> None:
        """Every item of the training and validation sets opens and has its mask's size (file
        headers only; each process checks its share); a ``ValueError`` lists the bad files."""
        problems = []
        for split, dataset in ((self.cfg.data.train_split, self.train_set), (self.cfg.data.val_split, self.val_set)):
            files = dataset_files(dataset)[self.info.rank::self.info.world_size]
            problems += find_bad_files(files, f"check {split} files", quiet=self.quiet or not self.info.is_main)
        if self.info.enabled:
            shares = [None] * self.info.world_size
            dist.all_gather_object(shares, problems)
            problems = [p for share in shares for p in share]
        if problems:
            raise bad_files_error(problems)

    # -- the loop

    def fit(self) -> dict:
        """Train up to the last step (or a stop signal), save the final weights and evaluate them;
        see :func:`train`."""
        t, started = self.cfg.train, time.perf_counter()
        self.log = MetricsLog(self.run, self.info.is_main, (self.step, self._logged) if self.resumed else None)
        self.bar = tqdm(total=self.total, initial=self.step, desc="train", disable=self.quiet or not self.info.is_main,
                        dynamic_ncols=True)
        self._signal = None  # the stop signal received, if any
        self._stop_agreed = False  # under DDP: whether any process had received one in this step
        self._saved_step = self.step  # the newest checkpoint's step (0: nothing worth saving yet)
        previous_handlers = self._catch_stop_signals()
        metrics, interrupted = {}, False
        self._losses, self._grad_norms, self._since = [], [], time.perf_counter()
        try:
            self.training_step.model.train()
            if self._evaluation_due and self.step < self.total:  # stopped during this step's evaluation
                metrics = self._periodic_evaluation()
            batches = None
            while self.step < self.total and not interrupted:
                if batches is None:
                    batches = self._epoch_batches()
                terms, lr = self.train_step(batches)
                if self.step % self.iters_per_epoch == 0:
                    batches = None
                self.bar.update(1)
                if self.step % t.log_every == 0 or self.step == self.total:
                    self._log_training(terms, lr)
                if t.eval_every and self.step % t.eval_every == 0 and self.step < self.total:
                    metrics = self._periodic_evaluation()
                if self.step % t.ckpt_every == 0 or self.step == self.total:
                    self.checkpoint()
                interrupted = self._stop_requested()
            self.bar.close()
            if interrupted:
                if self._saved_step != self.step:
                    self.checkpoint()
                self._report_stop(self._stop_reason())
            else:
                if self.info.is_main:
                    self.run.save_final(self.released_module)
                metrics = self.evaluate()
                (interrupted,) = self._any_process(self._signal is not None)  # a signal during its last batch
                if interrupted:
                    metrics = {}
                    self._report_stop(self._stop_reason("in the final evaluation"))
                elif self.info.is_main:
                    self.run.save_final_metrics(self._final_record(metrics, time.perf_counter() - started))
        except EvaluationStopped:
            self.bar.close()
            interrupted, metrics = True, {}
            if self._saved_step != self.step:
                self.checkpoint()  # with the evaluation due
            where = "in the final evaluation" if self.step == self.total else f"in the evaluation of step {self.step}"
            self._report_stop(self._stop_reason(where))
        except NonFiniteLossError:
            self.bar.close()
            self._report_stop("stopped: the loss is not finite")
            raise
        except (Exception, KeyboardInterrupt) as err:
            self.bar.close()
            self._checkpoint_after_error("interrupted" if isinstance(err, KeyboardInterrupt) else "stopped by an error")
            if not isinstance(err, KeyboardInterrupt):
                raise
            interrupted = True
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            self.log.close()
        return {"run_dir": self.run.path, "step": self.step, "total": self.total, "metrics": metrics, "best": self.best,
                "interrupted": interrupted, "classes": self.classes,
                "table": format_table(metrics, self.classes) if metrics else ""}

    def _final_record(self, metrics: dict, seconds: float) -> dict:
        """What :meth:`RunDir.save_final_metrics` keeps of the complete run: ``seconds`` of training
        in this process (since the resumed checkpoint, if any), under ``threads`` torch threads."""
        return {"step": self.step, "total": self.total, "seconds": seconds, "resumed": self.resumed,
                "threads": torch.get_num_threads(), "classes": list(self.classes), "metrics": metrics}

    def _catch_stop_signals(self) -> dict:
        """Make SIGINT and SIGTERM raise the stop flag, and a second one raise ``KeyboardInterrupt``
        (only possible on the main thread); returns the handlers to restore."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum, frame):
            if self._signal is not None:
                raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopped at once")
            self._signal = signum

        return {signum: signal.signal(signum, request_stop) for signum in STOP_SIGNALS}

    def _stop_reason(self, where: str = "") -> str:
        how = (f"stopped by {signal.Signals(self._signal).name}" if self._signal
               else "stopped by a signal to another process")
        return f"{how} {where}" if where else how

    def _stop_requested(self) -> bool:
        return self._stop_agreed if self.info.enabled else self._signal is not None

    def _epoch_batches(self) -> Iterator:
        """The batches of the current epoch from the current step on."""
        epoch, skip = divmod(self.step, self.iters_per_epoch)
        self.sampler.set_epoch(epoch)
        self.sampler.start = skip * self.micro_batch * self.accum
        self.train_set.set_epoch(epoch)
        return iter(self.loader)

    def train_step(self, batches: Iterator) -> tuple[dict[str, Tensor], float]:
        """One optimizer step (:meth:`TrainingStep.run <visattn.engine.step.TrainingStep.run>`) over the
        next ``accum_steps`` micro-batches, the global RNG seeded for this step and process; returns
        the last micro-batch's loss terms and the learning rate the step used."""
        seed = (self.seed * 1_000_003 + self.info.rank) * 10_000_019 + self.step
        torch.manual_seed(seed)
        micro_batches = self._next_micro_batches(batches)
        result = self.training_step.run(micro_batches, self._check_losses, no_sync=self.info.enabled, seed=seed)
        self.step += 1
        if result.grad_norm is not None:
            self._grad_norms.append(result.grad_norm)
        self._losses += result.losses
        return result.terms, result.lr

    def _check_losses(self, losses: list[Tensor]) -> None:
        """Between backward and update: agree with the other processes on a stop signal and on a
        non-finite loss, which raises :class:`NonFiniteLossError` (buffers rolled back)."""
        # checked after backward (gradients are not applied yet) so that DDP processes stay in step:
        # one whose loss is NaN still joins the gradient all-reduce, then every process learns of it here
        non_finite, self._stop_agreed = self._any_process(not bool(torch.stack(losses).isfinite().all()),
                                                          self._signal is not None)
        if non_finite:
            self.training_step.restore_buffers()
            raise NonFiniteLossError(f"the loss is not finite at step {self.step + 1} "
                                     f"({', '.join(f'{float(x):g}' for x in losses)}); lower train.lr or disable AMP")

    def _next_micro_batches(self, batches: Iterator) -> list:
        """The step's ``accum_steps`` micro-batches, read before anything changes. A reading error
        stops every process (each learns of it in an all-reduce), so the main one can save the step."""
        error = None
        try:
            micro_batches = [next(batches) for _ in range(self.accum)]
        except Exception as err:  # re-raised below, once the other processes know
            error = err
        (failed,) = self._any_process(error is not None)
        if error is not None:
            raise error
        if failed:
            raise ValueError(f"another process failed to read its data for step {self.step + 1} (see its error)")
        return micro_batches

    def _any_process(self, *flags: bool) -> list[bool]:
        """Each flag OR-ed over the processes (one all-reduce under DDP, which every process must call)."""
        if not self.info.enabled:
            return list(flags)
        status = torch.tensor([float(f) for f in flags], device=self.device)
        dist.all_reduce(status, op=dist.ReduceOp.MAX)
        return [bool(v) for v in status.tolist()]

    def _log_training(self, terms: dict[str, Tensor], lr: float) -> None:
        """Mean loss since the last log line, the last terms, the learning rate, the time per step and,
        with ``train.clip_grad``, the mean gradient norm before clipping."""
        mean_loss = float(torch.stack(self._losses).mean())
        grad_norm = {"grad_norm": float(torch.stack(self._grad_norms).mean())} if self._grad_norms else {}
        self.log.write({"step": self.step, "epoch": self.step / self.iters_per_epoch, "lr": lr, "loss": mean_loss,
                        **{f"loss_{k}": float(v) for k, v in terms.items()}, **grad_norm,
                        "sec_per_step": (time.perf_counter() - self._since) / len(self._losses) * self.accum}, "train")
        self.bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}")
        self._losses, self._grad_norms, self._since = [], [], time.perf_counter()

    @property
    def released_module(self) -> nn.Module:
        """The weights evaluated and saved as best and final: the average with ``train.ema``, else the trained ones."""
        return self.module if self.ema is None else self.ema.module

    def _periodic_evaluation(self) -> dict:
        """:meth:`evaluate` at a step boundary (while it runs, the step's checkpoint records it as due)."""
        self._evaluation_due = True
        metrics = self.evaluate()
        self._evaluation_due = False
        if self.info.is_main:
            self.bar.write(f"step {self.step}: {self.key_metric} {100 * metrics[self.key_metric]:.2f}")
        return metrics

    def evaluate(self) -> dict:
        """Metrics of :attr:`released_module` on the validation set (shared out over the processes);
        logged, and the best weights kept. With one process, a stop signal ends it between batches
        (:class:`~visattn.engine.metrics.EvaluationStopped`)."""
        stop = None if self.info.enabled else (lambda: self._signal is not None)
        batches = same_size_runs(self.val_loader)
        metrics = evaluate_model(self.released_module, batches, len(self.classes), self.cfg.task, self.device,
                                 self.amp, stop=stop, **self.segment_options)
        if self.info.is_main:
            self.log.write({"step": self.step, **{k: v for k, v in metrics.items() if k not in PER_CLASS_KEYS}}, "val")
            if metrics[self.key_metric] > self.best:
                self.best = metrics[self.key_metric]
                self.run.save_best(self.released_module, {"step": self.step, **metrics})
        return metrics

    # -- checkpoints

    def training_state(self, gather: bool = True) -> dict:
        """Everything but the weights that the next step depends on (with ``train.ema``, the
        average's state dict as ``"ema"``). ``gather``: every process's RNG state (a collective:
        all processes call it), else this process's alone."""
        rng = [torch.get_rng_state()]
        if gather and self.info.enabled:
            rng = [None] * self.info.world_size
            dist.all_gather_object(rng, torch.get_rng_state())
        ema = {} if self.ema is None else {"ema": self.ema.state_dict()}
        step = self.training_step
        return {"step": self.step, "optimizer": step.optimizer.state_dict(), "scheduler": step.scheduler.state_dict(),
                "scaler": step.scaler.state_dict(), "best": self.best, "seed": self.seed,
                "evaluation_due": self._evaluation_due,
                "rng": {"torch": rng, "world_size": len(rng)}, **ema}

    def checkpoint(self, gather: bool = True) -> None:
        """Save the weights and the training state of the current step (every process calls it,
        unless not ``gather``: then the main process alone, with its own RNG state)."""
        state = self.training_state(gather)
        if self.info.is_main:
            self.run.save_checkpoint(self.step, self.module, state, self.cfg.train.keep_ckpts)
        self._saved_step = self.step

    def _checkpoint_after_error(self, why: str) -> None:
        """Save the last completed step after an error, unless it is on disk already or the error
        came during the parameter update (whose half-applied state cannot be undone)."""
        if self.training_step.updating:
            self._report_stop(f"{why} during the update of step {self.step + 1}")
            return
        self.training_step.restore_buffers()
        if self._saved_step != self.step:
            try:
                self.checkpoint(gather=False)  # no collectives: the other processes may be gone
            except Exception as err:  # the error that stopped the run is the one to raise
                why = f"{why}; saving step {self.step} failed too ({err})"
        self._report_stop(why)

    def _report_stop(self, why: str) -> None:
        """Tell where the run stopped and how to continue it (main process)."""
        if not self.info.is_main:
            return
        latest = self.run.latest_checkpoint()
        how = f"latest checkpoint {latest}; continue with `visattn train --resume {self.run}`" if latest else \
            "no checkpoint yet"
        print(f"\n{why} after step {self.step}/{self.total}; {how}", file=sys.stderr, flush=True)


class MetricsLog:
    """metrics.jsonl (one line per record, on the disk before the run goes on:
    :meth:`RunDir.append_metrics`) + TensorBoard (when installed: one warning otherwise), written by
    rank 0 only. A resumed run (``resumed``: its checkpoint's step and the records logged up to it)
    first rewrites metrics.jsonl to those records, dropping what was logged after the checkpoint."""

    def __init__(self, run: RunDir, enabled: bool, resumed: tuple[int, list[dict]] | None) -> None:
        self.enabled, self.run, self.writer = enabled, run, None
        if not enabled:
            return
        resume_step = None
        if resumed is not None:
            resume_step, kept = resumed
            run.rewrite_metrics(kept)
        try:
            require("tensorboard", extra="tensorboard")
        except MissingExtraError as err:
            warnings.warn(f"no TensorBoard events ({err}); metrics go to {run.metrics.name} only", stacklevel=2)
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run.tensorboard), purge_step=resume_step)

    def write(self, record: dict, prefix: str) -> None:
        if not self.enabled:
            return
        self.run.append_metrics(record)
        if self.writer is None:
            return
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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


def _dotted(section: object, prefix: str = "") -> dict:
    """Every value of a config (or section) by its dotted key (``data.digits.size``)."""
    out = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        out.update(_dotted(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value)
                   else {prefix + f.name: value})
    return out


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGINT/SIGTERM (a Ctrl-C reaches the whole process group) to the
    training process, which stops them at a step boundary."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
