"""The runs of a comparison: parallel workers share out the cores, a failed worker stops the rest."""
import json
import os

import pytest

from visattn.comparison import FINAL_METRICS, CompareDir, Entry, entry_config
from visattn.comparison.runner import Job, Progress, RunFailedError, train_in_parallel
from visattn.engine.config import load_config

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
