"""The cost columns of a comparison: parameters and peak memory against the models, and the timed step,
which is the trainer's own with every ``train`` switch applied."""
import json

import pytest
import torch
from torch.nn.modules.module import register_module_forward_pre_hook

import visattn.comparison.cost as cost_module
from visattn.comparison import Entry, entry_config, measure_cost
from visattn.engine.config import load_config
from visattn.engine.step import TrainingStep
from visattn.models import create_model
from visattn.models.segmentation import Segmentor


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


@pytest.fixture
def timed(monkeypatch) -> dict[str, list]:
    """What the steps that :func:`measure_cost` takes do: ``"runs"``, one entry per call of
    :meth:`TrainingStep.run`; ``"clipped"``, the ``max_norm`` of every gradient clipping;
    ``"channels_last"``, whether each training input reaching a segmentor is in channels_last memory format.
    The peak-memory subprocess is left out (it runs the same step, in another process)."""
    seen = {"runs": [], "clipped": [], "channels_last": []}
    run, clip = TrainingStep.run, torch.nn.utils.clip_grad_norm_

    def run_recorded(self, *args, **kwargs):
        seen["runs"].append(self)
        return run(self, *args, **kwargs)

    def clip_recorded(parameters, max_norm, *args, **kwargs):
        seen["clipped"].append(max_norm)
        return clip(parameters, max_norm, *args, **kwargs)

    def record_input(module, args):
        if isinstance(module, Segmentor) and torch.is_grad_enabled():  # not the FLOP count's forward
            seen["channels_last"].append(args[0].is_contiguous(memory_format=torch.channels_last))

    monkeypatch.setattr(TrainingStep, "run", run_recorded)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_recorded)
    monkeypatch.setattr(cost_module, "peak_memory", lambda cfg, threads: {"error": "not measured here"})
    hook = register_module_forward_pre_hook(record_input)
    yield seen
    hook.remove()


@pytest.mark.parametrize("switch", ["train.channels_last=true", "train.clip_grad=0.001"])
def test_the_timed_step_is_the_trainers_and_applies_the_switches(switch, recipe_file, tiny, timed):
    fcn = Entry("fcn", "fcn")
    plain = entry_config(load_config(recipe_file, tiny), fcn, 0)
    switched = entry_config(load_config(recipe_file, [*tiny, switch]), fcn, 0)
    measure_cost({"fcn": plain}, torch.device("cpu"), warmup=1, reps=2, log=lambda line: None)
    assert len(timed["runs"]) == 3 and timed["clipped"] == [] and timed["channels_last"] == [False] * 3
    for seen in timed.values():
        seen.clear()
    result = measure_cost({"fcn": switched}, torch.device("cpu"), warmup=1, reps=2, log=lambda line: None)
    assert len(timed["runs"]) == 3 and result["entries"]["fcn"]["ms_per_step"] > 0
    if switch == "train.clip_grad=0.001":
        assert timed["clipped"] == [0.001] * 3 and timed["channels_last"] == [False] * 3
    else:
        assert timed["clipped"] == [] and timed["channels_last"] == [True] * 3


def test_the_cost_is_kept_for_the_same_measurement_only(recipe_file, tiny, tmp_path, monkeypatch):
    measured = []

    def measure(configs, device, log):
        measured.append(sorted(configs))
        return {"entries": {name: {"params_m": 1.0, "gflops": 2.0, "ms_per_step": 3.0, "peak_train_mb": None,
                                   "memory_method": "not measured"} for name in configs},
                "setup": {"device": "cpu", "threads": 1, "batch": [4, 3, 32, 32], "eval_size": [32, 32],
                          "warmup_steps": 2, "timed_steps": 5}}

    monkeypatch.setattr(cost_module, "measure_cost", measure)
    fcn, sge = Entry("fcn", "fcn"), Entry("attnet-sge", "attnet", "sge")
    configs = {e.name: entry_config(load_config(recipe_file, tiny), e, 0) for e in (fcn, sge)}
    path, cpu, lines = tmp_path / "cost.json", torch.device("cpu"), []
    first = cost_module.measure_cost_once(path, configs, cpu, log=lines.append)
    assert cost_module.measure_cost_once(path, configs, cpu, log=lines.append) == first
    assert measured == [["attnet-sge", "fcn"]] and lines == [f"cost: measured before, read from {path}"]
    cost_module.measure_cost_once(path, {"fcn": configs["fcn"]}, cpu, log=lines.append)  # other entries
    longer = {"fcn": entry_config(load_config(recipe_file, [*tiny, "train.batch_size=2"]), fcn, 0)}
    cost_module.measure_cost_once(path, longer, cpu, log=lines.append)  # another config
    assert len(measured) == 3
    record = json.loads(path.read_text())
    record["cost"]["entries"]["fcn"]["ms_per_step"] = "fast"
    path.write_text(json.dumps(record))
    cost_module.measure_cost_once(path, longer, cpu, log=lines.append)
    assert len(measured) == 4
    assert lines[-1] == f"cost: {path} is not a cost record (entry 'fcn' lacks a number of params_m, gflops or " \
                        "ms_per_step); measuring again"
    path.write_text("{")
    cost_module.measure_cost_once(path, longer, cpu, log=lines.append)
    assert len(measured) == 5 and lines[-1].startswith(f"cost: {path} is not valid JSON")
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        cost_module.measure_cost_once(path, longer, cpu, log=lines.append)  # another thread count
    finally:
        torch.set_num_threads(threads)
    assert len(measured) == 6
