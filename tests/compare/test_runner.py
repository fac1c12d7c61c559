"""The runs of a comparison: parallel workers share out the cores, a failed worker stops the rest,
a Ctrl-C to the comparison alone stops the workers at a step boundary."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from visattn.comparison import FINAL_METRICS, CompareDir, Entry, entry_config
from visattn.comparison.runner import Job, Progress, RunFailedError, train_in_parallel
from visattn.engine.config import load_config

import visattn

ENTRIES = (Entry("fcn", "fcn"), Entry("attnet-sge", "attnet", "sge"))


def test_runs_trained_in_parallel_workers_split_the_cores(compared):
    out, _, printed = compared
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for entry, seed in (("attnet-sge", 0), ("fcn", 1), ("attnet-sge", 1)):
        record = json.loads((out / "runs" / entry / f"seed{seed}" / FINAL_METRICS).read_text())
        assert record["threads"] == max(1, cores // 2)
        assert (out / "logs" / f"{entry}-seed{seed}.log").is_file()
        assert f"start {entry} seed {seed} ({max(1, cores // 2)} threads)" in printed


def test_a_failed_worker_is_reported_and_nothing_more_starts(tmp_path, recipe_file, tiny):
    base = load_config(recipe_file, [*tiny, "data.dataset=folder"])  # no data.root: the worker's training fails
    cdir, lines = CompareDir(tmp_path), []
    jobs = [Job(e, 0, entry_config(base, e, 0, cdir.run(e, 0).path), cdir.run(e, 0), cdir.log(e, 0)) for e in ENTRIES]
    with pytest.raises(RunFailedError, match=r"1 run\(s\) failed: fcn seed 0 \(exit 1: ValueError: dataset 'folder' "
                                             r"needs data.root.*fcn-seed0.log"):
        train_in_parallel(jobs, 1, 0, Progress(2, lines.append))
    assert lines[0].startswith("start fcn seed 0 (") and lines[-1].startswith("fcn seed 0 failed")
    assert not cdir.log(ENTRIES[1], 0).exists()  # the second run never started


def test_sigint_to_the_comparison_alone_stops_its_workers(tmp_path, recipe_file, tiny):
    """SIGINT to the comparison's process (its workers run in sessions of their own, as a Ctrl-C
    from a terminal would not reach them): it is passed on, each worker checkpoints the step it is
    at and exits 130, and the comparison exits 130 without a report, long before the runs' end."""
    out = tmp_path / "cmp"
    env = {**os.environ, "PYTHONPATH": str(Path(visattn.__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "visattn", "compare", "--config", recipe_file, "--models", "fcn",
                             "--attentions", "sge", "--seeds", "1", "--jobs", "2", "--set", *tiny,
                             "train.iters=100000", "--output", str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    runs = [out / "runs" / entry.name / "seed0" for entry in ENTRIES]
    deadline = time.monotonic() + 240
    while not all((run / "metrics.jsonl").is_file() for run in runs):  # both have logged a step
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, proc.stderr.read()
    proc.stderr.close()
    for run in runs:
        step = int((run / "checkpoints" / "latest").read_text().removeprefix("step_"))
        assert 0 < step < 100000 and not (run / FINAL_METRICS).exists()
    assert not (out / "report.json").exists()
