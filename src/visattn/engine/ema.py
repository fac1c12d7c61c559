"""An exponential moving average (EMA) of a model's weights, for evaluation and release.

Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging", SIAM J. Control Optim.
1992, with exponential weights as in Tarvainen & Valpola, "Mean teachers are better role models",
NeurIPS 2017, https://arxiv.org/abs/1703.01780. After optimizer step ``t`` (weights ``w_t``)::

    ema_1 = w_1        ema_t = decay * ema_(t-1) + (1 - decay) * w_t

over every parameter and floating-point buffer (BatchNorm's running statistics), so the averaged
network is evaluated as it is, without recomputing its statistics.

Built on :class:`torch.optim.swa_utils.AveragedModel` with
:func:`~torch.optim.swa_utils.get_ema_multi_avg_fn` (one fused ``lerp`` per device and dtype) and
``use_buffers=True``. Difference: integer buffers (BatchNorm's ``num_batches_tracked``) are copied
from the model rather than averaged, since PyTorch's function averages them in floating point and
truncates, which keeps the count at its first value. Its state dict (``n_averaged``, the steps
averaged so far, and ``module.<the model's keys>``) holds tensors only.
"""
from __future__ import annotations

from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["create_ema"]


def create_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA of ``model`` with ``decay`` in ``[0, 1)``, on the model's device; ``update_parameters(model)``
    after every optimizer step, its ``module`` is the averaged network (no gradients)."""
    if not 0 <= decay < 1:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay!r}")
    lerp = get_ema_multi_avg_fn(decay)

    def average(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        if averaged[0].is_floating_point():  # AveragedModel groups its tensors by dtype
            lerp(averaged, current, num_averaged)
        else:
            for a, c in zip(averaged, current):
                a.copy_(c)

    ema = AveragedModel(model, multi_avg_fn=average, use_buffers=True)
    ema.module.requires_grad_(False)
    return ema
