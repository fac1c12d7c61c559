"""visattn compare from the command line and visattn.compare(): resume after a SIGKILL, the report's
numbers against the runs, and the refusals."""
import inspect
import json
import math
import os
import shutil
import signal

import numpy as np
import pytest
import torch

import visattn
import visattn.comparison
import visattn.comparison.cost as cost_module
from visattn.cli import main
from visattn.comparison import compare
from visattn.engine.config import ConfigError

import tinyseg


def test_resume_skips_the_complete_run_and_completes_the_report(compared, mtimes):
    out, before, printed = compared
    assert mtimes(out / "runs" / "fcn" / "seed0") == before  # not retrained
    assert "[1/4] fcn seed 0:" in printed and "(complete before)" in printed
    assert "[4/4]" in printed
    report = json.loads((out / "report.json").read_text())
    assert [e["name"] for e in report["entries"]] == ["fcn", "attnet-sge"]
    assert [[r["seed"] for r in e["runs"]] for e in report["entries"]] == [[0, 1], [0, 1]]
    for entry in report["entries"]:
        for run in entry["runs"]:
            assert run["step"] == run["total"] == 2


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


def test_reporting_again_against_baselines_trains_and_measures_nothing(compared, mtimes, recipe_file, tiny, tmp_path,
                                                                      monkeypatch):
    out, _, _ = compared
    again = tmp_path / "cmp"
    shutil.copytree(out, again, copy_function=os.link)  # the runs read, never written
    before = json.loads((out / "report.json").read_text())
    run_times = mtimes(again / "runs" / "fcn" / "seed1")

    def measure(*args, **kwargs):
        raise AssertionError("the cost was measured again")

    monkeypatch.setattr(cost_module, "measure_cost", measure)
    threads, lines = torch.get_num_threads(), []
    torch.set_num_threads(1)  # the threads the comparison measured its cost with
    try:
        report = visattn.compare(recipe_file, ["fcn"], ["sge"], seeds=2, overrides=tiny, output=again,
                                 log=lines.append, baselines=["attnet-sge"])
    finally:
        torch.set_num_threads(threads)
    assert any(line.startswith("cost: measured before") for line in lines)
    assert mtimes(again / "runs" / "fcn" / "seed1") == run_times
    assert [e["cost"] for e in report["entries"]] == [e["cost"] for e in before["entries"]]
    fcn, sge = report["entries"]
    assert report["baselines"] == ["attnet-sge"] and sge["delta_mIoU_vs"] == {"attnet-sge": None}
    assert fcn["delta_mIoU_vs"]["attnet-sge"]["per_seed"] == pytest.approx([-d for d in sge["delta_mIoU"]["per_seed"]])
    table = (again / "report.md").read_text().splitlines()
    header = next(line for line in table if line.startswith("| entry |"))
    assert header.endswith("| ΔmIoU vs fcn (95% CI) | ΔmIoU vs attnet-sge (95% CI) |")
    fcn_row = next(line for line in table if line.startswith("| fcn |"))
    low, high = fcn["delta_mIoU_vs"]["attnet-sge"]["low"], fcn["delta_mIoU_vs"]["attnet-sge"]["high"]
    shown = f"{100 * -sge['delta_mIoU']['mean']:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"
    assert fcn_row.endswith(f"| reference | {shown} |")


def test_another_recipe_in_the_same_output_is_refused(compared, recipe_file, tiny):
    out, _, _ = compared
    with pytest.raises(ConfigError, match=r"another recipe .*train\.iters: 3 here, 2 there"):
        visattn.compare(recipe_file, ["fcn"], seeds=1, overrides=[*tiny, "train.iters=3"], output=out)


def test_an_output_holding_something_else_is_refused(tmp_path, recipe_file, tiny):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no compare.yaml"):
        visattn.compare(recipe_file, ["fcn"], seeds=1, overrides=tiny, output=tmp_path)


@pytest.mark.parametrize(("args", "message"), [
    (["--models", "danett"], "unknown model 'danett' (did you mean danet"),
    (["--attentions", "bamm"], "unknown attention 'bamm' (did you mean bam"),
    (["--models", "fcn", "fcn"], "entries given twice: fcn"),
    ([], "nothing to compare"),
    (["--models", "se_resnet50"], "entry se_resnet50: config key 'model.kwargs.encoder'"),
    (["--models", "fcn", "danet", "--baselines", "pspnet"], "baseline 'pspnet' is not an entry of this comparison"),
    (["--models", "fcn", "danet", "--baselines", "fcn"], "baseline 'fcn' is the first entry"),
    (["--models", "fcn", "danet", "pspnet", "--baselines", "danet", "danet"], "baselines given twice: danet"),
    (["--models", "fcn", "--baselines", "danet", "--emit-jobs", "jobs.txt"], "baseline 'danet' is not an entry"),
])
def test_bad_names_are_named(args, message, tmp_path, capsys):
    assert main(["compare", *args, "--output", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_visattn_compare_is_a_plain_function_importing_the_package_leaves():
    assert inspect.isfunction(visattn.compare) and visattn.compare is visattn.comparison.compare
    assert visattn.compare is compare  # importing the package did not rebind the name
    with pytest.raises(ConfigError, match="unknown attention 'nope'"):
        visattn.compare(attentions=["nope"])


def test_sigint_in_a_final_evaluation_stops_the_comparison(tmp_path, recipe_file, tiny, capsys):
    """Ctrl-C during the first entry's final evaluation: exit 130, that run left resumable (its
    last checkpoint, no final record), no other entry started, no cost measured, no report."""
    out = tmp_path / "cmp"
    with tinyseg.signal_during("evaluation", 1, signal.SIGINT):
        code = main(["compare", "--config", recipe_file, "--models", "fcn", "--attentions", "sge", "--seeds", "1",
                     "--set", *tiny, "eval.batch_size=2", "--output", str(out)])
    assert code == 130
    run = out / "runs" / "fcn" / "seed0"
    assert (run / "checkpoints" / "latest").read_text() == "step_0000002"
    assert not (run / visattn.comparison.FINAL_METRICS).exists()
    assert not (out / "runs" / "attnet-sge").exists() and not (out / "report.json").exists()
    assert "start attnet-sge" not in capsys.readouterr().out
