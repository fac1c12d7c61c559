"""``visattn explain``: a registered model's maps under their names; a run directory gives the same
pictures as its model named with --model and its weights given with --weights."""
import numpy as np
import torch
from helpers import check_png
from PIL import Image

from visattn.cli import main
from visattn.engine.config import load_config
from visattn.engine.run_dir import RunDir
from visattn.models import create_model
from visattn.viz import figure_size
from visattn.weights import save_state_dict

CCNET = ["--model", "ccnet", "--encoder", "resnet10t"]


def _image(path, size=32):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_registered_model_writes_one_png_per_map(tmp_path, capsys):
    image, out = _image(tmp_path / "img.png"), tmp_path / "explain"
    argv = ["explain", image, *CCNET, "--num-classes", "3", "--points", "3,4", "30,30", "--output-dir", str(out),
            "--device", "cpu"]
    assert main(argv) == 0
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == ["img_head_rcca_rcca_pass1_q0.png", "img_head_rcca_rcca_pass1_q1.png",
                       "img_head_rcca_rcca_reach_q0.png", "img_head_rcca_rcca_reach_q1.png"]
    for name in written:
        check_png(out / name, figure_size(2))
    assert main(["explain", image, "--points", "99,0", "--encoder", "resnet10t", "--output-dir", str(out)]) == 2
    assert "outside" in capsys.readouterr().err
    assert main(argv + ["--module-paths", "head.sa"]) == 2
    assert "no attention module named 'head.sa' (this model has: head.rcca)" in capsys.readouterr().err


def test_run_directory_equals_model_and_weights(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    cfg = load_config(None, ["model.name=ccnet", "model.kwargs={encoder: resnet10t}", f"run.dir={run}"])
    run.write_config(cfg)
    torch.manual_seed(1)  # not the --seed of random weights: the pictures differ unless the weights load
    save_state_dict(create_model("ccnet", num_classes=11, encoder="resnet10t").state_dict(), run.best_weights)
    image = _image(tmp_path / "img.png")
    assert main(["explain", image, "--run", str(run), "--output-dir", str(tmp_path / "a"), "--device", "cpu"]) == 0
    assert main(["explain", image, *CCNET, "--weights", str(run.best_weights), "--output-dir", str(tmp_path / "b"),
                 "--device", "cpu"]) == 0
    assert main(["explain", image, *CCNET, "--output-dir", str(tmp_path / "c"), "--device", "cpu"]) == 0
    names = sorted(p.name for p in (tmp_path / "a").glob("*.png"))
    assert names and names == sorted(p.name for p in (tmp_path / "b").glob("*.png"))

    def pixels(folder):
        return [np.asarray(Image.open(tmp_path / folder / name)) for name in names]

    assert all(np.array_equal(a, b) for a, b in zip(pixels("a"), pixels("b")))
    assert not all(np.array_equal(a, c) for a, c in zip(pixels("a"), pixels("c")))

    capsys.readouterr()
    assert main(["explain", image, "--run", str(run), "--model", "ccnet", "--num-classes", "3"]) == 2
    assert "--model --num-classes: the model of a run directory comes from its config.yaml" in capsys.readouterr().err
    assert main(["explain", image, *CCNET, "--set", "train.lr=1"]) == 2
    assert "--set configures a run or a config" in capsys.readouterr().err
