"""``visattn export``: ONNX files that onnxruntime runs like the eager model, at every size a dynamic
export admits, and ``torch.export`` programs; from a run directory and from a ``save_pretrained``
directory."""
import pytest
import torch
from helpers import randomize_

import visattn
from visattn.cli import main
from visattn.commands.export import export, max_abs_error
from visattn.trained import load_trained
from visattn.models import create_model
from tinyseg import make_run

TOLERANCE = 1e-4  # of the logits' range


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("export") / "run")


def _within_tolerance(path, fmt, model, x) -> bool:
    error, span = max_abs_error(path, fmt, model, x)
    return error <= TOLERANCE * span


@pytest.mark.parametrize("name", ["danet_r50_d8", "ccnet_r50_d8"])
def test_onnx_export_matches_onnxruntime_at_two_sizes(tmp_path, name):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = randomize_(create_model(name, num_classes=5)).eval()
    path = tmp_path / f"{name}.onnx"
    gen = torch.Generator().manual_seed(0)
    assert export(model, torch.randn(2, 3, 64, 64, generator=gen), path, "onnx", dynamic=True) == [0, 2, 3]
    for shape in ((2, 3, 64, 64), (1, 3, 64, 96)):
        assert _within_tolerance(path, "onnx", model, torch.randn(shape, generator=gen)), shape


def test_cli_exports_a_run_to_onnx_and_pt2(tmp_path, run, capsys):
    pytest.importorskip("onnxruntime")
    _, model = load_trained(run, trust_code=True)
    onnx_file, pt2_file = tmp_path / "tiny.onnx", tmp_path / "tiny.pt2"
    argv = ["export", "--run", run, "--size", "32", "48", "--dynamic", "--output", str(onnx_file), "--trust-code"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"wrote {onnx_file} (input 2x3x32x48; dynamic: batch, height, width)" in printed
    assert "on 2x3x32x48: max abs error" in printed and "on 3x3x64x80: max abs error" in printed
    assert _within_tolerance(onnx_file, "onnx", model, torch.randn(1, 3, 40, 24))
    argv = ["export", "--run", run, "--format", "pt2", "--size", "32", "32", "--output", str(pt2_file), "--trust-code"]
    assert main(argv) == 0
    assert "dynamic: none" in capsys.readouterr().out
    assert _within_tolerance(pt2_file, "pt2", model, torch.randn(1, 3, 32, 32))
    with pytest.raises(AssertionError, match="Guard failed"):  # a static export keeps its traced size
        torch.export.load(str(pt2_file)).module()(torch.randn(1, 3, 32, 40))
    assert main(["export", "--run", run, "--format", "pt2", "--output", str(pt2_file)]) == 2
    assert "--trust-code" in capsys.readouterr().err


def test_cli_exports_a_pretrained_directory(tmp_path, capsys):
    kwargs = {"encoder": "resnet18", "encoder_kwargs": {"channels": [16, 32, 64, 128]}}
    model = randomize_(create_model("danet", num_classes=3, **kwargs)).eval()
    saved = visattn.save_pretrained(model, tmp_path / "saved", model_name="danet", model_kwargs=kwargs, num_classes=3)
    out = tmp_path / "danet.pt2"
    assert main(["export", "--run", str(saved), "--format", "pt2", "--size", "64", "64", "--output", str(out)]) == 0
    assert "torch.export.load vs eager on 1x3x64x64: max abs error" in capsys.readouterr().out
    assert _within_tolerance(out, "pt2", model, torch.randn(1, 3, 64, 64))
