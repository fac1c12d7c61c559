"""The benchmark baseline and ``visattn bench``.

The naive formulations are the authors' code (:mod:`visattn._official`, whose equality with the
visattn modules ``tests/_official/test_counterparts.py`` checks). No timing assertions here.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import rel_err

from visattn import benchmark
from visattn._official import counterparts
from visattn.attention import get_attention_class
from visattn.benchmark import Case, format_table, run_cases
from visattn.benchmark import matmul_peak as _matmul_peak
from visattn.cli import main
from visattn.profiling import timed

C = 64
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _small_matmul_peak(monkeypatch):
    # The real peak measurement runs 2048^3 matmuls: keep these tests fast.
    monkeypatch.setattr(benchmark, "matmul_peak", lambda device="cpu": _matmul_peak(256, 2, device=device))


def _pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The naive and the visattn module as the benchmark builds them (same seed: same weights)."""
    pair = []
    for impl in ("naive", "visattn"):
        torch.manual_seed(0)
        pair.append(benchmark._build_attention(name, C, impl).eval())
    return pair[0], pair[1]


def test_modules_are_the_official_counterparts():
    assert benchmark.MODULES == tuple(counterparts())


@pytest.mark.parametrize("name", benchmark.MODULES)
def test_benchmarked_pair_computes_the_same_and_is_not_trivial(name):
    naive, opt = _pair(name)
    assert type(opt) is get_attention_class(name) and type(naive).__module__.startswith("visattn._official.")
    cp = counterparts()[name]
    x = torch.randn(1 if not cp.batch_independent else 2, C, 12, 12 if cp.square_only else 13,
                    generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y_opt, y_naive = opt(x), naive(x)
    assert rel_err(y_opt, y_naive) < 1e-4
    assert rel_err(y_opt, x) > 1e-2  # zero-initialised scales were set: the module is not the identity
    if name == "sge":  # ... nor a constant gate
        assert opt.weight.abs().min() > 0


def test_network_swap_replaces_every_attention_module_with_its_counterpart():
    with torch.device("meta"):  # no memory: large allocations here would hide the next tests' peaks
        naive = benchmark._build_network("danet_r50_d8", naive=True)
        opt = benchmark._build_network("danet_r50_d8", naive=False)
    official = tuple(get_attention_class(n) for n in counterparts())
    assert not any(isinstance(m, official) for m in naive.modules())
    swapped = {type(m).__name__ for m in naive.modules() if type(m).__module__.startswith("visattn._official.")}
    assert swapped == {"PAM_Module", "CAM_Module"}
    assert naive.state_dict().keys() == opt.state_dict().keys()


def test_naive_pam_builds_the_map_and_visattn_does_not():
    # The baseline really is the published O(N^2) form: its saved tensors include an N x N map.
    naive, opt = _pair("pam")
    x = torch.randn(1, C, 8, 9, requires_grad=True)
    n = 72
    for module, expect in ((naive, True), (opt, False)):
        shapes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
            module(x)
        assert any(s[-2:] == (n, n) for s in shapes) == expect


def test_bench_command_prints_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--modules", "pam", "cca", "--size", "6", "8", "--channels", "16", "--reps", "1",
            "--threads", "1", "--no-memory", "--no-compile", "--output", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| case |" in printed and "pam 1x16x6x8 fwd float32" in printed
    report = json.loads(out.read_text())
    assert {"machine", "matmul_peak_gflops", "load_avg_start", "load_avg_end", "results", "command"} <= set(report)
    assert report["machine"]["torch"] == torch.__version__
    rows = report["results"]
    assert [r["module"] for r in rows] == ["pam", "cca"]
    for r in rows:
        for key in ("naive_ms", "visattn_ms", "speedup", "gflop", "naive_gflops", "visattn_pct_peak"):
            assert r[key] > 0, key
        assert (r["height"], r["width"], r["channels"], r["train"], r["dtype"]) == (6, 8, 16, False, "float32")


def test_pam_row_compares_compiled_naive_and_sdpa():
    report = run_cases([Case("pam", 6, 8, channels=16, memory=False, reps=2)], threads=1, log=lambda *_: None)
    (row,) = report["results"]
    for key in ("naive_ms", "compiled_ms", "sdpa_ms", "visattn_ms", "speedup", "speedup_vs_compiled", "speedup_vs_sdpa"):
        assert row[key] > 0, key
    assert benchmark.implementations(Case("cam", 6, 8)) == ["visattn", "naive", "compiled"]
    assert benchmark.implementations(Case("pam", 6, 8, compiled=False)) == ["visattn", "naive", "sdpa"]


def test_bench_train_bf16_visattn_only():
    report = run_cases([Case("cam", 4, 4, channels=8, train=True, dtype="bfloat16", naive=False, memory=False, reps=1)],
                       log=lambda *_: None)
    (row,) = report["results"]
    assert row["visattn_ms"] > 0 and "naive_ms" not in row and "speedup" not in row
    assert "cam 1x8x4x4 train bfloat16" in format_table(report)


def test_memory_subprocess_sees_live_memory():
    # Fresh processes with glibc's mmap threshold fixed: the naive PAM's 16 MiB N x N map (and its
    # softmax's copy) shows; the chunked PAM holds two 8 MiB chunk buffers instead (N = 2048).
    naive = benchmark.memory_case(Case("pam", 32, 64, channels=16), "naive", threads=1)
    ours = benchmark.memory_case(Case("pam", 32, 64, channels=16), "visattn", threads=1)
    assert naive["peak_mb"] > 30 and 15 < ours["peak_mb"] < 24


def test_gflop_counts_a_conv_by_hand_and_training_as_three_forwards():
    # PSA at C=64, 8x8, channels split 4 x 16: grouped 3/5/7/9 convs (groups 1, 4, 8, 16), 2 FLOP per MAC
    fwd = benchmark.model_gflop(Case("psa", 8, 8, channels=64)) * 1e9
    convs = sum(2 * 64 * 8 * 8 * (16 // g) * k * k for k, g in ((3, 1), (5, 4), (7, 8), (9, 16)))
    se = 4 * 2 * (16 * 1 + 1 * 16)  # the shared SE (16 -> 16 // 16 -> 16) on each branch's pooled 1x1
    assert fwd == convs + se
    assert benchmark.model_gflop(Case("psa", 8, 8, channels=64, train=True)) * 1e9 == pytest.approx(3 * fwd)


def test_memory_with_the_default_allocator_sees_the_naive_map():
    # glibc's default allocator (what users see): the 16 MiB map is above its largest mmap threshold
    # and shows; the chunked PAM stays below it.
    case = Case("pam", 32, 64, channels=16)
    naive = benchmark.memory_case(case, "naive", threads=1, allocator="default")
    ours = benchmark.memory_case(case, "visattn", threads=1, allocator="default")
    assert naive["peak_mb"] > 30 and ours["peak_mb"] < naive["peak_mb"] / 1.5


def test_tables_of_sdpa_backends_and_allocators():
    row = {"label": "pam 1x16x6x8 fwd float32 cuda", "visattn_ms": 2.0, "naive_ms": 4.0, "speedup": 2.0,
           "sdpa_flash_error": "No available kernel", "sdpa_efficient_ms": 3.0, "sdpa_efficient_peak_mb": 12.0,
           "speedup_vs_sdpa_efficient": 1.5, "sdpa_math_ms": 8.0}
    cpu_row = {"label": "nonlocal 1x512x64x128 train float32", "visattn_ms": 1.0, "naive_peak_mb": 800.0,
               "visattn_peak_mb": 100.0, "memory_ratio": 8.0, "naive_peak_mb_default_allocator": 840.0,
               "visattn_peak_mb_default_allocator": 120.0, "memory_ratio_default_allocator": 7.0}
    table = format_table({"results": [row, cpu_row]})
    main_table, backends, allocators = table.split("\n\n")
    assert "| flash ms | flash MB | vs flash |" in backends.splitlines()[0]
    assert "| pam 1x16x6x8 fwd float32 cuda | 2.0 | n/a | n/a | - | 3.0 | 12 | 1.50× | - | - | -× | 8.0 |" in backends
    assert "nonlocal" not in backends and "pam" not in allocators
    assert "| nonlocal 1x512x64x128 train float32 | 800 | 100 | 8.0× | 840 | 120 | 7.0× |" in allocators
    assert "\n\n" not in format_table({"results": [{"label": "cam", "visattn_ms": 1.0}]})


@NO_CUDA
def test_bench_device_cuda_without_cuda_exits_2_in_one_line(capsys):
    assert main(["bench", "--modules", "pam", "--device", "cuda"]) == 2
    out = capsys.readouterr()
    assert (out.out + out.err).strip().count("\n") == 0 and "--device cuda" in out.err


@NO_CUDA
def test_device_check_refuses_without_a_gpu(tmp_path):
    import sys

    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


@CUDA
def test_cuda_rows_time_by_events_and_compare_each_sdpa_backend():
    cases = [Case("pam", 8, 16, channels=64, dtype=dtype, train=train, compiled=False, reps=2, device="cuda")
             for dtype in ("float32", "bfloat16") for train in (False, True)]
    report = run_cases(cases, log=lambda *_: None)
    assert report["machine"]["gpu"] and report["device"] == "cuda"
    for row in report["results"]:
        assert row["visattn_ms"] > 0 and row["naive_ms"] > 0 and row["visattn_peak_mb"] >= 0
        assert row["memory"] and row["visattn_memory"]["method"] == "max_memory_allocated"
        assert "sdpa_math_ms" in row  # the math backend accepts anything
        for key in benchmark.SDPA_BACKENDS:
            assert (f"{key}_ms" in row) != (f"{key}_error" in row), key
    assert "| flash ms |" in format_table(report)


@CUDA
def test_cuda_timing_waits_for_the_gpu():
    a = torch.randn(4096, 4096, device="cuda")
    assert timed(lambda: a @ a @ a @ a, "cuda") > timed(lambda: None, "cuda")


def test_bench_float16_off_cuda_exits_2_in_one_line(capsys):
    assert main(["bench", "--modules", "pam", "--dtype", "float16", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--dtype float16 runs on CUDA only" in err
