"""Measuring what a computation costs: FLOPs, time, peak memory. Shared by :mod:`visattn.benchmark`
(attention modules against their published code) and :mod:`visattn.comparison` (segmentors side by side).

- **FLOPs** (:func:`count_flops`): matmuls and convolutions of one forward call, counted with
  ``torch.utils.flop_counter`` (also on the ``meta`` device: no memory, no time).
- **time** (:func:`interleaved_times`): several calls warmed up, then timed in rotating order, so
  that every call sees the same load of the machine; ratios of such times are robust to that
  load, absolute times are not. On CUDA a call is timed by CUDA events around it (the GPU's
  time, queued work included), on the CPU by the wall clock.
- **peak memory** (:class:`PeakMemoryMeter`): CUDA's ``max_memory_allocated``, or the peak RSS of
  the process on CPU. A process whose CPU peak is measured runs best with :data:`MEMORY_ENV` in its
  environment (set it when starting the subprocess: the C library reads it at start).
"""
from __future__ import annotations

import gc
import resource
import sys
import time
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "timed", "interleaved_times", "PeakMemoryMeter", "MEMORY_ENV"]

# glibc raises its mmap threshold as large blocks are freed, after which freed blocks stay in the
# heap and count towards the RSS: which implementation looks bigger then depends on the order of
# its allocations (CCNet's head measured 327 vs 231 MB RSS with equal live-tensor peaks). A fixed
# threshold returns every block above 128 KiB to the system when it is freed, so the RSS peak is
# the peak of live memory. Other C libraries ignore the variable.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def count_flops(model: nn.Module, x: Tensor) -> int:
    """FLOPs of one forward call ``model(x)`` under ``no_grad`` (matmuls and convolutions)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def timed(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Seconds one call of ``fn`` takes: wall clock, or on a CUDA ``device`` the time between CUDA
    events recorded before and after it (after the device has finished earlier work)."""
    if torch.device(device).type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved_times(
    calls: Mapping[str, Callable[[], object]], reps: int, warmup: int = 0, device: torch.device | str = "cpu"
) -> dict[str, list[float]]:
    """Seconds of ``reps`` calls of each of ``calls`` (:func:`timed` on ``device``), after ``warmup``
    untimed rounds of all of them. Every round calls each once, starting one further down the list
    than the round before, so that none is always first (or always right after the same one)."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times: dict[str, list[float]] = {key: [] for key in calls}
    order = list(calls)
    for rep in range(reps):
        for key in order[rep % len(order):] + order[:rep % len(order)]:
            times[key].append(timed(calls[key], device))
    return times


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakMemoryMeter:
    """Peak memory from :meth:`start` on: CUDA ``max_memory_allocated``; CPU the peak RSS
    (``VmHWM`` after resetting it through ``/proc/self/clear_refs``; ``ru_maxrss`` of a fresh
    process without ``/proc``), both minus the memory in use at :meth:`start`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.method, self.base = "max_memory_allocated", torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method, self.base = "VmHWM", _status_kb("VmRSS") * 1024
        except OSError:
            self.method, self.base = "ru_maxrss", self._max_rss()

    def peak_mb(self) -> float:
        if self.method == "max_memory_allocated":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _status_kb("VmHWM") * 1024 if self.method == "VmHWM" else self._max_rss()
        return (peak - self.base) / 2**20

    @staticmethod
    def _max_rss() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
