"""CLI: train with --set on a tiny config, config errors, eval JSON, predict PNGs, models list.
Every command that reads a run takes --run RUN_DIR; one that writes a file takes --output FILE, one that
writes into a folder --output-dir DIR."""
import json

import numpy as np
from PIL import Image

from visattn.cli import main


TINY = ["model.name=tinyseg:build", "model.kwargs={}", "data.digits.train_length=16", "data.digits.val_length=4",
        "data.digits.size=32", "data.digits.digit_size=[8,16]", "data.crop_size=[32,32]", "train.batch_size=8",
        "train.iters=3", "eval.batch_size=4"]


def _sets(items):
    return [a for s in items for a in ("--set", s)]


def test_train_eval_predict(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--quiet", "--trust-code", *_sets(TINY), "--output-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "after 3 steps" in out and str(run) in out
    assert (run / "model.safetensors").is_file() and (run / "config.yaml").is_file()

    assert main(["eval", "--run", str(run), "--trust-code", "--flip", "--scales", "1", "1.5"]) == 0
    result = json.loads((run / "eval_val.json").read_text())
    assert set(result["per_class_iou"]) == {"background", *map(str, range(10))} and result["flip"] is True
    assert 0 <= result["mIoU"] <= 1 and "mIoU" in capsys.readouterr().out

    images = tmp_path / "images"
    images.mkdir()
    for name, size in (("a.png", (40, 30)), ("b.jpg", (17, 23))):
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(images / name)
    out_dir = tmp_path / "pred"
    assert main(["predict", str(images), "--run", str(run), "--trust-code", "--output-dir", str(out_dir), "--mode", "slide",
                 "--crop-size", "16", "16"]) == 0
    for stem, size in (("a", (40, 30)), ("b", (17, 23))):
        mask = Image.open(out_dir / f"{stem}_mask.png")
        overlay = Image.open(out_dir / f"{stem}_overlay.png")
        assert mask.size == size and mask.mode == "P" and overlay.size == size and overlay.mode == "RGB"
        assert np.asarray(mask).max() <= 10
    assert main(["predict", str(tmp_path / "nothing*.png"), "--run", str(run), "--trust-code"]) == 2
    assert "no image matches" in capsys.readouterr().err


def test_train_rejects_unknown_key_and_keeps_runs(tmp_path, capsys):
    assert main(["train", "--set", "train.lrr=0.1"]) == 2
    assert "unknown config key 'train.lrr'" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["train", "--quiet", "--trust-code", *_sets(TINY), "--set", f"run.dir={run}"]) == 0
    before = (run / "model.safetensors").read_bytes()
    assert main(["train", "--quiet", "--trust-code", *_sets(TINY), "--set", f"run.dir={run}"]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--output-dir", str(tmp_path / "elsewhere")]) == 2
    assert "--resume continues RUN_DIR" in capsys.readouterr().err
    assert (run / "model.safetensors").read_bytes() == before
    assert main(["train", "--quiet", "--set", "data.dataset=cityscapes", "--set", f"data.root={tmp_path / 'no'}",
                 "--set", f"run.dir={tmp_path / 'cs'}"]) == 2
    assert "Cityscapes: directory not found" in capsys.readouterr().err


def test_models_lists_parameter_counts(capsys):
    assert main(["models", "epsanet"]) == 0
    out = capsys.readouterr().out
    assert "epsanet50" in out and "22,561,715" in out
