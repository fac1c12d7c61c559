"""One optimizer step as ``train.*`` defines it, in one place: what :class:`~visattn.engine.trainer.Trainer`
trains with and what ``visattn compare`` times (:mod:`visattn.comparison.cost`).

A :class:`TrainingStep` holds the network, its optimizer (and learning-rate schedule), the AMP
dtype and gradient scaler, the loss, and the switches ``accum_steps``, ``clip_grad``, ``ema``,
``channels_last``, ``grad_checkpointing`` and ``compile``; :meth:`TrainingStep.run` takes the step's
micro-batches and does the forward and backward passes, the clipping, the update and the average.
What belongs to a run rather than to a step (the data, the RNG seed of each step, agreeing with
the other DDP processes, checkpoints) stays with the trainer, which hands :meth:`~TrainingStep.run`
a ``check`` to call between the backward passes and the update.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .build import build_optimizer, build_scheduler, enable_grad_checkpointing
from .config import TrainConfig
from .ema import create_ema
from .losses import LossTerms, output_weights, weighted_loss
from .precision import amp_dtype

__all__ = ["TrainingStep", "StepResult"]


@dataclass
class StepResult:
    """What a step leaves to log: the last micro-batch's loss terms, every micro-batch's loss, the
    learning rate the update used, and the gradient norm before clipping (``None`` without ``clip_grad``)."""

    terms: dict[str, Tensor]
    losses: list[Tensor]
    lr: float
    grad_norm: Tensor | None


class TrainingStep:
    """The optimizer step of ``train`` on ``module`` (the bare network, built and on ``device``).

    Construction applies the switches that change the network in place (``channels_last``,
    ``grad_checkpointing``; ``model_name`` names the model in the latter's error) and builds the
    optimizer, the gradient scaler, the EMA and, given ``total`` and ``iters_per_epoch``, the
    learning-rate schedule. ``warn_on_fallback``: warn when a compiled first step fails and the step
    trains eagerly (:meth:`run`). :meth:`wrap_model` then sets :attr:`model`, the network as it trains
    (wrapped, e.g. in DDP, then compiled with ``train.compile``); until then it is ``module``.
    """

    def __init__(self, module: nn.Module, train: TrainConfig, criterion: LossTerms, device: torch.device,
                 model_name: str = "model", total: int | None = None, iters_per_epoch: int | None = None,
                 warn_on_fallback: bool = True) -> None:
        self.module, self.model, self.device, self.criterion = module, module, device, criterion
        self.amp = amp_dtype(train.amp, device)
        self.accum, self.clip_grad = int(train.accum_steps), train.clip_grad
        self.loss_weights = output_weights(train, module)
        self.optimizer = build_optimizer(module, train)
        self.scheduler = None if total is None else build_scheduler(self.optimizer, train, total, iters_per_epoch)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp is torch.float16)
        self.memory_format = torch.channels_last if train.channels_last else torch.preserve_format
        if train.channels_last:
            module.to(memory_format=torch.channels_last)  # in place: the optimizer keeps the same parameters
        if train.grad_checkpointing:
            enable_grad_checkpointing(module, model_name)
        self.ema = create_ema(module, train.ema) if train.ema is not None else None
        self.compile = bool(train.compile)
        self.eager: nn.Module | None = None  # with compile: the uncompiled model, until the first step succeeds
        self.warn_on_fallback = warn_on_fallback
        self.updating = False  # True while the parameters are being changed (an error then leaves them half-updated)
        self._boundary_buffers: list[Tensor] | None = None

    def wrap_model(self, wrap: Callable[[nn.Module], nn.Module] | None = None) -> TrainingStep:
        """Set :attr:`model`: ``wrap(module)`` (or ``module``), compiled with ``train.compile``
        (the eager one is kept in case the first step fails compiled)."""
        model = self.module if wrap is None else wrap(self.module)
        self.eager = model if self.compile else None
        self.model = torch.compile(model) if self.compile else model
        return self

    def run(self, micro_batches: Sequence[tuple[Tensor, Tensor]], check: Callable[[list[Tensor]], None] | None = None,
            no_sync: bool = False, seed: int | None = None) -> StepResult:
        """One optimizer step over ``accum_steps`` micro-batches ``(images, targets)``: forward under
        autocast, backward of the weighted loss (scaled under fp16), ``check(losses)`` (which may
        raise to stop before the update), the gradients clipped to ``clip_grad``, the update, the
        schedule and the EMA. ``no_sync``: the model is DDP, whose all-reduce only the last
        micro-batch's backward needs.

        The first step of a compiled model that fails before the update runs again eagerly (the
        buffers rolled back, the global RNG seeded again with ``seed`` if given); if that succeeds
        the compiler was at fault: the step trains eagerly from then on and one warning names the
        compiler's error."""
        if self.eager is None:
            return self._run(micro_batches, check, no_sync)
        eager, self.eager = self.eager, None
        try:
            return self._run(micro_batches, check, no_sync)
        except Exception as compile_error:
            if self.updating:
                raise
            self.restore_buffers()
            if seed is not None:
                torch.manual_seed(seed)
            self.model = eager
            result = self._run(micro_batches, check, no_sync)
            if self.warn_on_fallback:
                reason = (str(compile_error).strip().splitlines() or [""])[0]
                warnings.warn(f"train.compile: torch.compile failed ({type(compile_error).__name__}: {reason}); "
                              "training without compiling", stacklevel=3)
            return result

    def _run(self, micro_batches: Sequence[tuple[Tensor, Tensor]], check: Callable[[list[Tensor]], None] | None,
             no_sync: bool) -> StepResult:
        self._boundary_buffers = [b.detach().clone() for b in self.module.buffers()]
        self.optimizer.zero_grad(set_to_none=True)
        losses, terms = [], {}
        for a, (image, target) in enumerate(micro_batches):
            image = image.to(self.device, non_blocking=True, memory_format=self.memory_format)
            target = target.to(self.device, non_blocking=True)
            last = a == len(micro_batches) - 1
            with self.model.no_sync() if no_sync and not last else contextlib.nullcontext():
                with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                    outputs = self.model(image)
                loss, terms = weighted_loss(outputs, target, self.loss_weights, self.criterion)
                self.scaler.scale(loss / self.accum).backward()
            losses.append(loss.detach())
        if check is not None:
            check(losses)
        grad_norm = None
        if self.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)  # the norm of the true gradients; scaler.step does not unscale twice
            grad_norm = nn.utils.clip_grad_norm_(self.module.parameters(), self.clip_grad).detach()
        lr = self.optimizer.param_groups[0]["lr"]
        self.updating = True
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.module)
        self.updating, self._boundary_buffers = False, None
        return StepResult(terms, losses, lr, grad_norm)

    def restore_buffers(self) -> None:
        """Undo what the forward passes of an unfinished step did to the buffers (BatchNorm statistics)."""
        if self._boundary_buffers is None:
            return
        with torch.no_grad():
            for buffer, saved in zip(self.module.buffers(), self._boundary_buffers):
                buffer.copy_(saved)
        self._boundary_buffers = None
