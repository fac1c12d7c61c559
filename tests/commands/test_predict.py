"""``visattn predict``: outputs mirror the input tree, bad images are skipped and reported (exit 1),
inputs that name no image are an error (exit 2); ``--format`` and ``visattn eval --save-predictions``
write label files in each dataset's own convention; batches give the predictions of one image at a
time; lists of inputs; videos; ``--amp`` and ``--device``."""
import fnmatch
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visattn.cli import main
from visattn.data import classes_and_palette, image_to_tensor, voc_palette
from visattn.engine.config import DataConfig, load_config
from visattn.engine.run_dir import RunDir
from visattn.trained import load_trained
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


def _segmentor(run):
    """The class ids of an RGB image, one image through the run's model at a time."""
    cfg, model = load_trained(run, trust_code=True)

    def predict(rgb):
        with torch.no_grad():
            return model(image_to_tensor(np.array(rgb), cfg.data.mean, cfg.data.std)).argmax(1)[0].numpy()
    return predict


def _expected_mask(run, path):
    return _segmentor(run)(Image.open(path).convert("RGB"))


def _predict(run, out, *inputs):
    return main(["predict", *map(str, inputs), "--run", run, "--output-dir", str(out), "--device", "cpu", "--trust-code"])


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


@pytest.mark.parametrize("files, names", [
    (["x.png", "x.jpg", "x.png.png"], ["x.png", "x.jpg", "x.png.png"]),
    (["a.png", "a.jpg", "a.png.jpg", "a.png.jpg.png"], ["a.png", "a.jpg", "a.png.jpg", "a.png.jpg.png"]),
    (["y.jpg", "Y.png", "z.png"], ["y.jpg", "Y.png", "z"]),  # one name on case-insensitive file systems
    (["d/x.png", "d/x.jpg", "e/x.png", "x.png"], ["d/x.png", "d/x.jpg", "e/x", "x"]),
    (["z.tif", "z.tif.png", "z.tif.png.jpg"], ["z", "z.tif", "z.tif.png"]),
    (["clip.mp4", "clip/000000.png", "clip.png"], ["clip.mp4", "clip/000000", "clip.png"]),  # --frames: clip/000000_mask.png
    (["clip.mp4", "Clip/a/b.png", "d/e.png"], ["clip.mp4", "Clip/a/b", "d/e"]),
    (["clip.mp4", "clips/a.png", "photo.png", "photo/a.png"], ["clip", "clips/a", "photo", "photo/a"]),  # images write no folder
])
def test_output_names_are_unique(tmp_path, files, names):
    from visattn.engine.predictions import output_names

    assert output_names([(tmp_path / f, tmp_path) for f in files]) == [Path(n) for n in names]


def test_inputs_sharing_a_name_never_overwrite_each_other(tmp_path, run, capsys):
    images = [_image(tmp_path / "in" / name, seed) for seed, name in enumerate(["x.png", "x.jpg", "x.png.png"])]
    out = tmp_path / "out"
    assert _predict(run, out, tmp_path / "in") == 0
    assert sorted(p.name for p in out.glob("*_mask.png")) == ["x.jpg_mask.png", "x.png.png_mask.png", "x.png_mask.png"]
    lines = capsys.readouterr().out.splitlines()
    for image in images:
        base = out / image.name
        np.testing.assert_array_equal(np.asarray(Image.open(f"{base}_mask.png")), _expected_mask(run, image))
        assert f"{image} -> {base}_mask.png, {base}_overlay.png, {base}_legend.png" in lines  # all it wrote


def test_without_matplotlib_every_mask_and_overlay_is_written(tmp_path, run, capsys, monkeypatch):
    import visattn.engine.predictions  # noqa: F401  (imported before matplotlib is hidden, as torchmetrics looks for it)

    images = [_image(tmp_path / "in" / f"{i}.png", i) for i in range(3)]
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert _predict(run, tmp_path / "out", tmp_path / "in") == 0
    for image in images:
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"out/{image.stem}_mask.png")),
                                      _expected_mask(run, image))
        assert (tmp_path / f"out/{image.stem}_overlay.png").is_file()
    assert not list((tmp_path / "out").glob("*_legend.png"))
    captured = capsys.readouterr()
    assert captured.err.splitlines()[0] == ("visattn predict: masks and overlays without legends (matplotlib is not "
                                            "installed: pip install 'visattn[viz]')")
    assert captured.err.count("legends") == 1
    assert f"{images[2]} -> {tmp_path / 'out/2_mask.png'}, {tmp_path / 'out/2_overlay.png'}" in captured.out.splitlines()


def test_images_are_read_as_viewers_show_them(tmp_path, run, capsys, monkeypatch):
    from PIL import ImageOps

    from visattn.data import segmentation

    monkeypatch.setattr(segmentation, "_said", set())
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 80 wide and 40 high, shown turned: 40 wide, 80 high
    photo = tmp_path / "in/photo.jpg"
    photo.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 80, 3), dtype=np.uint8)).save(photo, exif=exif)
    for i in range(2):
        rgba = np.random.default_rng(i).integers(0, 256, (14, 20, 4), dtype=np.uint8)
        Image.fromarray(rgba).save(tmp_path / f"in/alpha{i}.png")
    # read by two worker processes: the note comes back with the images, said once by the command
    assert _predict(run, tmp_path / "out", tmp_path / "in", "--format", "trainids", "--workers", "2") == 0
    mask = Image.open(tmp_path / "out/photo_trainIds.png")
    assert mask.size == (40, 80)
    np.testing.assert_array_equal(np.asarray(mask), _segmentor(run)(ImageOps.exif_transpose(Image.open(photo))))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out/alpha0_trainIds.png")),
                                  _segmentor(run)(Image.open(tmp_path / "in/alpha0.png").convert("RGB")))
    assert capsys.readouterr().err.count("alpha channel") == 1


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


def test_trainids_mask_color_and_overlay_formats(tmp_path, run):
    image = _image(tmp_path / "in/a.png", 1)
    rgb = np.asarray(Image.open(image).convert("RGB")).astype(float)
    expected = _expected_mask(run, image)
    colours = np.array(classes_and_palette(DataConfig())[1])[expected]
    for fmt, name, want in (("trainids", "a_trainIds.png", expected), ("mask", "a_mask.png", expected),
                            ("color", "a_color.png", colours),
                            ("overlay", "a_overlay.png", np.round(0.7 * rgb + 0.3 * colours))):
        out = tmp_path / fmt
        assert main(["predict", str(image), "--run", run, "--output-dir", str(out), "--device", "cpu", "--trust-code",
                     "--format", fmt, "--alpha", "0.3"]) == 0
        assert [p.name for p in out.iterdir()] == [name]
        np.testing.assert_array_equal(np.asarray(Image.open(out / name)), want)
    mask = Image.open(tmp_path / "mask/a_mask.png")  # the class ids, shown in the dataset's colours
    assert mask.mode == "P"
    np.testing.assert_array_equal(np.asarray(mask.convert("RGB")), colours)


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


def test_classifiers_print_their_top5_and_take_no_format_nor_video(tmp_path, capsys):
    run = RunDir(tmp_path / "cls")
    run.write_config(load_config(None, ["model.name=tinyseg:build_cls", "model.kwargs={}", "task=classification",
                                        "data.dataset=digits_cls", f"run.dir={run.path}", "data.workers=0"]))
    torch.manual_seed(0)
    save_state_dict(TinyCls(10).state_dict(), run.best_weights)
    images = [_image(tmp_path / f"in/{i}.png", i) for i in range(3)]
    assert _predict(str(run.path), tmp_path / "out", *images, "--batch-size", "2") == 0
    cfg, model = load_trained(str(run.path), trust_code=True)
    with torch.no_grad():
        p = model(torch.cat([image_to_tensor(np.array(Image.open(i)), cfg.data.mean, cfg.data.std) for i in images]))
    top = p.softmax(1).topk(5)
    assert capsys.readouterr().out.splitlines() == [
        f"{image}: " + ", ".join(f"{i} {100 * v:.1f}%" for v, i in zip(values.tolist(), indices.tolist()))
        for image, values, indices in zip(images, top.values, top.indices)]
    assert not (tmp_path / "out").exists()

    assert _predict(str(run.path), tmp_path / "out", images[0], "--format", "labelids") == 2
    assert "--format applies to segmentation models" in capsys.readouterr().err
    (tmp_path / "clip.mp4").write_bytes(b"")
    assert _predict(str(run.path), tmp_path / "out", tmp_path / "clip.mp4") == 2
    assert "videos need a segmentation model; 'tinyseg:build_cls' is a classifier" in capsys.readouterr().err


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


def test_format_choices_are_the_formats():
    import argparse

    from visattn.commands.predict import add_format_argument
    from visattn.engine.predictions import FORMATS

    parser = argparse.ArgumentParser()
    add_format_argument(parser, "")
    assert parser._option_string_actions["--format"].choices == tuple(FORMATS)


@pytest.fixture
def forwards(monkeypatch):
    """``(batch size, output dtype)`` of each forward of the model the commands load; a forward of a
    batch holding a constant (all-black) image fails."""
    import visattn.trained as trained

    calls, load_trained = [], trained.load_trained

    def refuse_constant_images(module, inputs):
        if inputs[0].flatten(2).std(2).eq(0).all(1).any():
            calls.append((inputs[0].shape[0], None))
            raise RuntimeError("a constant image")

    def load(*args, **kwargs):
        cfg, model = load_trained(*args, **kwargs)
        model.register_forward_pre_hook(refuse_constant_images)
        model.register_forward_hook(lambda module, inputs, output: calls.append((inputs[0].shape[0], output.dtype)))
        return cfg, model

    monkeypatch.setattr(trained, "load_trained", load)
    return calls


def _masks(out):
    return {p.relative_to(out).as_posix(): np.asarray(Image.open(p)) for p in sorted(out.rglob("*_mask.png"))}


def test_batched_predictions_equal_one_at_a_time(tmp_path, run, forwards):
    sizes = [(20, 14), (20, 14), (17, 23), (20, 14), (17, 23), (17, 23), (20, 14)]
    images = [_image(tmp_path / f"in/{i}.png", i, size) for i, size in enumerate(sizes)]
    one_at_a_time = _predict(run, tmp_path / "single", tmp_path / "in", "--format", "mask", "--batch-size", "1")
    assert one_at_a_time == 0 and [n for n, _ in forwards] == [1] * 7
    forwards.clear()
    assert _predict(run, tmp_path / "batched", tmp_path / "in", "--format", "mask", "--batch-size", "4",
                    "--workers", "2") == 0
    assert [n for n, _ in forwards] == [2, 1, 1, 2, 1]  # runs of one size, at most 4
    single, batched = _masks(tmp_path / "single"), _masks(tmp_path / "batched")
    assert sorted(batched) == [f"{i}_mask.png" for i in range(7)]
    segment = _segmentor(run)
    for i, image in enumerate(images):
        np.testing.assert_array_equal(batched[f"{i}_mask.png"], single[f"{i}_mask.png"])
        np.testing.assert_array_equal(batched[f"{i}_mask.png"], segment(Image.open(image).convert("RGB")))


def test_a_failing_batch_is_retried_image_by_image(tmp_path, run, forwards, capsys):
    _image(tmp_path / "in/a.png", 1)
    Image.new("RGB", (20, 14)).save(tmp_path / "in/b.png")
    _image(tmp_path / "in/c.png", 3)
    assert _predict(run, tmp_path / "out", tmp_path / "in", "--batch-size", "3", "--format", "trainids") == 1
    assert forwards == [(3, None), (1, torch.float32), (1, None), (1, torch.float32)]
    err = capsys.readouterr().err
    assert "skipped 1 of 3 images" in err and f"{tmp_path / 'in/b.png'}: a constant image" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_trainIds.png", "c_trainIds.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out/c_trainIds.png")),
                                  _expected_mask(run, tmp_path / "in/c.png"))


def test_list_of_inputs(tmp_path, run, capsys, monkeypatch):
    data = tmp_path / "data"
    a, b, c = _image(data / "a/x.png", 1), _image(data / "b/x.png", 2), _image(data / "b/y.jpg", 3)
    _image(data / "b/z.png", 4)  # not listed
    (data / "list.txt").write_text(f"# images to segment\n\na/x.png\n  b/x.*  \n{c}\n")
    monkeypatch.chdir(tmp_path)  # the entries are relative to the list's folder, not to here
    assert _predict(run, tmp_path / "out", f"@{data / 'list.txt'}", "--format", "trainids") == 0
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert written == ["a/x_trainIds.png", "b/x_trainIds.png", "b/y_trainIds.png"]
    for image, name in ((a, "a/x"), (b, "b/x"), (c, "b/y")):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"out/{name}_trainIds.png")),
                                      _expected_mask(run, image))

    (data / "bad.txt").write_text("a/x.png\n# next: a typo\nb/q.png\n")
    assert _predict(run, tmp_path / "out2", "@data/bad.txt") == 2
    assert f"{Path('data/bad.txt')}, line 3: no image matches" in capsys.readouterr().err
    assert _predict(run, tmp_path / "out2", "@data/none.txt") == 2
    assert "cannot read the list @data/none.txt" in capsys.readouterr().err
    (data / "latin1.txt").write_bytes(b"\xe9t\xe9.png\n")
    assert _predict(run, tmp_path / "out2", "@data/latin1.txt") == 2
    err = capsys.readouterr().err
    assert "cannot read the @LIST file: " in err and err.count("latin1.txt") == 1 and "not UTF-8" in err
    assert not (tmp_path / "out2").exists()


def _video(path, frames=30, fps=10, size=64):
    """A video of a moving gradient and a moving disc, written with PyAV directly."""
    av = pytest.importorskip("av")
    path.parent.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[:size, :size]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for t in range(frames):
            disc = (x - 2 * t) ** 2 + (y - size // 2) ** 2 < size
            rgb = np.stack([(x * 4 + t * 8) % 256, y * 4 % 256, np.where(disc, 255, 40)], -1).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return path


def _decode(path):
    """The frames of a video as RGB arrays, and its frame rate."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)], stream.average_rate


def test_video_overlay_and_frames(tmp_path, run, forwards, capsys):
    clip = _video(tmp_path / "in/clip.mp4")
    _image(tmp_path / "in/still.png", 1)
    assert _predict(run, tmp_path / "out", tmp_path / "in", "--frames", "--batch-size", "4") == 0
    assert f"{tmp_path / 'in/clip.mp4'} -> {tmp_path / 'out/clip_overlay.mp4'} (30 frames" in capsys.readouterr().out
    assert [n for n, _ in forwards] == [4] * 7 + [2] + [1]  # the frames, then the image
    frames, fps = _decode(clip)
    overlays, overlay_fps = _decode(tmp_path / "out/clip_overlay.mp4")
    assert len(overlays) == len(frames) == 30 and overlay_fps == fps == 10
    assert all(o.shape == (64, 64, 3) for o in overlays)

    segment, palette = _segmentor(run), np.array(classes_and_palette(DataConfig())[1])
    masks = _masks(tmp_path / "out/clip")
    assert sorted(masks) == [f"{i:06d}_mask.png" for i in range(30)]
    for i in (0, 17, 29):
        expected = segment(frames[i])
        assert len(np.unique(expected)) > 1
        np.testing.assert_array_equal(masks[f"{i:06d}_mask.png"], expected)
        blended = np.round(0.5 * frames[i] + 0.5 * palette[expected])
        error, plain = np.abs(overlays[i] - blended).mean(), np.abs(overlays[i].astype(float) - frames[i]).mean()
        assert error < 5 and plain > 8 * error  # the colours are there, to within the codec's loss (4:2:0 chroma)
    assert (tmp_path / "out/still_mask.png").is_file()


def test_video_frames_and_images_in_the_folder_of_its_name_never_overwrite_each_other(tmp_path, run):
    clip = _video(tmp_path / "in/clip.mp4", frames=2)
    still = _image(tmp_path / "in/clip/000000.png", 1, size=(64, 64))
    assert _predict(run, tmp_path / "out", tmp_path / "in", "--frames", "--format", "trainids") == 0
    frames, _ = _decode(clip)
    segment = _segmentor(run)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out/clip.mp4/000000_trainIds.png")), segment(frames[0]))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out/clip/000000_trainIds.png")),
                                  _expected_mask(run, still))
    assert (tmp_path / "out/clip.mp4_overlay.mp4").is_file()


def test_video_formats_and_errors(tmp_path, run, capsys, monkeypatch):
    _video(tmp_path / "in/clip.mp4", frames=3, size=32)
    (tmp_path / "in/broken.avi").write_bytes(b"not a video")
    assert _predict(run, tmp_path / "out", tmp_path / "in", "--frames", "--format", "labelids") == 1
    err = capsys.readouterr().err
    assert "skipped 1 of 2 images and videos" in err and f"{tmp_path / 'in/broken.avi'}: cannot read video" in err
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == ["clip/000000_labelIds.png", "clip/000001_labelIds.png", "clip/000002_labelIds.png",
                       "clip_overlay.mp4"]

    monkeypatch.setitem(sys.modules, "av", None)
    assert _predict(run, tmp_path / "out2", tmp_path / "in/clip.mp4") == 2
    assert "pip install 'visattn[video]'" in capsys.readouterr().err


def _trainids(run, out, images, *args):
    assert _predict(run, out, *images, "--format", "trainids", *args) == 0
    return np.stack([np.asarray(Image.open(out / f"{Path(i).stem}_trainIds.png")) for i in images])


def test_amp_bf16_on_cpu_is_close_to_fp32(tmp_path, run, forwards):
    images = [_image(tmp_path / f"in/{i}.png", i, (48, 40)) for i in range(3)]
    fp32 = _trainids(run, tmp_path / "fp32", images)
    assert {dtype for _, dtype in forwards} == {torch.float32}
    forwards.clear()
    bf16 = _trainids(run, tmp_path / "bf16", images, "--amp", "bf16")
    assert {dtype for _, dtype in forwards} == {torch.bfloat16}
    assert (bf16 == fp32).mean() >= 0.95


def test_amp_fp16_and_unknown_devices_are_refused(tmp_path, run, capsys):
    image = _image(tmp_path / "a.png", 1)
    assert _predict(run, tmp_path / "out", image, "--amp", "fp16") == 2
    assert "--amp fp16 needs a CUDA device, the device is cpu" in capsys.readouterr().err
    argv = ["predict", str(image), "--run", run, "--trust-code", "--output-dir", str(tmp_path / "out")]
    assert main([*argv, "--device", "gpu"]) == 2
    assert "--device 'gpu' is not a device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*argv, "--device", "cuda"]) == 2
        assert "--device cuda: CUDA is not available here" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_predict_on_the_device(tmp_path, run, device):
    images = [_image(tmp_path / f"in/{i}.png", i, (48, 40)) for i in range(3)]
    expected = np.stack([_expected_mask(run, image) for image in images])
    got = _trainids(run, tmp_path / "out", images, "--device", str(device), "--batch-size", "2")
    assert (got == expected).mean() >= (1.0 if device.type == "cpu" else 0.99)


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv", ".avi", ".webm"])
def test_write_video_round_trip(tmp_path, suffix):
    pytest.importorskip("av")
    from visattn.data.video import VideoReader, write_video

    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    frames = [np.full((11, 17, 3), colour, np.uint8) for colour in colours]  # odd size: stored as 4:4:4
    assert write_video(tmp_path / f"v{suffix}", frames, 12.5) == 3
    with VideoReader(tmp_path / f"v{suffix}") as reader:
        decoded = list(reader)
        assert reader.fps == 12.5 and reader.size == (17, 11)
    assert len(decoded) == 3
    for frame, colour in zip(decoded, colours):
        assert frame.shape == (11, 17, 3) and np.abs(frame.astype(int) - colour).max() <= 3


def test_write_video_errors_leave_no_file(tmp_path):
    pytest.importorskip("av")
    from visattn.data.video import write_video

    frames = [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)]
    with pytest.raises(ValueError, match="frame 1 is 10x8, the first 8x8"):
        write_video(tmp_path / "v.mp4", frames, 10)
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "v.mp4", [], 10)
    with pytest.raises(ValueError, match="extension '.gif' is none of"):
        write_video(tmp_path / "v.gif", frames[:1], 10)
    assert list(tmp_path.iterdir()) == []
