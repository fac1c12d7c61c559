"""Stopping a run at any moment (SIGINT, SIGTERM, SIGKILL, an error, a NaN loss) and resuming it
reproduces the uninterrupted run bit for bit, every weight and BatchNorm buffer included."""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from visattn.cli import main as cli_main
from visattn.engine import train
from visattn.engine.config import load_config
from visattn.engine.trainer import NonFiniteLossError

import tinyseg

HERE = Path(__file__).resolve().parent
# BatchNorm + dropout (the RNG) + accumulation + flip; checkpoints at steps 2, 4 and 6
RUN = ["model.name=tinyseg:build_bn", "model.kwargs={dropout: 0.3}", "data.digits.train_length=24",
       "data.digits.val_length=8", "data.digits.size=32", "data.digits.digit_size=[8,16]", "data.crop_size=[32,32]",
       "data.flip=true", "train.batch_size=8", "train.accum_steps=2", "train.iters=6", "train.warmup_iters=2",
       "train.log_every=1", "train.ckpt_every=2", "eval.batch_size=8"]
# (event, its nth occurrence) inside step 3 (4 for the checkpoint write), and the step a stop signal leaves
POINTS = {"forward": (6, 3), "backward": (5, 3), "update": (3, 3), "checkpoint": (2, 4)}


def _run(run_dir: Path, *overrides: str) -> dict:
    return train(load_config(None, RUN + [f"run.dir={run_dir}", *overrides]), quiet=True, trust_code=True)


def _resume(run_dir: Path) -> dict:
    return train(load_config(run_dir / "config.yaml"), resume=run_dir, quiet=True, trust_code=True)


def _latest(run_dir: Path) -> str:
    return (run_dir / "checkpoints/latest").read_text()


def _losses(run_dir: Path) -> list:
    return [json.loads(line).get("loss") for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    assert _run(run_dir)["step"] == 6
    return run_dir


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """Every tensor of the final weights (BatchNorm buffers included) and every logged loss agree."""
    a, b = load_file(reference / "model.safetensors"), load_file(run_dir / "model.safetensors")
    assert set(a) == set(b) and "stem.1.num_batches_tracked" in a
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert _losses(run_dir) == _losses(reference)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("point", list(POINTS))
def test_stop_signal_inside_a_step_resumes_exactly(tmp_path, straight, point, signum):
    nth, stop_step = POINTS[point]
    previous = signal.getsignal(signum)
    with tinyseg.signal_during(point, nth, signum) as events:
        stopped = _run(tmp_path / "run")
    assert signal.getsignal(signum) is previous
    assert stopped["interrupted"] and stopped["step"] == stop_step
    assert _latest(tmp_path / "run") == f"step_{stop_step:07d}"
    assert events["checkpoint"] == 2  # steps 2 and stop_step: a checkpoint of the stop step is not written twice
    resumed = _resume(tmp_path / "run")
    assert resumed["step"] == 6 and not resumed["interrupted"]
    assert_same_run(tmp_path / "run", straight)


# killed inside a step, nothing on disk changes wherever it is; inside a checkpoint write, half of it is there
@pytest.mark.parametrize("point", ["update", "checkpoint"])
def test_sigkill_at_any_point_resumes_exactly(tmp_path, straight, point):
    nth, _ = POINTS[point]
    run_dir = tmp_path / "run"
    script = ("import signal, sys, tinyseg\n"
              "from visattn.engine import train\n"
              "from visattn.engine.config import load_config\n"
              f"with tinyseg.signal_during({point!r}, {nth}, signal.SIGKILL):\n"
              f"    train(load_config(None, {RUN + [f'run.dir={run_dir}']!r}), quiet=True, trust_code=True)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE.parents[1] / "src")]),
               OMP_NUM_THREADS=str(torch.get_num_threads()))  # the same float summation order
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert _latest(run_dir) == "step_0000002"
    assert not (run_dir / "model.safetensors").exists()
    if point == "checkpoint":  # killed between step 4's weights and state files
        assert [p.name for p in (run_dir / "checkpoints").glob("step_0000004*")] == ["step_0000004.safetensors"]
    assert _resume(run_dir)["step"] == 6
    assert_same_run(run_dir, straight)


def test_weight_average_resumes_exactly(tmp_path):
    """train.ema's average is part of the checkpoint: stopped by SIGTERM inside step 3 and resumed,
    the run ends with the uninterrupted run's average (model.safetensors), trained weights and
    checkpointed average, bit for bit."""
    assert _run(tmp_path / "straight", "train.ema=0.6")["step"] == 6
    with tinyseg.signal_during("update", 3, signal.SIGTERM):
        assert _run(tmp_path / "run", "train.ema=0.6")["step"] == 3
    assert _resume(tmp_path / "run")["step"] == 6
    assert_same_run(tmp_path / "run", tmp_path / "straight")
    checkpoints = [tmp_path / run / "checkpoints" for run in ("straight", "run")]
    a, b = (load_file(c / "step_0000006.safetensors") for c in checkpoints)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    a, b = (torch.load(c / "step_0000006.state.pt", weights_only=True)["ema"] for c in checkpoints)
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    average = load_file(tmp_path / "straight/model.safetensors")
    trained = load_file(checkpoints[0] / "step_0000006.safetensors")
    assert not torch.equal(average["body.weight"], trained["body.weight"])  # the average is saved, not the weights


def test_keyboard_interrupt_raised_mid_step_rolls_back_batchnorm(tmp_path, straight):
    """A KeyboardInterrupt raised by code in the second forward of step 3, after the first forward
    updated the BatchNorm statistics: step 2 is saved as it was and the resumed run is exact."""
    stopped = _run(tmp_path / "run", "model.kwargs.interrupt_after=5")
    assert stopped["interrupted"] and stopped["step"] == 2 and _latest(tmp_path / "run") == "step_0000002"
    cfg = load_config(tmp_path / "run/config.yaml", ["model.kwargs.interrupt_after=null"])
    assert train(cfg, resume=tmp_path / "run", quiet=True, trust_code=True)["step"] == 6
    assert_same_run(tmp_path / "run", straight)


def _poison_loss_at(monkeypatch, nth_forward: int) -> None:
    """Make the ``nth_forward``-th training forward's outputs NaN."""
    import visattn.engine.trainer as trainer

    build_model, calls = trainer.build_model, []

    def poison(module, inputs, output):
        if module.training:
            calls.append(1)
            if len(calls) == nth_forward:
                return {k: v * float("nan") for k, v in output.items()}
        return None

    def build_poisoned(*args, **kwargs):
        model = build_model(*args, **kwargs)
        model.register_forward_hook(poison)
        return model

    monkeypatch.setattr(trainer, "build_model", build_poisoned)


def test_nan_loss_stops_before_the_update_and_saves_nothing(tmp_path, monkeypatch):
    _poison_loss_at(monkeypatch, 10)  # step 5's second micro-batch
    with pytest.raises(NonFiniteLossError, match="at step 5 .*nan"):
        _run(tmp_path / "run")
    assert _latest(tmp_path / "run") == "step_0000004"
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").glob("step_*")) == [
        "step_0000002.safetensors", "step_0000002.state.pt", "step_0000004.safetensors", "step_0000004.state.pt"]
    assert max(r["step"] for r in map(json.loads, (tmp_path / "run/metrics.jsonl").read_text().splitlines())) == 4


def test_nan_loss_exits_the_cli_with_2_naming_the_step(tmp_path, monkeypatch, capsys):
    _poison_loss_at(monkeypatch, 5)  # step 3's first micro-batch
    sets = [a for s in RUN + [f"run.dir={tmp_path / 'run'}"] for a in ("--set", s)]
    assert cli_main(["train", "--quiet", "--trust-code", *sets]) == 2
    err = capsys.readouterr().err
    assert "loss is not finite at step 3" in err and "latest checkpoint step_0000002" in err


def test_ddp_processes_stop_after_the_same_step(tmp_path):
    """SIGTERM to process 1 alone, during the update of step 3: both processes learn of it in step
    4's all-reduce, so both stop after step 4 (its periodic checkpoint, written once) instead of
    one waiting forever for the other."""
    sets = [a for s in RUN + [f"run.dir={tmp_path / 'run'}"] for a in ("--set", s)]
    script = tmp_path / "signalled_train.py"
    script.write_text("import contextlib, os, signal, sys, tinyseg\n"
                      "from visattn.cli import main\n"
                      "hook = tinyseg.signal_during('update', 3, signal.SIGTERM) if os.environ['RANK'] == '1' "
                      "else contextlib.nullcontext()\n"
                      f"with hook:\n    sys.exit(main(['train', '--quiet', '--trust-code', *{sets!r}]))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE.parents[1] / "src")]),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], env=env, capture_output=True, text=True, timeout=240)
    # "interrupted" (130) from the CLI; torchrun SIGTERMs (-15) a process still exiting when another has
    exit_codes = set(re.findall(r"exitcode\s*:\s*(-?\d+)", proc.stderr))
    assert "130" in exit_codes and exit_codes <= {"130", "-15"}, proc.stderr[-3000:]
    assert "stopped by a signal to another process after step 4/6" in proc.stderr, proc.stderr[-3000:]
    assert _latest(tmp_path / "run") == "step_0000004"
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").glob("*.state.pt")) == [
        "step_0000002.state.pt", "step_0000004.state.pt"]


def test_sigint_in_the_final_evaluation_exits_130_and_resumes(tmp_path, straight, capsys):
    """Ctrl-C while the final weights are evaluated: the evaluation stops between two batches, the
    command exits 130 naming the final evaluation, and a resumed run evaluates again."""
    sets = [a for s in RUN + [f"run.dir={tmp_path / 'run'}", "eval.batch_size=2"] for a in ("--set", s)]
    with tinyseg.signal_during("evaluation", 1, signal.SIGINT) as events:
        assert cli_main(["train", "--quiet", "--trust-code", *sets]) == 130
    assert events["evaluation"] == 1  # of the four batches, only the first ran
    assert "stopped by SIGINT in the final evaluation after step 6/6" in capsys.readouterr().err
    assert _latest(tmp_path / "run") == "step_0000006"
    assert cli_main(["train", "--quiet", "--trust-code", "--resume", str(tmp_path / "run")]) == 0
    assert "after 6 steps" in capsys.readouterr().out
    assert_same_run(tmp_path / "run", straight)


def test_sigint_in_a_periodic_evaluation_checkpoints_it_as_due(tmp_path):
    """Ctrl-C during step 4's evaluation: step 4 is checkpointed, the resumed run evaluates it first
    and then logs what the uninterrupted run logs."""
    periodic = ("train.eval_every=4", "eval.batch_size=2")
    assert _run(tmp_path / "straight", *periodic)["step"] == 6
    with tinyseg.signal_during("evaluation", 2, signal.SIGINT) as events:
        stopped = _run(tmp_path / "run", *periodic)
    assert stopped["interrupted"] and stopped["step"] == 4 and events["evaluation"] == 2
    assert _latest(tmp_path / "run") == "step_0000004"
    assert torch.load(tmp_path / "run/checkpoints/step_0000004.state.pt", weights_only=True)["evaluation_due"]
    assert _resume(tmp_path / "run")["step"] == 6
    assert_same_run(tmp_path / "run", tmp_path / "straight")

    def evaluations(run_dir):
        return [(r["step"], r["mIoU"]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
                if "mIoU" in r]

    assert [step for step, _ in evaluations(tmp_path / "run")] == [4, 6]
    assert evaluations(tmp_path / "run") == evaluations(tmp_path / "straight")


def test_a_second_sigint_stops_inside_the_step(tmp_path, straight):
    """One SIGINT in step 3 stops after step 3; a second one in the same step stops at once: step 3
    is given up (its BatchNorm statistics rolled back) and the run resumes exactly from step 2."""
    with tinyseg.signal_during("forward", 5, signal.SIGINT), tinyseg.signal_during("forward", 6, signal.SIGINT):
        stopped = _run(tmp_path / "run")
    assert stopped["interrupted"] and stopped["step"] == 2 and _latest(tmp_path / "run") == "step_0000002"
    assert _resume(tmp_path / "run")["step"] == 6
    assert_same_run(tmp_path / "run", straight)
