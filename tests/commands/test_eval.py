"""``visattn eval --amp`` and ``--device``: bf16 autocast on CPU stays close to fp32 and reaches the
model; fp16 off CUDA and devices that do not exist are refused before anything is written. A split
that would name a file outside the run is refused; images of mixed sizes evaluate in batches."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from visattn.cli import main
from tinyseg import make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("eval") / "run", 11, "data.digits.val_length=4", "data.digits.size=48")


@pytest.fixture
def forward_dtypes(monkeypatch):
    """The output dtype of each forward of the model the command loads."""
    import visattn.trained as trained

    dtypes, load_trained = [], trained.load_trained

    def load(*args, **kwargs):
        cfg, model = load_trained(*args, **kwargs)
        model.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
        return cfg, model

    monkeypatch.setattr(trained, "load_trained", load)
    return dtypes


def _eval(run, out, *args):
    return main(["eval", "--run", run, "--trust-code", "--device", "cpu", "--batch-size", "2", "--output",
                 str(out / "eval.json"), "--save-predictions", str(out), "--format", "trainids", *args])


def _predictions(out):
    return np.stack([np.asarray(Image.open(p)) for p in sorted(out.glob("*_trainIds.png"))])


def test_eval_amp_bf16_on_cpu_is_close_to_fp32(tmp_path, run, forward_dtypes):
    assert _eval(run, tmp_path / "fp32") == 0
    assert set(forward_dtypes) == {torch.float32}
    forward_dtypes.clear()
    assert _eval(run, tmp_path / "bf16", "--amp", "bf16") == 0
    assert set(forward_dtypes) == {torch.bfloat16}
    fp32, bf16 = _predictions(tmp_path / "fp32"), _predictions(tmp_path / "bf16")
    assert fp32.shape == bf16.shape == (4, 48, 48)
    assert (bf16 == fp32).mean() >= 0.95
    record = json.loads((tmp_path / "bf16/eval.json").read_text())
    assert record["amp"] == "bf16" and json.loads((tmp_path / "fp32/eval.json").read_text())["amp"] is None
    assert abs(record["pixel_acc"] - json.loads((tmp_path / "fp32/eval.json").read_text())["pixel_acc"]) <= 0.05


def test_eval_refuses_fp16_off_cuda_and_unknown_devices(tmp_path, run, capsys):
    assert _eval(run, tmp_path / "out", "--amp", "fp16") == 2
    assert "--amp fp16 needs a CUDA device, the device is cpu; use --amp bf16" in capsys.readouterr().err
    assert _eval(run, tmp_path / "out", "--device", "tpu9") == 2
    assert "--device 'tpu9' is not a device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert _eval(run, tmp_path / "out", "--device", "cuda:1") == 2
        assert "--device cuda:1: CUDA is not available here" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_eval_on_the_device(tmp_path, run, device):
    assert _eval(run, tmp_path / "cpu") == 0
    assert _eval(run, tmp_path / "device", "--device", str(device)) == 0
    agree = (_predictions(tmp_path / "device") == _predictions(tmp_path / "cpu")).mean()
    assert agree >= (1.0 if device.type == "cpu" else 0.99)


def _files(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_split_from_the_config_never_names_a_file_outside_the_run(tmp_path, capsys):
    """A crafted run whose ``data.val_split`` climbs out of the run directory."""
    run = make_run(tmp_path / "a" / "b" / "run", 11, "data.digits.val_length=2", "data.digits.size=32",
                   "data.val_split=x/../../PWNED")
    before = _files(tmp_path)
    assert main(["eval", "--run", run, "--trust-code", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"data.val_split of {run}/config.yaml 'x/../../PWNED' holds a path separator" in err
    assert len(err.strip().splitlines()) == 1
    assert _files(tmp_path) == before
    assert main(["eval", "--run", run, "--trust-code", "--device", "cpu", "--split", ".."]) == 2
    assert "--split '..' names a directory, not a file" in capsys.readouterr().err
    assert _files(tmp_path) == before


def test_links_planted_at_the_outputs_are_replaced_not_followed(tmp_path, run):
    pytest.importorskip("matplotlib")
    outside = tmp_path / "outside.txt"
    outside.write_text("mine")
    planted = [tmp_path / "out" / "eval_val.json", tmp_path / "out" / "confusion_val.png"]
    for link in planted:
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(outside)
    assert main(["eval", "--run", run, "--trust-code", "--device", "cpu", "--output", str(planted[0])]) == 0
    assert outside.read_text() == "mine"
    assert not any(p.is_symlink() for p in planted) and json.loads(planted[0].read_text())["split"] == "val"
    assert planted[1].read_bytes().startswith(b"\x89PNG")


def test_a_folder_of_mixed_image_sizes_evaluates_at_the_default_batch_size(tmp_path, capsys):
    """Images of two sizes interleaved: batched by size, the metrics equal those of one image at a time."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(32, 32), (24, 40), (24, 40), (32, 32), (32, 32)]):
        for folder, array in (("images", rng.integers(0, 256, (h, w, 3))), ("masks", rng.integers(0, 3, (h, w)))):
            (root / folder / "val").mkdir(parents=True, exist_ok=True)
            Image.fromarray(array.astype(np.uint8)).save(root / folder / "val" / f"{i}.png")
    run = make_run(tmp_path / "run", 3, "data.dataset=folder", f"data.root={root}", "data.num_classes=3",
                   "eval.batch_size=4")
    assert main(["eval", "--run", run, "--trust-code", "--device", "cpu"]) == 0
    batched = json.loads((tmp_path / "run" / "eval_val.json").read_text())
    assert main(["eval", "--run", run, "--trust-code", "--device", "cpu", "--batch-size", "1", "--output",
                 str(tmp_path / "one.json")]) == 0
    one_by_one = json.loads((tmp_path / "one.json").read_text())
    assert sum(map(sum, batched["confusion_matrix"])) == 3 * 32 * 32 + 2 * 24 * 40
    assert batched["confusion_matrix"] == one_by_one["confusion_matrix"]
