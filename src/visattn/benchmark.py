"""Benchmarks of the visattn attention modules against the naive published formulations.

One implementation behind both ``visattn bench`` and ``benchmarks/run.py``, measuring through
:mod:`visattn.profiling`:

- **time**: naive and visattn built with the same weights in one process, warmed up, then timed
  alternately (``reps`` pairs, median of each), forward under ``no_grad`` or a training step
  (forward + backward of ``out.sum()``, input gradient included). Ratios from interleaved runs
  are robust to the machine's load; absolute times are not.
- **device**: ``Case.device`` (``cpu`` or ``cuda``). On CUDA, time is measured by CUDA events,
  peak memory in the same process as ``torch.cuda.max_memory_allocated`` (its mark reset before
  each case and implementation, the memory in use then subtracted), and the SDPA row is repeated
  with each fused-attention backend forced (``sdpa_flash``, ``sdpa_efficient``, ``sdpa_cudnn``,
  ``sdpa_math``); a backend that does not accept the inputs is reported as not applicable.
- **peak memory** (CPU): each (case, implementation) in its own subprocess; after a warm-up call at a
  tiny size (library initialisation), the kernel's peak-RSS mark is reset (``5`` written to
  ``/proc/self/clear_refs``), the call runs, and ``VmHWM - VmRSS(before)`` is reported. Where
  ``clear_refs`` is unavailable (non-Linux), ``ru_maxrss`` of the fresh process is used instead.
  The subprocess runs with glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_=131072``
  unless set), so that freed blocks leave the RSS and its peak is the peak of live memory.
- **FLOPs** of the naive published formulation are counted with ``torch.utils.flop_counter``
  (matmuls and convolutions, on the ``meta`` device) and divided by each implementation's time:
  GFLOP/s and the fraction of this machine's fp32 matmul peak (best of several 2048^3
  ``torch.mm``), measured in the same run, at its start and its end.

Naive baselines are the authors' code (:func:`visattn._official.counterparts`, one per attention
name); network cases (``danet_r50_d8``, ``ccnet_r50_d8``) swap every attention module that has an
official counterpart for it (inference only).
"""
from __future__ import annotations

import dataclasses
import functools
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from visattn._official import counterparts
from visattn.attention.factory import create_attention, get_attention_class
from visattn.models import create_model
from visattn.profiling import MEMORY_ENV, PeakMemoryMeter, count_flops, interleaved_times, timed

__all__ = ["non_trivial_", "Case", "NETWORKS", "MODULES", "matmul_peak", "run_cases", "format_table", "machine_info"]

MODULES = tuple(counterparts())
NETWORKS = ("danet_r50_d8", "ccnet_r50_d8", "nlnet_r50_d8")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# F.scaled_dot_product_attention with one backend forced (CUDA rows of PAM and Non-local)
SDPA_BACKENDS = {
    "sdpa_flash": SDPBackend.FLASH_ATTENTION,
    "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
    "sdpa_math": SDPBackend.MATH,
}
# what a row compares: visattn, the naive published code, torch.compile of it, the same
# computation through F.scaled_dot_product_attention (PAM, Non-local; PyTorch's choice of backend,
# and on CUDA each backend forced)
IMPLS = ("visattn", "naive", "compiled", "sdpa", *SDPA_BACKENDS)


@dataclass
class Case:
    """One benchmark row: an attention name (or a network name) at ``batch x channels x H x W``.

    ``naive=False`` measures visattn only (e.g. PAM at 128 x 256, where the naive N x N map alone
    needs GBs); ``memory=False`` skips the subprocess memory measurement; ``reps=0`` skips the
    timing loop and reports the single call of the memory subprocess as the time (for cases too
    slow to repeat). ``default_allocator=True`` (CPU) measures the naive and visattn peaks a second
    time with the C library's default allocator settings (``*_default_allocator`` keys).
    """

    module: str
    height: int
    width: int
    channels: int = 512
    batch: int = 1
    train: bool = False
    dtype: str = "float32"
    naive: bool = True
    compiled: bool = True
    memory: bool = True
    reps: int = 5
    device: str = "cpu"
    default_allocator: bool = False

    @property
    def label(self) -> str:
        mode = "train" if self.train else "fwd"
        channels = 3 if self.module in NETWORKS else self.channels  # networks take images
        where = "" if self.device == "cpu" else f" {self.device}"
        return f"{self.module} {self.batch}x{channels}x{self.height}x{self.width} {mode} {self.dtype}{where}"


class _WithSDPABackend(nn.Module):
    """``module`` with ``F.scaled_dot_product_attention`` restricted to one backend."""

    def __init__(self, module: nn.Module, backend: SDPBackend) -> None:
        super().__init__()
        self.module, self.backend = module, backend

    def forward(self, x: Tensor) -> Tensor:
        with sdpa_kernel(self.backend):
            return self.module(x)


def _build_attention(name: str, channels: int, impl: str) -> nn.Module:
    """The ``impl`` (:data:`IMPLS`) of attention ``name``, all with the same deterministic weights."""

    counterpart = counterparts()[name]
    opt = non_trivial_(create_attention(name, channels, **counterpart.visattn_kwargs))
    if impl == "visattn":
        return opt
    if impl == "sdpa":
        return counterpart.sdpa(opt)
    if impl in SDPA_BACKENDS:
        return _WithSDPABackend(counterpart.sdpa(opt), SDPA_BACKENDS[impl])
    naive = counterpart.build(opt)
    return torch.compile(naive) if impl == "compiled" else naive


def non_trivial_(module: nn.Module) -> nn.Module:
    """Zero-initialised parameters made non-zero: scales (residual gammas, SGE's ``weight``) set to
    0.5, weight tensors (Non-local's ``conv_out``) drawn with std ``1 / sqrt(fan_in)``. At 0 the
    module is the identity (or a constant gate). Meta tensors have no values to test."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            if p.is_meta or p.any():
                continue
            if p.dim() <= 1 or p.shape[0] == 1:  # a scale: gamma (1,), SGE weight (1, G, 1, 1)
                p.fill_(0.5)
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * fan_in**-0.5)
    return module


def _build_network(name: str, naive: bool) -> nn.Module:

    model = create_model(name, num_classes=19)
    if naive:
        official = {get_attention_class(n): cp for n, cp in counterparts().items()}
        swaps = [(parent, child_name, official[type(child)].build(child))
                 for parent in model.modules() for child_name, child in parent.named_children()
                 if type(child) in official]
        for parent, child_name, new in swaps:
            setattr(parent, child_name, new)
    return model


def _build(
    case: Case, impl: str, height: int | None = None, width: int | None = None, meta: bool = False
) -> tuple[nn.Module, Tensor]:
    dtype = _DTYPES[case.dtype]
    h, w = height or case.height, width or case.width
    if not meta:
        torch.manual_seed(0)
    if case.module in NETWORKS:
        model = _build_network(case.module, impl != "visattn")
        if impl == "compiled":
            model = torch.compile(model)
        x = torch.randn(case.batch, 3, h, w)
    else:
        model = _build_attention(case.module, case.channels, impl)
        x = torch.randn(case.batch, case.channels, h, w)
    device = "meta" if meta else case.device
    model = model.to(device, dtype).train(case.train)
    x = x.to(device, dtype).requires_grad_(case.train)
    return model, x


def _call(model: nn.Module, x: Tensor, train: bool) -> None:
    if not train:
        with torch.no_grad():
            model(x)
        return
    model.zero_grad(set_to_none=True)
    x.grad = None
    out = model(x)
    if isinstance(out, dict):
        out = sum(o.float().sum() for o in out.values())
    out.float().sum().backward()


def matmul_peak(size: int = 2048, reps: int = 5, device: str = "cpu") -> float:
    """This machine's fp32 matmul throughput in GFLOP/s on ``device``: best of ``reps`` ``size^3``
    ``torch.mm``."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b), device) for _ in range(reps))
    return 2 * size**3 / best / 1e9


def model_gflop(case: Case) -> float:
    """GFLOP of the case's naive published formulation (matmuls and convolutions), counted on the
    ``meta`` device (no memory, no time, so also for sizes the naive code cannot run at).

    Used as the work of both implementations: GFLOP/s = this / time. (Counting visattn's own
    calls would not be comparable: its backward recomputes, and in-place ``baddbmm_`` is not
    counted by the FLOP counter.) A training step counts 3x the forward: the backward of every
    matmul and convolution computes the gradients of both operands, twice its forward work.
    (torch's counter gives that for dense layers but counts a grouped convolution's backward
    ``groups`` times over, which put PSA above 100% of the matmul peak.)"""
    with torch.device("meta"):
        model, x = _build(dataclasses.replace(case, train=False), "naive", meta=True)
    return (3 if case.train else 1) * count_flops(model, x) / 1e9


def implementations(case: Case) -> list[str]:
    """The implementations a case compares (:data:`IMPLS`): visattn, and unless ``naive=False`` the
    naive published code, ``torch.compile`` of it (``compiled``) and, where the mechanism has one,
    the same computation through ``F.scaled_dot_product_attention`` (``sdpa``; on CUDA also with
    each backend forced, :data:`SDPA_BACKENDS`)."""
    impls = ["visattn"]
    if case.naive:
        impls.append("naive")
        if case.compiled:
            impls.append("compiled")
        if case.module not in NETWORKS and counterparts()[case.module].sdpa is not None:
            impls.append("sdpa")
            if case.device != "cpu":
                impls += list(SDPA_BACKENDS)
    return impls


def _runnable(case: Case, impls: list[str]) -> tuple[dict, dict]:
    """``({impl: (model, x)}, {impl: error})``: each implementation built and called once; one
    that fails (an SDPA backend that does not accept the inputs, out of memory) goes to the errors."""
    built, errors = {}, {}
    for key in impls:
        try:
            model, x = _build(case, key)
            _call(model, x, case.train)
            built[key] = model, x
        except (RuntimeError, torch.OutOfMemoryError) as e:  # noqa: PERF203 - one try per implementation
            errors[key] = (str(e).strip().splitlines() or [type(e).__name__])[0]
            _release(case.device)
    return built, errors


def _release(device: str) -> None:
    """Free what failed or finished calls left behind (CUDA's cached blocks included)."""
    gc.collect()
    if device != "cpu":
        torch.cuda.empty_cache()


def time_case(case: Case) -> dict:
    """Median milliseconds of each implementation, called in rotating order after two warm-up calls
    each (the first call of ``compiled`` compiles), and ``speedup`` (naive / visattn),
    ``speedup_vs_compiled``, ``speedup_vs_sdpa``: the median over reps of the paired ratio."""
    impls, errors = _runnable(case, implementations(case))
    calls = {key: functools.partial(_call, model, x, case.train) for key, (model, x) in impls.items()}
    times = interleaved_times(calls, case.reps, warmup=1, device=case.device)
    out: dict = {f"{key}_error": error for key, error in errors.items()}
    for key, ts in times.items():
        out[f"{key}_ms"] = 1e3 * statistics.median(ts)
    # Each rep's calls run back to back, so their ratio sees one load level; the median of these
    # ratios is steadier under a varying load than the ratio of the two medians.
    labels = {"naive": "speedup", **{key: f"speedup_vs_{key}" for key in IMPLS[2:]}}
    for key, label in labels.items():
        if key in times and "visattn" in times and case.reps:
            out[label] = statistics.median(o / v for o, v in zip(times[key], times["visattn"]))
    del impls, calls
    _release(case.device)
    return out


def _measure_memory(case: Case, impl: str) -> dict:
    """Peak extra memory of one call: resident memory on the CPU (run in a fresh process), allocated
    memory on CUDA."""
    model, x = _build(case, impl)
    tiny_model, tiny_x = _build(case, impl, 16, 16)  # initialise libraries outside the measurement
    _call(tiny_model, tiny_x, case.train)
    del tiny_model, tiny_x
    meter = PeakMemoryMeter(torch.device(case.device))
    meter.start()
    seconds = timed(lambda: _call(model, x, case.train), case.device)
    return {"peak_mb": meter.peak_mb(), "seconds": seconds, "method": meter.method}


def memory_case(case: Case, impl: str, threads: int, allocator: str = "fixed") -> dict:
    """:func:`_measure_memory`, ``{"error": ...}`` if it fails (e.g. out of memory). On the CPU in a
    subprocess whose C library keeps a fixed mmap threshold (``allocator="fixed"``,
    :data:`MEMORY_ENV`) or its default (``"default"``: what users see, freed heap blocks resident);
    on CUDA in this process."""
    if case.device != "cpu":
        try:
            return _measure_memory(case, impl)
        except (RuntimeError, torch.OutOfMemoryError) as e:
            return {"error": (str(e).strip().splitlines() or [type(e).__name__])[0]}
        finally:
            _release(case.device)
    cmd = [sys.executable, "-m", "visattn.benchmark", json.dumps(dataclasses.asdict(case)), impl, str(threads)]
    env = dict(os.environ)
    if allocator == "fixed":
        env = MEMORY_ENV | env
    else:
        for key in MEMORY_ENV:
            env.pop(key, None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def theoretical_map_mb(case: Case) -> float | None:
    """Bytes of PAM's naive ``B x N x N`` map (one buffer), in MB; ``None`` for other modules."""
    if case.module != "pam":
        return None
    n = case.height * case.width
    return case.batch * n * n * torch.finfo(_DTYPES[case.dtype]).bits / 8 / 2**20


def run_case(case: Case, threads: int, log=print) -> dict:
    row = dataclasses.asdict(case)
    row["label"] = case.label
    log(f"  {case.label} ...")
    # torch.compile's memory is not measured: a compile per subprocess costs more than the whole case
    impls = [key for key in implementations(case) if key != "compiled"]
    row["gflop"] = model_gflop(case)
    if case.reps:
        row.update(time_case(case))
    impls = [key for key in impls if f"{key}_error" not in row]
    if case.memory:
        for key in impls:
            mem = memory_case(case, key, threads)
            row[f"{key}_memory"] = mem
            if "peak_mb" in mem:
                row[f"{key}_peak_mb"] = mem["peak_mb"]
                if not case.reps:  # untimed case: the one call of the memory process
                    row[f"{key}_ms"] = 1e3 * mem["seconds"]
        if case.default_allocator and case.device == "cpu":
            for key in ("naive", "visattn")[not case.naive:]:
                mem = memory_case(case, key, threads, allocator="default")
                row[f"{key}_peak_mb_default_allocator"] = mem.get("peak_mb")
    if case.naive:
        if row.get("naive_ms") and row.get("visattn_ms"):
            row.setdefault("speedup", row["naive_ms"] / row["visattn_ms"])
        for suffix in ("", "_default_allocator"):
            naive_mb, ours_mb = row.get(f"naive_peak_mb{suffix}"), row.get(f"visattn_peak_mb{suffix}")
            if naive_mb is not None and (ours_mb or 0) >= 1:  # < 1 MB: noise
                row[f"memory_ratio{suffix}"] = naive_mb / ours_mb
    elif theoretical_map_mb(case) is not None:
        row["naive_map_mb_theoretical"] = theoretical_map_mb(case)
    return row


def machine_info() -> dict:
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info |= {"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
                 "cudnn": torch.backends.cudnn.version()}
    return info


def run_cases(cases: list[Case], threads: int | None = None, log=print, on_row=None) -> dict:
    """Measure ``cases``; returns a JSON-able report (machine, peak, load averages, rows).

    ``on_row(report)`` is called after each case (e.g. to save partial results)."""
    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    device = cases[0].device if cases else "cpu"
    report: dict = {"machine": machine_info(), "load_avg_start": _loadavg(), "device": device}
    report["matmul_peak_gflops_runs"] = peaks = [matmul_peak(device=device)]
    log(f"fp32 matmul peak: {peaks[0]:.0f} GFLOP/s ({device}, {threads} threads)")
    report["results"] = []
    for case in cases:
        report["results"].append(run_case(case, threads, log))
        if on_row is not None:
            on_row(report)
    # Measured again at the end: under a shared machine's load the best of both is the closer one.
    peaks.append(matmul_peak(device=device))
    report["load_avg_end"] = _loadavg()
    return add_throughput(report)


def add_throughput(report: dict) -> dict:
    """Fill each row's ``{naive,visattn}_gflops`` and ``_pct_peak`` from ``gflop`` and the times,
    against the best matmul peak of the run."""
    peak = max(report.get("matmul_peak_gflops_runs") or [float("nan")])
    report["matmul_peak_gflops"] = peak
    for row in report["results"]:
        for key in IMPLS:
            if row.get(f"{key}_ms") and row.get("gflop"):
                row[f"{key}_gflops"] = row["gflop"] / (row[f"{key}_ms"] / 1e3)
                row[f"{key}_pct_peak"] = 100 * row[f"{key}_gflops"] / peak
    return report


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(report: dict) -> str:
    """Markdown table of a :func:`run_cases` report: times, visattn's speed-up against each other
    implementation (> 1: visattn is faster), peak memory, and visattn's fraction of the matmul peak."""
    head = (
        "| case | GFLOP | naive ms | compiled ms | SDPA ms | visattn ms | vs naive | vs compiled | vs SDPA "
        "| naive MB | SDPA MB | visattn MB | memory ratio | visattn % peak |"
    )
    lines = [head, "|" + "---|" * 14]
    for r in report["results"]:
        naive_mb = r.get("naive_peak_mb")
        naive_mb_s = _fmt(naive_mb, ".0f")
        if naive_mb is None and "naive_map_mb_theoretical" in r:
            naive_mb_s = f"not run (N×N map: {r['naive_map_mb_theoretical']:.0f})"
        lines.append(
            f"| {r['label']} | {_fmt(r.get('gflop'), '.1f')} | {_fmt(r.get('naive_ms'), '.1f')} "
            f"| {_fmt(r.get('compiled_ms'), '.1f')} | {_fmt(r.get('sdpa_ms'), '.1f')} "
            f"| {_fmt(r.get('visattn_ms'), '.1f')} "
            f"| {_fmt(r.get('speedup'), '.2f')}× | {_fmt(r.get('speedup_vs_compiled'), '.2f')}× "
            f"| {_fmt(r.get('speedup_vs_sdpa'), '.2f')}× | {naive_mb_s} | {_fmt(r.get('sdpa_peak_mb'), '.0f')} "
            f"| {_fmt(r.get('visattn_peak_mb'), '.0f')} | {_fmt(r.get('memory_ratio'), '.1f')}× "
            f"| {_fmt(r.get('visattn_pct_peak'), '.0f')}% |"
        )
    return "\n\n".join(["\n".join(lines), *filter(None, (_sdpa_backends_table(report), _allocator_table(report)))])


def _sdpa_backends_table(report: dict) -> str:
    """Each forced SDPA backend's time and peak memory (CUDA rows), ``n/a`` where it does not
    accept the inputs; empty if no row has them."""
    rows = [r for r in report["results"] if any(f"{key}_ms" in r or f"{key}_error" in r for key in SDPA_BACKENDS)]
    if not rows:
        return ""
    names = [key.removeprefix("sdpa_") for key in SDPA_BACKENDS]
    lines = ["| case | visattn ms | " + " | ".join(f"{n} ms | {n} MB | vs {n}" for n in names) + " |",
             "|" + "---|" * (2 + 3 * len(names))]
    for r in rows:
        cells = [f"{r['label']}", _fmt(r.get("visattn_ms"), ".1f")]
        for key in SDPA_BACKENDS:
            if f"{key}_error" in r:
                cells += ["n/a", "n/a", "-"]
            else:
                cells += [_fmt(r.get(f"{key}_ms"), ".1f"), _fmt(r.get(f"{key}_peak_mb"), ".0f"),
                          _fmt(r.get(f"speedup_vs_{key}"), ".2f") + "×"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _allocator_table(report: dict) -> str:
    """Peak RSS with the fixed mmap threshold beside glibc's default allocator (rows measured with
    ``default_allocator``); empty if none."""
    rows = [r for r in report["results"] if "visattn_peak_mb_default_allocator" in r]
    if not rows:
        return ""
    lines = ["| case | naive MB (fixed) | visattn MB (fixed) | ratio (fixed) | naive MB (default) "
             "| visattn MB (default) | ratio (default) |", "|" + "---|" * 7]
    for r in rows:
        lines.append(
            f"| {r['label']} | {_fmt(r.get('naive_peak_mb'), '.0f')} | {_fmt(r.get('visattn_peak_mb'), '.0f')} "
            f"| {_fmt(r.get('memory_ratio'), '.1f')}× | {_fmt(r.get('naive_peak_mb_default_allocator'), '.0f')} "
            f"| {_fmt(r.get('visattn_peak_mb_default_allocator'), '.0f')} "
            f"| {_fmt(r.get('memory_ratio_default_allocator'), '.1f')}× |"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # subprocess entry of memory_case
    spec, impl, n_threads = sys.argv[1:4]
    torch.set_num_threads(int(n_threads))
    result = _measure_memory(Case(**json.loads(spec)), impl)
    print(json.dumps(result))
