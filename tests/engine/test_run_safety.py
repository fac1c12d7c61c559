"""What a shared or damaged run directory cannot do: run code on eval/predict/explain, be trained in
by two processes, have a new run written over it, change a resumed run's schedule, loss or data, or
fail a resume while an older complete checkpoint is on disk, or make a run write through a planted
link; bad checkpoints are errors naming the file.
What an untrusted config cannot do: point timm at a file, reach the network while it is resolved.
Every file a run writes keeps the umask's mode; the file system's refusals are one line."""
import json
import os
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from visattn.cli import main
from visattn.engine import Trainer, load_config, train
from visattn.engine.distributed import resolve_device

TINY = ["model.name=tinyseg:build", "model.kwargs={}", "data.digits.train_length=16", "data.digits.val_length=4",
        "data.digits.size=32", "data.digits.digit_size=[8,16]", "data.crop_size=[32,32]", "train.batch_size=8",
        "train.iters=4", "train.ckpt_every=2", "train.keep_ckpts=2", "train.eval_every=null", "eval.batch_size=4"]


def _train(run, *extra):
    """``visattn train --trust-code`` of the tiny config into ``run``; its exit status."""
    return main(["train", "--quiet", "--trust-code", *[a for s in TINY for a in ("--set", s)],
                 "--set", f"run.dir={run}", *extra])


def _files(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_reading_a_run_never_imports_its_code(tmp_path, capsys):
    """A shared run folder whose config.yaml names ``torch.hub:load`` of its own hubconf.py."""
    folder, marker = tmp_path / "shared_run", tmp_path / "marker"
    folder.mkdir()
    (folder / "hubconf.py").write_text(
        f"import pathlib\nimport torch\n\npathlib.Path({str(marker)!r}).write_text('ran')\n\n\n"
        "def x(num_classes):\n    return torch.nn.Conv2d(3, num_classes, 1)\n")
    hub = {"repo_or_dir": str(folder), "model": "x", "source": "local"}
    config = {"model": {"name": "torch.hub:load", "kwargs": hub}, "data": {"digits": {"val_length": 4}}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    save_file({"weight": torch.zeros(11, 3, 1, 1), "bias": torch.zeros(11)}, folder / "best.safetensors")
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)

    for command in (["eval", "--run", str(folder)],
                    ["predict", str(image), "--run", str(folder), "--output", str(tmp_path / "pred")],
                    ["explain", str(image), "--run", str(folder), "--output", str(tmp_path / "explain")]):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert "'torch.hub:load'" in err and str(folder / "config.yaml") in err and "--trust-code" in err
        assert not marker.exists()
    assert main(["eval", "--run", str(folder), "--trust-code"]) == 0  # the user's explicit choice
    assert marker.read_text() == "ran"


def test_a_run_directory_in_use_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = load_config(None, TINY + [f"run.dir={run}"])
    with Trainer(cfg, resolve_device("cpu"), quiet=True, trust_code=True) as first:
        assert (run / "lock").read_text() == f"{os.getpid()} {socket.gethostname()}"
        with pytest.raises(FileExistsError, match=f"in use by process {os.getpid()}"):
            train(cfg, quiet=True, trust_code=True)
        first.fit()
        assert main(["train", "--resume", str(run), "--trust-code"]) == 2
        assert "in use by process" in capsys.readouterr().err
    assert not (run / "lock").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "latest", "step_0000002.safetensors", "step_0000002.state.pt", "step_0000004.safetensors",
        "step_0000004.state.pt"]


def test_another_live_process_holds_the_run_a_dead_one_does_not(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / "lock").write_text(f"{live.pid} {socket.gethostname()}")
        assert _train(run) == 2
        assert f"in use by process {live.pid}" in capsys.readouterr().err
        assert [p.name for p in run.iterdir()] == ["lock"]
    finally:
        live.kill()
        live.wait()
    assert _train(run) == 0  # a SIGKILLed run's lock is stale
    assert (run / "model.safetensors").is_file() and not (run / "lock").exists()


@pytest.mark.parametrize("case", ["pruned_run", "unrelated"])
def test_a_new_run_never_writes_into_a_non_empty_directory(tmp_path, capsys, case):
    run = tmp_path / "run"
    if case == "pruned_run":  # a finished run whose checkpoints were deleted to save space
        assert _train(run) == 0
        for path in (run / "checkpoints").iterdir():
            path.unlink()
        (run / "checkpoints").rmdir()
    else:
        run.mkdir()
        (run / "config.yaml").write_text("my: own file\n")
    before = _files(run)
    assert _train(run) == 2
    assert f"run directory {run} is not empty" in capsys.readouterr().err
    assert _files(run) == before


def test_a_resumed_run_keeps_its_schedule(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run) == 0
    before = _files(run)
    assert main(["train", "--resume", str(run), "--trust-code", "--set", "train.iters=6", "--set", "train.lr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "train.iters=6 (the run's is 4)" in err and "train.lr=0.1 (the run's is 0.002)" in err
    assert _files(run) == before


@pytest.mark.parametrize("override, named", [
    ("data.dataset=occluded_digits", "data.dataset='occluded_digits' (the run's is 'digits')"),
    ("train.loss={dice: 1}", "train.loss={'dice': 1} (the run's is None)"),
    ("data.color_jitter=0.5", "data.color_jitter=0.5 (the run's is 0.0)"),
])
def test_a_resumed_run_keeps_its_loss_and_data(tmp_path, capsys, override, named):
    run = tmp_path / "run"
    assert _train(run) == 0
    before = _files(run)
    assert main(["train", "--resume", str(run), "--trust-code", "--quiet", "--set", override]) == 2
    assert named in capsys.readouterr().err
    assert _files(run) == before  # config.yaml not rewritten
    assert main(["train", "--resume", str(run), "--trust-code", "--quiet", "--set", "data.workers=1"]) == 0


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, capsys):
    """A crash while appending (a full disk) leaves a line cut short at the end of metrics.jsonl:
    the resumed run says it drops it and goes on; every line is a record afterwards."""
    run = tmp_path / "run"
    assert _train(run) == 0
    logged = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(logged + "{")
    with pytest.warns(UserWarning, match=r"metrics\.jsonl: dropped its last line \(\d+\), cut short"):
        assert main(["train", "--resume", str(run), "--trust-code", "--quiet"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[:-1] == [json.loads(line) for line in logged.splitlines()]  # and the final evaluation again
    assert records[-1]["step"] == 4 and "mIoU" in records[-1]


@pytest.mark.parametrize("line", ["[1, 2]", "{", '{"loss": 1}', '{"step": "4"}'])
def test_a_foreign_metrics_line_is_an_error_naming_it_and_nothing_is_rewritten(tmp_path, capsys, line):
    run = tmp_path / "run"
    assert _train(run) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], line, *lines[1:]]) + "\n")
    before = _files(run)
    assert main(["train", "--resume", str(run), "--trust-code", "--quiet"]) == 2
    assert "metrics.jsonl, line 2: not a" in capsys.readouterr().err
    assert _files(run) == before  # config.yaml and metrics.jsonl as they were


def test_resume_falls_back_to_the_newest_readable_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run) == 0
    straight = load_file(run / "model.safetensors")
    state = run / "checkpoints/step_0000004.state.pt"
    state.write_bytes(state.read_bytes()[:200])  # killed while the disk filled up
    with pytest.warns(UserWarning, match=r"resuming from step_0000002.*skipped: cannot read .*step_0000004\.state\.pt"):
        assert main(["train", "--resume", str(run), "--trust-code", "--quiet"]) == 0
    assert "after 4 steps" in capsys.readouterr().out
    resumed = load_file(run / "model.safetensors")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)  # steps 3 and 4 replayed exactly
    assert torch.load(state, weights_only=True)["step"] == 4


class _MakeDir:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.mark.parametrize("content", ["pickled_code", "garbage", "foreign_state"])
def test_a_bad_state_file_is_an_error_naming_it(tmp_path, capsys, content):
    run, marker = tmp_path / "run", tmp_path / "marker"
    assert _train(run) == 0
    for path in (run / "checkpoints").glob("step_0000002.*"):
        path.unlink()
    state = run / "checkpoints/step_0000004.state.pt"
    if content == "pickled_code":
        state.write_bytes(pickle.dumps({"step": _MakeDir(str(marker))}, protocol=2))
    elif content == "garbage":
        state.write_bytes(b"\x00" * 64)
    else:  # every key present, none of them this run's
        torch.save({"step": 4, "optimizer": {"x": 1}, "scheduler": {}, "scaler": {}, "best": 0.0, "rng": {}}, state)
    assert main(["train", "--resume", str(run), "--trust-code", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visattn train: error:") and "Traceback" not in err
    assert str(state if content != "foreign_state" else run / "checkpoints") in err
    assert not marker.exists()


def test_a_failed_start_leaves_no_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    # refused while the trainer is set up, after the config was resolved
    assert _train(run, "--set", "data.digits.train_length=4", "--set", "train.batch_size=8") == 2
    assert "smaller than one batch" in capsys.readouterr().err
    assert main(["train", "--quiet", *[a for s in TINY for a in ("--set", s)], "--set", f"run.dir={run}"]) == 2
    assert "--trust-code" in capsys.readouterr().err
    assert not run.exists()


def test_resume_of_a_missing_directory_says_so(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert f"not a run directory: {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err


def test_every_file_of_a_run_and_of_save_pretrained_honours_the_umask(tmp_path):
    """Under umask 022 every file a run writes (config, metrics, events, checkpoints, best and final
    weights, class weights) and save_pretrained's are 0644, every folder 0755."""
    from visattn.hub import save_pretrained
    from visattn.models import create_model

    kwargs = {"encoder": "resnet18", "encoder_kwargs": {"channels": [16, 32, 64, 128]}}
    run = tmp_path / "run"
    old = os.umask(0o022)
    try:
        assert _train(run, "--set", "train.eval_every=2", "--set", "train.class_weights=median_frequency") == 0
        save_pretrained(create_model("fcn", num_classes=3, **kwargs), tmp_path / "pretrained", model_name="fcn",
                        model_kwargs=kwargs, num_classes=3)
    finally:
        os.umask(old)
    written = sorted(run.rglob("*")) + sorted((tmp_path / "pretrained").rglob("*"))
    kinds = {p.name.split(".")[-1] if "." in p.name else p.name for p in written if p.is_file()}
    assert {"yaml", "jsonl", "json", "safetensors", "pt", "latest"} <= kinds
    assert {p.name for p in run.iterdir()} >= {"best.safetensors", "best.json", "model.safetensors",
                                               "class_weights.json", "checkpoints"}
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in written}
    assert modes == {name: oct(0o755 if (tmp_path / name).is_dir() else 0o644) for name in modes}


def test_a_run_dir_too_long_for_the_file_system_is_one_line_exit_2(tmp_path, capsys):
    run = tmp_path / ("r" * 300)
    assert _train(run) == 2
    err = capsys.readouterr().err
    assert err.startswith("visattn train: error: ") and "File name too long" in err and "r" * 300 in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs", [{"encoder_kwargs": {"checkpoint_path": "/etc/passwd"}},
                                    {"checkpoint_path": "/etc/passwd"},
                                    {"encoder_kwargs": {"pretrained_cfg_overlay": {"file": "/etc/passwd"}}}])
def test_a_config_never_names_a_file_for_timm_to_read(tmp_path, capsys, monkeypatch, kwargs):
    """A run's config.yaml whose encoder arguments point timm at a file: refused naming the key,
    before anything is read (``--set`` is refused the same way: pretrained_file is the way)."""
    import builtins

    read = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda file, *a, **k: read.append(str(file)) or real_open(file, *a, **k))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "fcn", "kwargs": {"encoder": "resnet18",
                                                                                         **kwargs}}}))
    assert main(["eval", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    key = "encoder_kwargs." * ("encoder_kwargs" in kwargs) + next(iter(kwargs.get("encoder_kwargs", kwargs)))
    assert f"config key 'model.kwargs.{key}' would make timm read" in err and len(err.strip().splitlines()) == 1
    assert "/etc/passwd" not in read
    flat = "{" + ", ".join(f"{k}: {v}" for k, v in kwargs.items()) + "}"
    assert main(["train", "--print-config", "--set", "model.name=fcn", "--set", f"model.kwargs={flat}"]) == 2
    assert "would make timm read" in capsys.readouterr().err


def test_resolving_a_config_never_touches_the_network(capsys, monkeypatch):
    import socket as socket_module

    def no_network(*args, **kwargs):
        raise AssertionError("resolving a config opened a connection")

    monkeypatch.setattr(socket_module.socket, "connect", no_network)
    monkeypatch.setattr(socket_module, "getaddrinfo", no_network)
    monkeypatch.setattr(socket_module, "create_connection", no_network)
    argv = ["train", "--print-config", "--set", "model.name=fcn", "--set",
            "model.kwargs.encoder=hf-hub:timm/resnet18.a1_in1k"]
    assert main(argv) == 0
    assert "hf-hub:timm/resnet18.a1_in1k" in capsys.readouterr().out


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    """torch.save failing as it does on a full disk, at the first checkpoint: the stop message, then
    one line naming the file, exit status 2, no traceback."""
    import visattn.engine.run_dir as run_dir

    def full_disk(obj, path, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(run_dir.torch, "save", full_disk)
    run = tmp_path / "run"
    assert _train(run) == 2
    err = capsys.readouterr().err
    state = run / "checkpoints" / "step_0000002.state.pt"
    assert err.strip().splitlines()[-1] == (f"visattn train: error: cannot write {state}: [enforce fail at "
                                            "inline_container.cc:603] . PytorchStreamWriter failed writing file data/0: "
                                            "file write failed")
    assert "Traceback" not in err and not list(run.rglob("*.tmp"))


@pytest.mark.parametrize("folder", ["checkpoints", "tb"])
def test_a_resumed_run_never_writes_through_a_planted_folder_link(tmp_path, capsys, folder):
    """A run folder from elsewhere whose checkpoints/ or tb/ is a link to another place: the resume is
    refused in one line naming the link, and nothing is written there."""
    run, outside = tmp_path / "run", tmp_path / "outside"
    assert _train(run) == 0
    (run / "final.json").unlink()
    outside.mkdir()
    os.rename(run / folder, outside / folder)
    (run / folder).symlink_to(outside / folder)
    before = _files(outside)
    assert main(["train", "--resume", str(run), "--trust-code", "--quiet"]) != 0
    assert f"{run / folder} is a symbolic link" in capsys.readouterr().err
    assert _files(outside) == before


def test_metrics_are_never_appended_through_a_link(tmp_path):
    from visattn.engine.run_dir import RunDir

    target = tmp_path / "elsewhere.txt"
    target.write_text("mine\n")
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.metrics.symlink_to(target)
    with pytest.raises(OSError):
        run.append_metrics({"step": 1})
    assert target.read_text() == "mine\n"
