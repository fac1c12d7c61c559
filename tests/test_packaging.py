"""Packaging: help without torch, lazy public names, optional dependencies named by their extra,
and the install metadata (no upper bounds, extras, README and CI commands, ``py.typed``)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import visattn
from visattn._extras import MissingExtraError, require
from visattn.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(visattn.__file__).resolve().parents[1]
HEAVY = re.compile(r"\|\s+(torch|torchvision|timm)(\.\S+)?\s*$")


def _python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_imports_no_torch(command):
    result = _python("-X", "importtime", "-m", "visattn", *([command] if command else []), "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: visattn")
    timed = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert any(line.endswith("visattn.cli") for line in timed)  # -X importtime did report
    assert [line for line in timed if HEAVY.search(line)] == []


def test_public_names_are_imported_on_first_use():
    code = ("import sys, visattn; before = 'torch' in sys.modules; "
            "from visattn import create_attention; "
            "print(before, 'torch' in sys.modules, create_attention('se', 32).__class__.__name__)")
    result = _python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "SqueezeExcite"]


def test_public_names_resolve():
    from visattn.attention import create_attention
    from visattn.models import create_model
    from visattn.weights import load_official

    assert visattn.create_attention is create_attention
    assert visattn.create_model is create_model and visattn.load_official is load_official
    assert all(callable(getattr(visattn, name)) for name in visattn.__all__ if name != "__version__")
    assert set(visattn.__all__) <= set(dir(visattn))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        visattn.nope  # noqa: B018


def test_require_names_the_extra(monkeypatch):
    assert require("json", extra="viz") is json
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"matplotlib is not installed: pip install 'visattn\[viz\]'"):
        require("matplotlib", extra="viz")


def test_plot_without_matplotlib(tmp_path, monkeypatch, capsys):
    # imported before matplotlib is hidden: torchmetrics looks for matplotlib's spec, then imports it
    import visattn.engine  # noqa: F401

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0, "lr": 0.1}) + "\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["plot", str(tmp_path)]) == 2
    assert "pip install 'visattn[viz]'" in capsys.readouterr().err
    assert not (tmp_path / "curves.png").exists()


def test_digits_without_scikit_learn(monkeypatch):
    from visattn.data import digits

    digits._digits.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn", None)
    try:
        with pytest.raises(MissingExtraError, match=r"pip install 'visattn\[demo\]'"):
            digits.DigitScenes("val", length=1)
    finally:
        digits._digits.cache_clear()


def test_training_log_without_tensorboard(tmp_path, monkeypatch):
    from visattn.engine.run_dir import RunDir
    from visattn.engine.trainer import MetricsLog

    run = RunDir(tmp_path)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.warns(UserWarning, match=r"no TensorBoard events .*visattn\[tensorboard\]") as warned:
        log = MetricsLog(run, enabled=True, resumed=None)
    assert len(warned) == 1
    log.write({"step": 1, "loss": 0.5}, "train")
    log.close()
    assert [json.loads(line) for line in run.metrics.read_text().splitlines()] == [{"step": 1, "loss": 0.5}]
    assert not run.tensorboard.exists()


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    path = ROOT / "pyproject.toml"
    if not path.is_file():
        pytest.skip("needs the source tree")
    return tomllib.loads(path.read_text())


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0]


def test_dependencies_have_floors_and_no_upper_bounds():
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    requirements = project["dependencies"] + [r for group in extras.values() for r in group]
    assert [r for r in requirements if "<" in r or "==" in r or "~=" in r] == []
    assert [r for r in requirements if ">=" not in r and not r.startswith("visattn[")] == []
    assert sorted(map(_name, project["dependencies"])) == sorted(
        ["huggingface_hub", "numpy", "pillow", "pyyaml", "safetensors", "timm", "torch", "torchmetrics", "torchvision",
         "tqdm"])
    assert extras["all"] == ["visattn[viz,tensorboard,demo,export,video]"]
    assert {"viz", "tensorboard", "demo", "export", "video"} <= set(extras)
    assert "visattn[all]" in extras["dev"] and "pytest" in set(map(_name, extras["dev"]))
    assert {"onnx", "onnxruntime", "onnxscript"} == set(map(_name, extras["export"]))


def test_build_backend_supports_the_license_string():
    pyproject = _pyproject()
    assert pyproject["project"]["license"] == "Apache-2.0"  # SPDX expression: setuptools >= 77
    setuptools = [r for r in pyproject["build-system"]["requires"] if _name(r) == "setuptools"]
    floor = tuple(int(part) for part in setuptools[0].split(">=")[1].split("."))
    assert floor >= (77,)


def test_py_typed_is_shipped():
    assert (SRC / "visattn" / "py.typed").is_file()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["visattn"]


def test_readme_commands_install_the_extras_they_use():
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv .venv")]
    assert commands[0].endswith("pip install -e '.[all]' && .venv/bin/visattn train")
    assert commands[1].endswith("pip install -e '.[dev]' && .venv/bin/python -m pytest -q")
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()


def test_bench_checks_names_when_given(capsys):
    from visattn.benchmark import MODULES, NETWORKS

    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--modules", "pam", "nope"])
    assert exit_.value.code == 2
    assert f"'nope' is none of {', '.join((*MODULES, *NETWORKS))}" in capsys.readouterr().err
