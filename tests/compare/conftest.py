"""The comparison every test of this package reads from (trained once per session), and the tiny recipe
it and the other tests use."""
import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import visattn
from visattn.cli import main
from visattn.comparison import FINAL_METRICS

ROOT = Path(__file__).resolve().parents[2]
SRC = Path(visattn.__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "digits_danet.yaml")
TINY = ["train.iters=2", "data.digits.train_length=16", "data.digits.val_length=8", "data.digits.size=32",
        "data.crop_size=[32,32]", "data.digits.digit_size=[8,16]", "train.batch_size=4", "train.eval_every=null",
        "train.warmup_iters=0"]


@pytest.fixture(scope="session")
def recipe_file() -> str:
    """The recipe of the tests' comparisons."""
    return CONFIG


@pytest.fixture(scope="session")
def tiny() -> list[str]:
    """Overrides that make the recipe train in seconds (2 steps of 4 digit scenes of 32x32)."""
    return list(TINY)


@pytest.fixture(scope="session")
def mtimes():
    """The modification times of a run's final record, final weights and latest checkpoint."""
    return _mtimes


def _command(output: Path, *extra: str) -> list[str]:
    return ["compare", "--config", CONFIG, "--models", "fcn", "--attentions", "sge", "--seeds", "2",
            "--set", *TINY, "--output", str(output), *extra]


def _mtimes(run: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (run / FINAL_METRICS, run / "model.safetensors",
                                                    run / "checkpoints" / "latest")}


@pytest.fixture(scope="session")
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
