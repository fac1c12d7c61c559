"""visattn compare --emit-jobs: the missing runs as `visattn train` commands, run here as a batch system
would run them, then collected by the same command into the report an in-process comparison gives."""
import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import visattn
from visattn.cli import main
from visattn.comparison import FINAL_METRICS, Entry, entry_config
from visattn.engine.config import load_config, validate_config

SRC = Path(visattn.__file__).resolve().parents[1]
ENTRIES = (Entry("fcn", "fcn"), Entry("attnet-sge", "attnet", "sge"))


def _command(recipe_file, tiny, out, *extra):
    return ["compare", "--config", recipe_file, "--models", "fcn", "--attentions", "sge", "--seeds", "2",
            "--set", *tiny, "--output-dir", str(out), *extra]


def _run_job(line: str) -> None:
    """One emitted line, as a batch job runs it (``visattn`` is this interpreter's ``-m visattn``)."""
    words = shlex.split(line)
    assert words[:2] == ["visattn", "train"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "visattn", *words[1:]], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the jobs run (OMP_NUM_THREADS=1): the same arithmetic, the same numbers
    yield
    torch.set_num_threads(threads)


def test_emitted_jobs_run_elsewhere_give_the_in_process_report(tmp_path, recipe_file, tiny, capsys, mtimes,
                                                              one_thread):
    out, jobs = tmp_path / "cmp", tmp_path / "jobs.txt"
    assert main(_command(recipe_file, tiny, out, "--emit-jobs", str(jobs))) == 0
    printed = capsys.readouterr().out
    assert "4 training job(s) in" in printed and "sbatch --array=1-4" in printed
    lines = jobs.read_text().splitlines()
    assert len(lines) == 4 and not (out / "runs").exists()  # nothing trained
    base = load_config(recipe_file, tiny)
    for line, (seed, entry) in zip(lines, [(s, e) for s in (0, 1) for e in ENTRIES]):
        words = shlex.split(line)
        run_dir = out.resolve() / "runs" / entry.name / f"seed{seed}"
        assert words[words.index("--output-dir") + 1] == str(run_dir)
        # the job trains what compare would: the entry's config with its seed, into its run directory
        expected = validate_config(entry_config(base, entry, seed, run_dir))
        assert load_config(words[words.index("--config") + 1]) == expected

    for line in lines[:3]:
        _run_job(line)
    first = out.resolve() / "runs" / "fcn" / "seed0"
    (first / FINAL_METRICS).unlink()  # as if stopped after its last checkpoint: it continues
    assert main(_command(recipe_file, tiny, out, "--emit-jobs", str(jobs))) == 0
    assert jobs.read_text().splitlines() == [f"visattn train --resume {shlex.quote(str(first))} --quiet", lines[3]]
    for line in jobs.read_text().splitlines():
        _run_job(line)
    assert main(_command(recipe_file, tiny, out, "--emit-jobs", str(jobs))) == 0
    assert "no run is missing" in capsys.readouterr().out and jobs.read_text() == ""

    runs = [out / "runs" / e.name / f"seed{s}" for s in (0, 1) for e in ENTRIES]
    before = [mtimes(run) for run in runs]
    assert main(_command(recipe_file, tiny, out)) == 0  # collects, trains nothing
    assert capsys.readouterr().out.count("(complete before)") == 4
    assert [mtimes(run) for run in runs] == before
    collected = json.loads((out / "report.json").read_text())
    in_process = visattn.compare(recipe_file, ["fcn"], ["sge"], seeds=2, overrides=tiny, output=tmp_path / "here",
                                 log=lambda line: None)
    for mine, theirs in zip(collected["entries"], in_process["entries"], strict=True):
        assert mine["name"] == theirs["name"]
        assert [r["seed"] for r in mine["runs"]] == [r["seed"] for r in theirs["runs"]] == [0, 1]
        assert [r["metrics"]["mIoU"] for r in mine["runs"]] == [r["metrics"]["mIoU"] for r in theirs["runs"]]
        assert [r["metrics"]["per_class_iou"] for r in mine["runs"]] == \
               [r["metrics"]["per_class_iou"] for r in theirs["runs"]]
        assert mine["mIoU"] == theirs["mIoU"]


def test_a_job_killed_before_its_first_checkpoint_is_listed_again_and_a_running_one_is_not(tmp_path, recipe_file, tiny):
    out, jobs = tmp_path / "cmp", tmp_path / "jobs.txt"
    assert main(_command(recipe_file, tiny, out, "--emit-jobs", str(jobs))) == 0
    first = jobs.read_text().splitlines()
    killed, running = (out.resolve() / "runs" / e.name / "seed0" for e in ENTRIES)
    for run in (killed, running):  # what a job leaves before its first checkpoint
        (run / "tb").mkdir(parents=True)
        (run / "config.yaml").write_text("train: {iters: 2}\n")
        (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (killed / "lock").write_text("999999999 " + socket.gethostname())  # its process is gone
    (running / "lock").write_text(f"{os.getppid()} {socket.gethostname()}")  # a live process
    assert main(_command(recipe_file, tiny, out, "--emit-jobs", str(jobs))) == 0
    assert jobs.read_text().splitlines() == [first[0], *first[2:]]
    assert sorted(p.name for p in killed.iterdir()) == [] and (running / "metrics.jsonl").is_file()
    _run_job(first[0])  # the listed command starts in the cleared folder
    assert (killed / FINAL_METRICS).is_file()


def test_a_bad_comparison_emits_nothing(tmp_path, recipe_file, tiny, capsys):
    jobs = tmp_path / "jobs.txt"
    assert main(["compare", "--config", recipe_file, "--models", "fcnn", "--set", *tiny,
                 "--output-dir", str(tmp_path / "cmp"), "--emit-jobs", str(jobs)]) == 2
    assert "unknown model 'fcnn'" in capsys.readouterr().err
    assert not jobs.exists() and not (tmp_path / "cmp").exists()
