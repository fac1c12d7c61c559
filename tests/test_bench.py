"""The benchmark baseline and ``visattn bench``.

The naive formulations are the authors' code (:mod:`visattn._official`, whose equality with the
visattn modules ``tests/_official/test_counterparts.py`` checks). No timing assertions here.
"""
from __future__ import annotations

import json

import pytest
import torch
from helpers import rel_err

from visattn import benchmark
from visattn._official import counterparts
from visattn.attention import get_attention_class
from visattn.benchmark import Case, format_table, run_cases
from visattn.benchmark import matmul_peak as _matmul_peak
from visattn.cli import main

C = 64


@pytest.fixture(autouse=True)
def _small_matmul_peak(monkeypatch):
    # The real peak measurement runs 2048^3 matmuls: keep these tests fast.
    monkeypatch.setattr(benchmark, "matmul_peak", lambda: _matmul_peak(256, 2))


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
