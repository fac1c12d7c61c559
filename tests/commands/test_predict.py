"""``visattn predict``: outputs mirror the input tree, bad images are skipped and reported (exit 1),
inputs that name no image are an error (exit 2)."""
import numpy as np
import pytest
import torch
from PIL import Image

from visattn.cli import main
from visattn.data import image_to_tensor
from visattn.engine.config import load_config
from visattn.engine.run_dir import RunDir, load_trained
from visattn.weights import save_state_dict
from tinyseg import TinySeg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = RunDir(tmp_path_factory.mktemp("predict") / "run")
    run.write_config(load_config(None, ["model.name=tinyseg:build", "model.kwargs={}", f"run.dir={run.path}"]))
    torch.manual_seed(0)
    save_state_dict(TinySeg(11).state_dict(), run.best_weights)
    return str(run.path)


def _image(path, seed, size=(20, 14)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _expected_mask(run, path):
    cfg, model = load_trained(run, trust_code=True)
    x = image_to_tensor(np.array(Image.open(path).convert("RGB")), cfg.data.mean, cfg.data.std)
    with torch.no_grad():
        return model(x).argmax(1)[0].numpy()


def _predict(run, out, *inputs):
    return main(["predict", *map(str, inputs), "--run", run, "--output", str(out), "--device", "cpu", "--trust-code"])


def test_outputs_mirror_the_input_tree(tmp_path, run):
    a, b = _image(tmp_path / "dup/a/x.png", 1), _image(tmp_path / "dup/b/x.png", 2)
    same_stem = [_image(tmp_path / "dup/b/y.png", 3), _image(tmp_path / "dup/b/y.jpg", 4)]
    expected = {"a/x": a, "b/x": b, "b/y.png": same_stem[0], "b/y.jpg": same_stem[1]}
    for inputs in ([tmp_path / "dup"], [a, b, *same_stem], [f"{tmp_path}/dup/*/*.*"]):
        out = tmp_path / f"out{len(inputs)}"
        assert _predict(run, out, *inputs) == 0
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*_mask.png")) == sorted(
            f"{name}_mask.png" for name in expected)
        for name, image in expected.items():
            np.testing.assert_array_equal(np.asarray(Image.open(out / f"{name}_mask.png")), _expected_mask(run, image))
            assert (out / f"{name}_overlay.png").is_file() and (out / f"{name}_legend.png").is_file()


def test_bad_image_is_skipped_and_reported(tmp_path, run, capsys):
    _image(tmp_path / "in/a.png", 1)
    (tmp_path / "in/b.png").write_bytes(b"not an image")
    _image(tmp_path / "in/c.png", 3)
    assert _predict(run, tmp_path / "out", tmp_path / "in") == 1
    err = capsys.readouterr().err
    assert "skipped 1 of 3 images" in err and f"{tmp_path / 'in/b.png'}: cannot read image" in err
    assert sorted(p.name for p in (tmp_path / "out").glob("*_mask.png")) == ["a_mask.png", "c_mask.png"]


def test_nothing_to_predict_exits_2(tmp_path, run, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/notes.txt").write_text("no images here")
    assert _predict(run, tmp_path / "out", tmp_path / "empty") == 2
    assert "no images in folder" in capsys.readouterr().err
    assert _predict(run, tmp_path / "out", tmp_path / "nothing*.png") == 2
    assert "no image matches" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_output_folder_inside_the_input_is_not_read(tmp_path, run, capsys):
    _image(tmp_path / "in/a.png", 1)
    for _ in range(2):
        assert _predict(run, tmp_path / "in/pred", tmp_path / "in") == 0
    assert sorted(p.name for p in (tmp_path / "in/pred").iterdir()) == ["a_legend.png", "a_mask.png", "a_overlay.png"]
