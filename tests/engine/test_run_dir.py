"""RunDir: checkpoint pairs and the ``latest`` pointer, pruning, falling back to the newest readable
pair, the weights offered for inference, rebuilding a trained model from a run directory, the lock
and the refusal of non-empty directories."""
import json
import os
import re
import socket
import subprocess
import sys

import pytest
import torch
from torch import nn

import tinyseg
from visattn.engine.config import load_config
from visattn.engine.run_dir import RunDir
from visattn.trained import load_trained


def _state(step: int) -> dict:
    return {"step": step, "optimizer": {}, "scheduler": {}, "scaler": {}, "best": 0.0, "rng": {}}


def test_checkpoints_keep_the_newest_pairs(tmp_path):
    run, model = RunDir(tmp_path / "run"), nn.Linear(3, 2)
    assert run.latest_checkpoint() is None
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run.load_checkpoint()
    for step in (2, 4, 6):
        with torch.no_grad():
            model.weight.fill_(step)
        run.save_checkpoint(step, model, _state(step), keep=2)
    assert run.latest_checkpoint() == "step_0000006"
    assert sorted(p.name for p in run.checkpoints.iterdir()) == [
        "latest", "step_0000004.safetensors", "step_0000004.state.pt", "step_0000006.safetensors", "step_0000006.state.pt"]
    name, weights, state = run.load_checkpoint()
    assert name == "step_0000006" and torch.equal(weights["weight"], torch.full((2, 3), 6.0)) and state["step"] == 6


def test_load_checkpoint_falls_back_to_the_newest_readable_pair(tmp_path):
    run, model = RunDir(tmp_path / "run"), nn.Linear(3, 2)
    for step in (2, 4, 6, 8):
        with torch.no_grad():
            model.weight.fill_(step)
        run.save_checkpoint(step, model, _state(step), keep=4)
    state_8 = run.checkpoints / "step_0000008.state.pt"
    state_8.write_bytes(state_8.read_bytes()[:100])  # truncated
    weights_6 = run.checkpoints / "step_0000006.safetensors"
    weights_6.write_bytes(weights_6.read_bytes()[:-8])
    torch.save({"step": 4}, run.checkpoints / "step_0000004.state.pt")  # not a training state
    with pytest.warns(UserWarning, match=r"resuming from step_0000002.*step_0000008\.state\.pt.*"
                                         r"step_0000006\.safetensors.*step_0000004\.state\.pt is not a training state"):
        name, weights, state = run.load_checkpoint()
    assert name == "step_0000002" and state["step"] == 2 and torch.equal(weights["weight"], torch.full((2, 3), 2.0))
    (run.checkpoints / "step_0000002.safetensors").unlink()
    with pytest.raises(ValueError, match=r"no readable checkpoint in .*step_0000002\.safetensors"):
        run.load_checkpoint()


def test_load_checkpoint_never_unpickles_code(tmp_path):
    run, marker = RunDir(tmp_path / "run"), tmp_path / "marker"
    run.save_checkpoint(2, nn.Linear(3, 2), _state(2), keep=1)
    (run.checkpoints / "step_0000002.state.pt").write_bytes(_pickled_call(os.mkdir, str(marker)))
    with pytest.raises(ValueError, match=r"step_0000002\.state\.pt holds objects other than tensors"):
        run.load_checkpoint()
    assert not marker.exists()


def _pickled_call(fn, *args) -> bytes:
    import pickle

    class Call:
        def __reduce__(self):
            return fn, args

    return pickle.dumps(Call(), protocol=2)


def test_inference_weights_and_load_trained(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match=r"not a run directory: .*run does not exist"):
        load_trained(run.path)
    run.path.mkdir()
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        load_trained(run.path)
    run.write_config(load_config(None, ["model.name=tinyseg:build", "model.kwargs={}"]))
    with pytest.raises(FileNotFoundError, match="no best.safetensors or model.safetensors"):
        run.inference_weights()
    torch.manual_seed(1)
    final, best = tinyseg.build(11), tinyseg.build(11)
    run.save_final(final)
    assert run.inference_weights() == run.final_weights
    run.save_best(best, {"step": 3, "mIoU": 0.5})
    assert run.inference_weights() == run.best_weights
    with pytest.raises(ValueError, match=r"'tinyseg:build' in .*config\.yaml would import .*--trust-code"):
        load_trained(run.path)
    cfg, model = load_trained(run.path, trust_code=True)
    assert not model.training and cfg.model.name == "tinyseg:build"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), best.state_dict().values()))


def test_new_run_directory_names(tmp_path):
    assert RunDir.new(load_config(None, [f"run.dir={tmp_path / 'x'}"])).path == tmp_path / "x"
    path = RunDir.new(load_config(None, [f"run.root={tmp_path}"])).path
    assert path.parent == tmp_path and re.fullmatch(r"danet-digits-\d{8}-\d{6}", path.name)


def test_lock_is_exclusive_and_released(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.lock():
        assert run.lock_file.read_text() == f"{os.getpid()} {socket.gethostname()}"
        with pytest.raises(FileExistsError, match=f"in use by process {os.getpid()} on"):
            with run.lock():
                pass
    assert not run.path.exists()  # created by the lock, left empty
    run.path.mkdir()
    with pytest.raises(RuntimeError), run.lock():
        raise RuntimeError
    assert run.path.is_dir() and not run.lock_file.exists()


def test_lock_of_a_dead_process_is_taken_over_a_live_one_is_not(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.lock_file.write_text(f"{live.pid} {socket.gethostname()}")
        with pytest.raises(FileExistsError, match=f"in use by process {live.pid} .*delete .*lock"):
            with run.lock():
                pass
        run.lock_file.write_text(f"{live.pid} another-host")
        with pytest.raises(FileExistsError, match="in use by process"):
            with run.lock():
                pass
    finally:
        live.kill()
        live.wait()
    run.lock_file.write_text(f"{live.pid} {socket.gethostname()}")  # that process is gone
    with run.lock():
        assert run.lock_file.read_text().startswith(f"{os.getpid()} ")
    assert not run.lock_file.exists()
    run.lock_file.write_text(f"{os.getpid()} {socket.gethostname()}")  # this PID, left by another process
    with run.lock():
        pass


def test_ensure_empty(tmp_path):
    RunDir(tmp_path / "missing").ensure_empty()
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.lock_file.write_text("1 host")
    run.ensure_empty()
    (run.path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"is not empty \(notes\.txt\)"):
        run.ensure_empty()
    run.save_checkpoint(2, nn.Linear(3, 2), _state(2), keep=1)
    with pytest.raises(FileExistsError, match="already holds checkpoints.*--resume"):
        run.ensure_empty()


def test_clear_deletes_the_run_layout_and_nothing_else(tmp_path):
    """What a run killed before its first checkpoint may leave: its files, half-written temporary
    files, a checkpoint without ``latest``; with a foreign file beside them nothing is deleted."""
    run = RunDir(tmp_path / "run")
    run.write_config(load_config(None, ["model.name=tinyseg:build", "model.kwargs={}"]))
    run.metrics.write_text("{}\n")
    run.save_best(nn.Linear(3, 2), {"step": 1, "mIoU": 0.1})
    run.save_checkpoint(2, nn.Linear(3, 2), _state(2), keep=1)
    (run.checkpoints / "latest").unlink()
    (run.checkpoints / ".step_0000004.safetensors.k2_x9.tmp").write_bytes(b"half")
    (run.path / ".model.safetensors.ab3d.tmp").write_bytes(b"half")
    run.tensorboard.mkdir()
    (run.tensorboard / "events.out.tfevents.1.host.2.0").write_bytes(b"e")
    (run.path / "final.json").write_text("{}")
    (run.path / "notes.txt").write_text("mine")
    (run.checkpoints / "README").write_text("mine")
    before = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match=r"holds files that are not a run's \(checkpoints/README, final\.json, "
                                              r"notes\.txt\)"):
        run.clear()
    assert {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()} == before
    (run.path / "notes.txt").unlink()
    (run.checkpoints / "README").unlink()
    run.clear(also=("final.json",))
    assert list(run.path.iterdir()) == []
    RunDir(tmp_path / "missing").clear()


def test_clear_refuses_a_symlinked_run_and_a_symlinked_file(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "config.yaml").write_text("mine")
    run = RunDir(tmp_path / "run")
    run.path.symlink_to(target, target_is_directory=True)
    with pytest.raises(FileExistsError, match=f"run directory {run.path} is a symbolic link"):
        run.clear()
    run.path.unlink()
    run.path.mkdir()
    (run.path / "config.yaml").symlink_to(target / "config.yaml")
    with pytest.raises(FileExistsError, match=r"not a run's \(config\.yaml\)"):
        run.clear()
    assert (target / "config.yaml").read_text() == "mine"


def test_best_weights_carry_their_record_and_best_json_names_them(tmp_path, monkeypatch):
    """A kill between the two writes of save_best leaves best.json naming the previous weights, and
    the weights with their own record."""
    import hashlib

    import visattn.engine.run_dir as run_dir

    run = RunDir(tmp_path / "run")
    run.save_best(nn.Linear(3, 2), {"step": 2, "mIoU": 0.25})
    copy = json.loads(run.best_metrics.read_text())
    assert copy == {"step": 2, "mIoU": 0.25, "weights": "best.safetensors",
                    "weights_sha256": hashlib.sha256(run.best_weights.read_bytes()).hexdigest()}
    assert run.best_record() == {"step": 2, "mIoU": 0.25}

    def killed(path, write):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_dir, "atomic_write", killed)
    with pytest.raises(KeyboardInterrupt):
        run.save_best(nn.Linear(3, 2), {"step": 4, "mIoU": 0.5})
    assert run.best_record() == {"step": 4, "mIoU": 0.5}
    assert json.loads(run.best_metrics.read_text())["weights_sha256"] != hashlib.sha256(
        run.best_weights.read_bytes()).hexdigest()
    assert RunDir(tmp_path / "none").best_record() is None
