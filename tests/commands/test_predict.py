"""``visattn predict``: outputs mirror the input tree, bad images are skipped and reported (exit 1),
inputs that name no image are an error (exit 2); ``--format`` and ``visattn eval --save-predictions``
write label files in each dataset's own convention."""
import fnmatch
import json

import numpy as np
import pytest
import torch
from PIL import Image

from visattn.cli import main
from visattn.data import classes_and_palette, image_to_tensor, voc_palette
from visattn.engine.config import DataConfig, load_config
from visattn.engine.run_dir import RunDir, load_trained
from visattn.weights import save_state_dict
from tinyseg import TinyCls, make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("predict") / "run", 11)


@pytest.fixture(scope="module")
def cityscapes_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("predict") / "cityscapes", 19, "data.dataset=cityscapes")


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


# Cityscapes labelIds of the 19 trainIds (the official cityscapesscripts label table)
CITYSCAPES_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
FRAMES = ("aachen/aachen_000000_000019", "aachen/aachen_000001_000019", "bochum/bochum_000000_000313")


def _cityscapes_tree(root):
    for seed, frame in enumerate(FRAMES):
        _image(root / f"leftImg8bit/val/{frame}_leftImg8bit.png", seed, size=(24, 12))
        labels = root / f"gtFine/val/{frame}_gtFine_labelIds.png"
        labels.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(seed).choice(np.array([0, 7, 8, 26], dtype=np.uint8), (12, 24))).save(labels)
    return root


def _cityscapes_prediction_files(out):
    """What cityscapesscripts' evaluation finds for each frame: the PNGs named ``<city>_<seq>_<frame>*.png``."""
    files = [p for p in out.rglob("*") if p.is_file()]
    return {frame: [p for p in files if fnmatch.fnmatch(p.name, f"{frame.split('/')[1]}*.png")] for frame in FRAMES}


def test_cityscapes_labelids_as_the_benchmark_expects(tmp_path, cityscapes_run):
    root = _cityscapes_tree(tmp_path / "cityscapes")
    out = tmp_path / "out"
    assert _predict(cityscapes_run, out, root / "leftImg8bit/val", "--format", "labelids") == 0
    for frame, found in _cityscapes_prediction_files(out).items():
        assert found == [out / f"{frame}_leftImg8bit_labelIds.png"]  # one file per frame, the city folders kept
        written = Image.open(found[0])
        expected = _expected_mask(cityscapes_run, root / f"leftImg8bit/val/{frame}_leftImg8bit.png")
        assert written.mode == "L" and len(np.unique(expected)) > 1
        np.testing.assert_array_equal(np.asarray(written), np.array(CITYSCAPES_LABEL_IDS)[expected])


def test_trainids_color_and_overlay_formats(tmp_path, run):
    image = _image(tmp_path / "in/a.png", 1)
    rgb = np.asarray(Image.open(image).convert("RGB")).astype(float)
    expected = _expected_mask(run, image)
    colours = np.array(classes_and_palette(DataConfig())[1])[expected]
    for fmt, name, want in (("trainids", "a_trainIds.png", expected), ("color", "a_color.png", colours),
                            ("overlay", "a_overlay.png", np.round(0.7 * rgb + 0.3 * colours))):
        out = tmp_path / fmt
        assert main(["predict", str(image), "--run", run, "--output", str(out), "--device", "cpu", "--trust-code",
                     "--format", fmt, "--alpha", "0.3"]) == 0
        assert [p.name for p in out.iterdir()] == [name]
        np.testing.assert_array_equal(np.asarray(Image.open(out / name)), want)


@pytest.mark.parametrize("dataset, num_classes", [("ade20k", 150), ("voc", 21)])
def test_ade20k_and_voc_labelids(tmp_path, dataset, num_classes):
    run = make_run(tmp_path / "run", num_classes, f"data.dataset={dataset}")
    image = _image(tmp_path / "in/2007_000032.jpg", 1)
    assert _predict(run, tmp_path / "out", image, "--format", "labelids") == 0
    written = Image.open(tmp_path / "out/2007_000032_labelIds.png")
    expected = _expected_mask(run, image)
    if dataset == "ade20k":  # reduce_zero_label undone: class k is stored as k + 1, 0 = other
        assert written.mode == "L"
        np.testing.assert_array_equal(np.asarray(written), expected + 1)
    else:  # SegmentationClass: class ids in a palette PNG with the devkit colours
        assert written.mode == "P" and written.getpalette() == [c for rgb in voc_palette(256) for c in rgb]
        np.testing.assert_array_equal(np.asarray(written), expected)


def test_format_is_for_segmentors(tmp_path, capsys):
    run = RunDir(tmp_path / "cls")
    run.write_config(load_config(None, ["model.name=tinyseg:build_cls", "model.kwargs={}", "task=classification",
                                        "data.dataset=digits_cls", f"run.dir={run.path}"]))
    save_state_dict(TinyCls(10).state_dict(), run.best_weights)
    assert _predict(str(run.path), tmp_path / "out", _image(tmp_path / "a.png", 1), "--format", "labelids") == 2
    assert "--format applies to segmentation models" in capsys.readouterr().err


def _eval(run, root, *args):
    return main(["eval", "--run", run, "--set", f"data.root={root}", "--split", "val", "--device", "cpu",
                 "--trust-code", "--batch-size", "2", *args])


def test_eval_saves_the_predictions_predict_writes(tmp_path, cityscapes_run):
    root = _cityscapes_tree(tmp_path / "cityscapes")
    assert _eval(cityscapes_run, root, "--output", str(tmp_path / "plain.json")) == 0
    for fmt in ("labelids", "overlay"):
        saved, predicted = tmp_path / f"saved_{fmt}", tmp_path / f"predicted_{fmt}"
        assert _eval(cityscapes_run, root, "--output", str(tmp_path / f"{fmt}.json"), "--save-predictions", str(saved),
                     *(["--format", fmt] if fmt != "labelids" else [])) == 0
        assert _predict(cityscapes_run, predicted, root / "leftImg8bit/val", "--format", fmt) == 0
        names = sorted(p.relative_to(saved).as_posix() for p in saved.rglob("*.png"))
        assert names == sorted(f"{frame}_leftImg8bit_{'labelIds' if fmt == 'labelids' else 'overlay'}.png"
                               for frame in FRAMES)
        for name in names:
            np.testing.assert_array_equal(np.asarray(Image.open(saved / name)), np.asarray(Image.open(predicted / name)))
        assert json.loads((tmp_path / f"{fmt}.json").read_text())["per_class_iou"] == \
            json.loads((tmp_path / "plain.json").read_text())["per_class_iou"]
