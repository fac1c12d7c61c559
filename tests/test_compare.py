"""visattn compare: entries and their configs, the statistics, the report's numbers against the runs,
resume after a SIGKILL, parallel workers, the pictures, and the refusals."""
import contextlib
import io
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import visattn
from visattn.cli import main
from visattn.compare import (FINAL_METRICS, CompareDir, Entry, entry_config, make_entries, paired_difference,
                             query_point, t_quantile)
from visattn.engine.config import ConfigError, load_config
from visattn.models import create_model
from visattn.viz import COMPARE_PLOT_PX, attention_map_of, figure_size

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(visattn.__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "digits_danet.yaml")
TINY = ["train.iters=2", "data.digits.train_length=16", "data.digits.val_length=8", "data.digits.size=32",
        "data.crop_size=[32,32]", "data.digits.digit_size=[8,16]", "train.batch_size=4", "train.eval_every=null",
        "train.warmup_iters=0"]
ENTRIES = (Entry("fcn", "fcn"), Entry("attnet-sge", "attnet", "sge"))
SEEDS = (0, 1)


def _command(output: Path, *extra: str) -> list[str]:
    return ["compare", "--config", CONFIG, "--models", "fcn", "--attentions", "sge", "--seeds", "2",
            "--set", *TINY, "--output", str(output), *extra]


def _mtimes(run: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (run / FINAL_METRICS, run / "model.safetensors",
                                                    run / "checkpoints" / "latest")}


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """The CLI killed (SIGKILL) right after its first run completed, then the same command again
    with --jobs 2: ``(output dir, mtimes of the first run before the re-run, the re-run's stdout)``."""
    out = tmp_path_factory.mktemp("compare") / "cmp"
    first = out / "runs" / "fcn" / "seed0"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "visattn", *_command(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not (first / FINAL_METRICS).is_file():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the first run did not finish"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    before = _mtimes(first)
    assert not (out / "report.json").exists()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            assert main(_command(out, "--jobs", "2")) == 0
    finally:
        torch.set_num_threads(threads)
    return out, before, printed.getvalue()


def test_resume_skips_the_complete_run_and_completes_the_report(compared):
    out, before, printed = compared
    assert _mtimes(out / "runs" / "fcn" / "seed0") == before  # not retrained
    assert "[1/4] fcn seed 0:" in printed and "(complete before)" in printed
    assert "[4/4]" in printed
    report = json.loads((out / "report.json").read_text())
    assert [e["name"] for e in report["entries"]] == ["fcn", "attnet-sge"]
    assert [[r["seed"] for r in e["runs"]] for e in report["entries"]] == [[0, 1], [0, 1]]
    for entry in report["entries"]:
        for run in entry["runs"]:
            assert run["step"] == run["total"] == 2


def test_runs_trained_in_parallel_workers_split_the_cores(compared):
    out, _, printed = compared
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for entry, seed in (("attnet-sge", 0), ("fcn", 1), ("attnet-sge", 1)):
        record = json.loads((out / "runs" / entry / f"seed{seed}" / FINAL_METRICS).read_text())
        assert record["threads"] == max(1, cores // 2)
        assert (out / "logs" / f"{entry}-seed{seed}.log").is_file()
        assert f"start {entry} seed {seed} ({max(1, cores // 2)} threads)" in printed


def test_report_numbers_are_the_runs_final_evaluations(compared):
    out, _, printed = compared
    report = json.loads((out / "report.json").read_text())
    miou = {}
    for entry in report["entries"]:
        run_dir = out / "runs" / entry["name"]
        for run in entry["runs"]:
            # the last validation line the trainer logged is the final evaluation
            logged = [json.loads(line) for line in (run_dir / f"seed{run['seed']}" / "metrics.jsonl").read_text().splitlines()]
            final = [r for r in logged if "mIoU" in r][-1]
            assert run["metrics"]["mIoU"] == pytest.approx(final["mIoU"], abs=1e-12)
            assert run["metrics"]["mAcc"] == pytest.approx(final["mAcc"], abs=1e-12)
        miou[entry["name"]] = [r["metrics"]["mIoU"] for r in entry["runs"]]
        assert entry["mIoU"]["mean"] == pytest.approx(np.mean(miou[entry["name"]]))
        assert entry["mIoU"]["std"] == pytest.approx(np.std(miou[entry["name"]], ddof=1))
    diffs = np.subtract(miou["attnet-sge"], miou["fcn"])
    half = math.tan(math.pi * (0.975 - 0.5)) * np.std(diffs, ddof=1) / math.sqrt(2)  # t_{0.975, 1}: Cauchy quantile
    delta = report["entries"][1]["delta_mIoU"]
    assert report["entries"][0]["delta_mIoU"] is None
    assert delta["mean"] == pytest.approx(diffs.mean())
    assert delta["low"] == pytest.approx(diffs.mean() - half) and delta["high"] == pytest.approx(diffs.mean() + half)
    table = (out / "report.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| attnet-sge |"))
    sge = report["entries"][1]
    assert f"{100 * sge['mIoU']['mean']:.2f} ± {100 * sge['mIoU']['std']:.2f}" in row
    assert f"{100 * diffs.mean():+.2f} [{100 * (diffs.mean() - half):+.2f}, {100 * (diffs.mean() + half):+.2f}]" in row
    assert row in printed  # the table printed at the end is the report's
    per_class = np.array([[np.nan if v is None else v for v in r["metrics"]["per_class_iou"]] for r in sge["runs"]])
    assert sge["per_class_iou"] == pytest.approx([None if np.isnan(c).all() else np.nanmean(c) for c in per_class.T],
                                                 nan_ok=True)


def test_cost(compared):
    out, _, _ = compared
    report = json.loads((out / "report.json").read_text())
    assert report["cost_setup"]["batch"] == [4, 3, 32, 32] and report["cost_setup"]["eval_size"] == [32, 32]
    for entry, attention in zip(report["entries"], (None, "sge")):
        kwargs = {"encoder": "resnet18", "output_stride": 8, **({"attention": attention} if attention else {})}
        params = sum(p.numel() for p in create_model(entry["model"], num_classes=11, **kwargs).parameters())
        cost = entry["cost"]
        assert cost["params_m"] == pytest.approx(params / 1e6)
        # AdamW holds the weights, their gradients and two moments: 16 bytes per parameter at least
        assert cost["peak_train_mb"] >= 16 * params / 2**20
        assert cost["gflops"] > 0 and cost["ms_per_step"] > 0


def test_pictures(compared):
    out, _, _ = compared
    report = json.loads((out / "report.json").read_text())
    assert [e["attention_map"] for e in report["entries"]] == [None, {"module": "head.attention", "map": "sge_gate"}]
    sizes = {name: Image.open(out / name).size for name in ("miou_vs_cost.png", "per_class_iou_delta.png",
                                                            "attention_maps.png")}
    assert sizes["attention_maps.png"] == figure_size(2)  # a panel per entry
    assert sizes["miou_vs_cost.png"] == (2 * COMPARE_PLOT_PX, COMPARE_PLOT_PX)
    assert sizes["per_class_iou_delta.png"][1] == COMPARE_PLOT_PX


def test_another_recipe_in_the_same_output_is_refused(compared):
    out, _, _ = compared
    with pytest.raises(ConfigError, match=r"another recipe .*train\.iters: 3 here, 2 there"):
        visattn.compare(CONFIG, ["fcn"], seeds=1, overrides=[*TINY, "train.iters=3"], output=out)


def test_an_output_holding_something_else_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no compare.yaml"):
        visattn.compare(CONFIG, ["fcn"], seeds=1, overrides=TINY, output=tmp_path)


@pytest.mark.parametrize(("args", "message"), [
    (["--models", "danett"], "unknown model 'danett' (did you mean danet"),
    (["--attentions", "bamm"], "unknown attention 'bamm' (did you mean bam"),
    (["--models", "fcn", "fcn"], "entries given twice: fcn"),
    ([], "nothing to compare"),
    (["--models", "se_resnet50"], "entry se_resnet50: config key 'model.kwargs.encoder'"),
])
def test_bad_names_are_named(args, message, tmp_path, capsys):
    assert main(["compare", *args, "--output", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_visattn_compare_is_the_function_whether_or_not_the_module_was_imported():
    import visattn.compare as module

    for target in (visattn.compare, module):
        with pytest.raises(ConfigError, match="unknown attention 'nope'"):
            target(attentions=["nope"])


def test_entry_configs_keep_the_encoder_arguments_only():
    base = load_config(None, ["model.name=attnet", "model.kwargs={encoder: resnet18, output_stride: 16, aux: true, "
                              "attention: sge, groups: 8}"])
    assert entry_config(base, Entry("danet", "danet"), 1).model.kwargs == {"encoder": "resnet18", "output_stride": 16,
                                                                           "aux": True}
    bam = entry_config(base, Entry("attnet-bam", "attnet", "bam"), 0, "out/bam")
    assert bam.model.kwargs == {"encoder": "resnet18", "output_stride": 16, "aux": True, "attention": "bam"}
    assert (bam.train.seed, bam.run.dir) == (0, "out/bam")
    assert entry_config(base, Entry("attnet-sge", "attnet", "sge"), 2).model.kwargs == base.model.kwargs
    assert entry_config(base, Entry("attnet", "attnet"), 2).model.kwargs == base.model.kwargs
    base_copy = load_config(None, ["model.name=attnet", "model.kwargs={encoder: resnet18, output_stride: 16, aux: true, "
                                   "attention: sge, groups: 8}"])
    assert base == base_copy  # the base is left as it was
    assert [e.name for e in make_entries(["fcn", "danet"], ["psa"])] == ["fcn", "danet", "attnet-psa"]


def test_t_quantile_against_closed_forms_and_tables():
    assert t_quantile(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-10)  # Cauchy
    p = 0.975
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)
    for df, table in ((3, 3.182446), (4, 2.776445), (9, 2.262157), (29, 2.045230)):
        assert t_quantile(0.975, df) == pytest.approx(table, abs=1e-6)
    assert t_quantile(0.5, 5) == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match="df >= 1"):
        t_quantile(0.975, 0)


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 5, 8, 30, 101):
        for p in (0.9, 0.95, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


def test_paired_difference_by_hand():
    result = paired_difference([0.5, 0.6, 0.7], [0.4, 0.45, 0.65])
    # differences 0.10, 0.15, 0.05: mean 0.10, sd 0.05, t_{0.975, 2} = 4.302653
    half = 4.302652729911275 * 0.05 / math.sqrt(3)
    assert result["per_seed"] == pytest.approx([0.1, 0.15, 0.05])
    assert (result["mean"], result["low"], result["high"]) == pytest.approx((0.1, 0.1 - half, 0.1 + half))
    one = paired_difference([0.5], [0.4])
    assert one["mean"] == pytest.approx(0.1) and one["low"] is None and one["high"] is None
    assert statistics.fmean(result["per_seed"]) == pytest.approx(result["mean"])


def test_query_point_is_on_an_object_near_the_centre():
    mask = np.zeros((9, 9), np.uint8)
    mask[0, 0] = 3  # far from the centre
    mask[5, 6] = 7
    mask[8, 8] = 255
    assert query_point(mask) == (5, 6)
    assert query_point(np.zeros((6, 8), np.uint8)) == (3, 4)  # a single class: the centre


def test_attention_map_of_prefers_the_query_map():
    torch.manual_seed(0)
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    danet = create_model("danet", num_classes=3, encoder="resnet18").eval()
    name, amap = attention_map_of(danet, image, (8, 20))
    assert amap.point is not None and amap.spatial and amap.key.endswith("q0")
    assert name in dict(danet.named_modules())
    assert attention_map_of(create_model("fcn", num_classes=3, encoder="resnet18"), image, (8, 20)) is None


def test_compare_dir_layout(tmp_path):
    cdir = CompareDir(tmp_path)
    entry = Entry("attnet-bam", "attnet", "bam")
    assert cdir.run(entry, 2).path == tmp_path / "runs" / "attnet-bam" / "seed2"
    assert cdir.log(entry, 2) == tmp_path / "logs" / "attnet-bam-seed2.log"


def test_a_failed_worker_is_reported_and_nothing_more_starts(tmp_path):
    from visattn.compare import RunFailedError, _Job, _Progress, _train_in_parallel

    base = load_config(CONFIG, [*TINY, "data.dataset=folder"])  # no data.root: the worker's training fails
    cdir, lines = CompareDir(tmp_path), []
    jobs = [_Job(e, 0, entry_config(base, e, 0, cdir.run(e, 0).path), cdir.run(e, 0), cdir.log(e, 0)) for e in ENTRIES]
    with pytest.raises(RunFailedError, match=r"1 run\(s\) failed: fcn seed 0 \(exit 1: ValueError: dataset 'folder' "
                                             r"needs data.root.*fcn-seed0.log"):
        _train_in_parallel(jobs, 1, 0, _Progress(2, lines.append))
    assert lines[0].startswith("start fcn seed 0 (") and lines[-1].startswith("fcn seed 0 failed")
    assert not cdir.log(ENTRIES[1], 0).exists()  # the second run never started
