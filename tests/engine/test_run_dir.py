"""RunDir: checkpoint pairs and the ``latest`` pointer, pruning, the weights offered for inference,
and rebuilding a trained model from a run directory."""
import re

import pytest
import torch
from torch import nn

import tinyseg
from visattn.engine.config import load_config
from visattn.engine.run_dir import RunDir, load_trained


def test_checkpoints_keep_the_newest_pairs(tmp_path):
    run, model = RunDir(tmp_path / "run"), nn.Linear(3, 2)
    assert run.latest_checkpoint() is None
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run.load_checkpoint()
    for step in (2, 4, 6):
        with torch.no_grad():
            model.weight.fill_(step)
        run.save_checkpoint(step, model, {"step": step, "rng": [torch.get_rng_state()]}, keep=2)
    assert run.latest_checkpoint() == "step_0000006"
    assert sorted(p.name for p in run.checkpoints.iterdir()) == [
        "latest", "step_0000004.safetensors", "step_0000004.state.pt", "step_0000006.safetensors", "step_0000006.state.pt"]
    weights, state = run.load_checkpoint()
    assert torch.equal(weights["weight"], torch.full((2, 3), 6.0)) and state["step"] == 6


def test_inference_weights_and_load_trained(tmp_path):
    run = RunDir(tmp_path / "run")
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
    cfg, model = load_trained(run.path)
    assert not model.training and cfg.model.name == "tinyseg:build"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), best.state_dict().values()))


def test_new_run_directory_names(tmp_path):
    assert RunDir.new(load_config(None, [f"run.dir={tmp_path / 'x'}"])).path == tmp_path / "x"
    path = RunDir.new(load_config(None, [f"run.root={tmp_path}"])).path
    assert path.parent == tmp_path and re.fullmatch(r"danet-digits-\d{8}-\d{6}", path.name)
