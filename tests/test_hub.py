"""The Hugging Face Hub layout (``config.json`` + ``model.safetensors``) and ``torch.hub``: a model or a
training run saved and loaded again gives bit-identical logits, from a directory, from a Hugging Face
cache laid out as ``huggingface_hub`` writes it (offline), after an upload, and through ``hubconf.py``;
a config naming code is refused."""
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub
import pytest
import torch
from helpers import randomize_
from safetensors.torch import load_file, save_file

import visattn
from visattn.data import classes_and_palette
from visattn.engine.config import ConfigError, load_config
from visattn.engine.run_dir import RunDir
from visattn.trained import load_trained
from visattn.models import create_model, list_models
from visattn.weights import DownloadError, WeightsError, save_state_dict

ROOT = Path(__file__).resolve().parents[1]
# DANet on resnet18 at a quarter of its widths
KWARGS = {"encoder": "resnet18", "encoder_kwargs": {"channels": [16, 32, 64, 128]}}
CLASSES = ["road", "car", "sky"]


def _model(num_classes: int = 3, seed: int = 0):
    return randomize_(create_model("danet", num_classes=num_classes, **KWARGS), seed=seed).eval()


def _input(size=(40, 56)):
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))


def _logits(model, x):
    with torch.no_grad():
        return model(x)


def _save(model, directory, **kwargs):
    return visattn.save_pretrained(model, directory, model_name="danet", model_kwargs=KWARGS, num_classes=3, **kwargs)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A training run directory of a registered model on the digit scenes (11 classes)."""
    run = RunDir(tmp_path_factory.mktemp("hub") / "run")
    run.write_config(load_config(None, ["model.name=danet", f"model.kwargs={json.dumps(KWARGS)}", f"run.dir={run}"]))
    save_state_dict(_model(11, seed=2).state_dict(), run.best_weights)
    return run.path


def test_saved_directory_round_trips(tmp_path):
    model, x = _model(), _input()
    saved = _save(model, tmp_path / "saved", classes=CLASSES)
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((saved / "config.json").read_text())
    assert {k: config[k] for k in ("model", "model_kwargs", "num_classes", "task", "classes")} == {
        "model": "danet", "model_kwargs": KWARGS, "num_classes": 3, "task": "segmentation", "classes": CLASSES}
    loaded = visattn.from_pretrained(saved)
    assert not loaded.training
    assert torch.equal(_logits(loaded, x), _logits(model, x))
    # what from_pretrained loaded saves again without naming the model
    again = visattn.save_pretrained(loaded, tmp_path / "again")
    assert (again / "config.json").read_text() == (saved / "config.json").read_text()
    a, b = load_file(saved / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cfg, trained = load_trained(saved)
    assert classes_and_palette(cfg.data)[0] == tuple(CLASSES)
    assert torch.equal(_logits(trained, x), _logits(model, x))


def test_a_model_is_saved_under_the_name_that_rebuilds_it(tmp_path):
    model, target = _model(), tmp_path / "saved"
    with pytest.raises(ValueError, match="needs model_name= and num_classes="):
        visattn.save_pretrained(model, target)
    for wrong in ({"model_name": "ccnet"}, {"num_classes": 4}, {"model_kwargs": {"encoder": "resnet18"}}):
        with pytest.raises(ValueError, match="weights do not fit"):
            visattn.save_pretrained(model, target, **{"model_name": "danet", "model_kwargs": KWARGS, "num_classes": 3,
                                                      **wrong})
    with pytest.raises(ValueError, match="not a registered name"):
        visattn.save_pretrained(model, target, model_name="tinyseg:build", num_classes=3)
    assert not target.exists()


def test_run_directory_to_pretrained_directory(tmp_path, run):
    x = _input()
    cfg, trained = load_trained(run)
    saved = visattn.save_pretrained(run, tmp_path / "saved")
    config = json.loads((saved / "config.json").read_text())
    classes, palette = classes_and_palette(cfg.data)
    assert config["classes"] == list(classes) and config["palette"] == [list(c) for c in palette]
    assert config["num_classes"] == 11 and config["config"]["data"]["dataset"] == "digits"
    assert "run" not in config["config"]
    expected = _logits(trained, x)
    assert torch.equal(_logits(visattn.from_pretrained(saved), x), expected)
    loaded_cfg, loaded = load_trained(saved)
    assert loaded_cfg.data == cfg.data and loaded_cfg.eval == cfg.eval
    assert torch.equal(_logits(loaded, x), expected)


def test_from_pretrained_reads_a_run_directory_as_every_command_does(tmp_path, run):
    x = _input()
    _, trained = load_trained(run)
    model = visattn.from_pretrained(run)
    assert not model.training and torch.equal(_logits(model, x), _logits(trained, x))
    # it saves as the run does
    again = visattn.save_pretrained(model, tmp_path / "again")
    saved = visattn.save_pretrained(run, tmp_path / "saved")
    assert (again / "config.json").read_text() == (saved / "config.json").read_text()
    with pytest.raises(FileNotFoundError, match=r"^.*nothing: neither a training run directory \(config\.yaml\) "
                                                r"nor a directory saved by visattn\.save_pretrained \(config\.json\)$"):
        visattn.from_pretrained(tmp_path / "nothing")


def _lay_out_cache(hub_cache: Path, repo_id: str, saved: Path) -> None:
    """``saved``'s files as ``huggingface_hub`` caches a download of ``repo_id``'s main branch: content
    under ``blobs/`` (git blob sha1, or sha256 for LFS files), ``refs/main`` holding the commit, and
    ``snapshots/<commit>/`` links to the blobs."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(b"a commit").hexdigest()
    snapshot = repo / "snapshots" / commit
    for folder in (repo / "blobs", repo / "refs", snapshot):
        folder.mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for name in ("config.json", "model.safetensors"):
        data = (saved / name).read_bytes()
        lfs = name.endswith(".safetensors")
        blob = hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob))


@pytest.mark.skipif(os.name == "nt", reason="the cache links snapshots to blobs with symlinks")
def test_hub_id_resolves_from_the_local_cache_offline(tmp_path, run):
    x = _input()
    _, trained = load_trained(run)
    saved = visattn.save_pretrained(run, tmp_path / "saved")
    _lay_out_cache(tmp_path / "hf" / "hub", "user/danet-digits", saved)
    save_file({"x": x}, tmp_path / "x.safetensors")
    script = ("import sys, torch\n"
              "from safetensors.torch import load_file, save_file\n"
              "import visattn\n"
              "from visattn.trained import load_trained\n"
              "x = load_file(sys.argv[1])['x']\n"
              "model = visattn.from_pretrained('hf-hub:user/danet-digits')\n"
              "_, trained = load_trained('hf-hub:user/danet-digits@main')\n"
              "with torch.no_grad():\n"
              "    save_file({'from_pretrained': model(x), 'load_trained': trained(x)}, sys.argv[2])\n"
              "try:\n"
              "    visattn.from_pretrained('hf-hub:user/missing')\n"
              "except FileNotFoundError as err:\n"
              "    print(err)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(torch.get_num_threads()),
               PYTHONPATH=str(ROOT / "src"))
    argv = [sys.executable, "-c", script, str(tmp_path / "x.safetensors"), str(tmp_path / "out.safetensors")]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("cannot fetch hf-hub:user/missing: ")
    got, expected = load_file(tmp_path / "out.safetensors"), _logits(trained, x)
    assert torch.equal(got["from_pretrained"], expected) and torch.equal(got["load_trained"], expected)


def test_a_config_naming_code_is_refused(tmp_path):
    model, x = _model(), _input()
    saved = _save(model, tmp_path / "saved")
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**config, "model": "tinyseg:build"}))
    with pytest.raises(ConfigError, match="must be a registered model name"):
        visattn.from_pretrained(saved)
    with pytest.raises(ConfigError, match="must be a registered model name"):
        load_trained(saved, trust_code=True)
    # a recorded training config cannot name the model: the checked top-level keys build it
    untrusted = {"model": {"name": "visattn_untrusted_module:build", "kwargs": {}}}
    (saved / "config.json").write_text(json.dumps({**config, "config": untrusted}))
    assert torch.equal(_logits(visattn.from_pretrained(saved), x), _logits(model, x))
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ConfigError, match="from .safetensors files only"):
        load_trained(saved, weights=tmp_path / "weights.pt")
    shutil.copy(tmp_path / "weights.pt", saved / "model.safetensors")  # a pickle under the safetensors name
    with pytest.raises(WeightsError):
        visattn.from_pretrained(saved)


def test_push_to_hub_uploads_the_saved_layout(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs.get("private")))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        shutil.copytree(folder_path, tmp_path / "uploaded")
        calls.append(("upload_folder", repo_id, kwargs.get("revision")))
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    model, x = _model(), _input()
    url = visattn.push_to_hub(model, "hf-hub:user/danet", private=True, model_name="danet", model_kwargs=KWARGS,
                              num_classes=3)
    assert url == "https://huggingface.co/user/danet/commit/0"
    assert calls == [("create_repo", "user/danet", True), ("upload_folder", "user/danet", None)]
    assert torch.equal(_logits(visattn.from_pretrained(tmp_path / "uploaded"), x), _logits(model, x))


def test_push_to_hub_checks_everything_local_before_sending(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    sent = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: sent.append(repo_id))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kwargs: sent.append(kwargs["repo_id"]))
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        visattn.push_to_hub(tmp_path / "no-such-run", "user/danet")
    with pytest.raises(ValueError, match="needs model_name= and num_classes="):
        visattn.push_to_hub(_model(), "user/danet")
    with pytest.raises(ValueError, match="user/da net"):
        visattn.push_to_hub(_model(), "user/da net", model_name="danet", model_kwargs=KWARGS, num_classes=3)
    assert sent == []


def test_an_unreachable_hub_fails_at_once_naming_the_id_and_the_cache(tmp_path, monkeypatch, run):
    def unresolvable(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    def no_request(*args, **kwargs):
        raise AssertionError("a request was sent to a host that cannot be resolved")

    monkeypatch.setattr(socket, "getaddrinfo", unresolvable)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.file_download, "get_hf_file_metadata", no_request)
    start = time.perf_counter()
    with pytest.raises(DownloadError) as err:
        visattn.from_pretrained("hf-hub:user/missing")
    assert time.perf_counter() - start < 5
    cache = tmp_path / "hub" / "models--user--missing" / "snapshots" / "<revision>" / "config.json"
    assert str(err.value) == (f"cannot fetch hf-hub:user/missing: cannot resolve the host huggingface.co. Offline, "
                              f"place the file at {cache} and set HF_HUB_OFFLINE=1 (local files only, no retries)")
    # a cached repository loads without asking the host
    x = _input()
    _, trained = load_trained(run)
    _lay_out_cache(tmp_path / "hub", "user/danet-digits", visattn.save_pretrained(run, tmp_path / "saved"))
    start = time.perf_counter()
    assert torch.equal(_logits(visattn.from_pretrained("hf-hub:user/danet-digits"), x), _logits(trained, x))
    assert time.perf_counter() - start < 30


def test_torch_hub_entry_points_are_the_registered_models():
    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    # torch.hub.list's rule: the module's callables not starting with "_"
    assert sorted(n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")) == list_models()
    torch.manual_seed(0)
    model = torch.hub.load(str(ROOT), "danet", source="local", encoder="resnet18", num_classes=3)
    torch.manual_seed(0)
    expected = create_model("danet", encoder="resnet18", num_classes=3).state_dict()
    state = model.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
