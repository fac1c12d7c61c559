"""``visattn.Predictor`` from Python: a run's model loaded once over images, image files and the
inputs ``visattn predict`` accepts (:func:`visattn.data.inputs.find_inputs`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import visattn
from visattn.data import image_to_tensor
from visattn.data.inputs import LIST_PREFIX, find_inputs, same_size_batches
from visattn.engine.predictor import FilePrediction, Predictor
from visattn.engine.predictions import PredictionWriter
from tinyseg import make_run


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    return visattn.Predictor.from_run(make_run(tmp_path_factory.mktemp("predictor") / "run", 11), trust_code=True)


def _rgb(seed: int, size=(14, 20)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _one_at_a_time(predictor: Predictor, rgb: np.ndarray) -> np.ndarray:
    x = image_to_tensor(rgb, predictor.cfg.data.mean, predictor.cfg.data.std)
    with torch.no_grad():
        return predictor.model(x).argmax(1)[0].numpy()


def test_predict_a_batch_equals_each_image_alone(predictor):
    assert visattn.Predictor is Predictor and predictor.segmentation and len(predictor.classes) == 11
    images = [_rgb(0), _rgb(1), _rgb(2)]
    ids = predictor.predict(images)
    assert ids.shape == (3, 14, 20)
    for rgb, pred in zip(images, ids):
        np.testing.assert_array_equal(pred, _one_at_a_time(predictor, rgb))
    assert len(np.unique(ids)) > 1  # a prediction that could differ


def test_predict_each_gives_the_error_of_a_failing_image(predictor):
    results = predictor.predict_each([_rgb(0), _rgb(1)[:, :, :2]])  # a 2-channel picture cannot be normalised
    assert len(results) == 2
    np.testing.assert_array_equal(results[0], _one_at_a_time(predictor, _rgb(0)))
    assert isinstance(results[1], (ValueError, RuntimeError))


def test_predict_files_writes_and_reports_each_file(predictor, tmp_path):
    paths = []
    for i, size in enumerate([(14, 20), (14, 20), (10, 12)]):
        paths.append(tmp_path / "in" / f"{i}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(_rgb(i, size)).save(paths[-1])
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"not a png")
    files = [(p, tmp_path / "out" / p.stem) for p in [paths[0], broken, *paths[1:]]]
    writer = PredictionWriter(predictor.cfg.data, "trainids")
    results = {r.path: r for r in predictor.predict_files(files, writer, batch_size=2)}
    assert set(results) == {p for p, _ in files}
    assert results[broken].written is None and "broken.png" in results[broken].error
    for i, path in enumerate(paths):
        result = results[path]
        written = tmp_path / "out" / f"{i}_trainIds.png"
        assert result == FilePrediction(path, written=written, files=[written])
        np.testing.assert_array_equal(np.array(Image.open(result.written)),
                                      _one_at_a_time(predictor, np.array(Image.open(path).convert("RGB"))))


def test_predict_files_lists_the_picture_set_and_what_reading_changed(predictor, tmp_path):
    rgba = np.concatenate([_rgb(0), np.full((14, 20, 1), 7, dtype=np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    Image.fromarray(_rgb(1)).save(tmp_path / "plain.png")
    files = [(tmp_path / name, tmp_path / "out" / Path(name).stem) for name in ("alpha.png", "plain.png")]
    alpha, plain = predictor.predict_files(files, PredictionWriter(predictor.cfg.data, legends=False))
    assert alpha.notes == ["images with an alpha channel are read without it (transparency dropped)"]
    assert plain.notes == []
    assert alpha.files == [tmp_path / "out/alpha_mask.png", tmp_path / "out/alpha_overlay.png"]
    np.testing.assert_array_equal(np.array(Image.open(alpha.written)), _one_at_a_time(predictor, _rgb(0)))


def test_top_classes_most_probable_first(predictor):
    probabilities = np.zeros(11, np.float32)
    probabilities[[3, 7, 1]] = [0.2, 0.5, 0.3]
    top = predictor.top_classes(probabilities, k=3)
    assert [name for name, _ in top] == [predictor.classes[i] for i in (7, 1, 3)]
    assert [p for _, p in top] == pytest.approx([0.5, 0.3, 0.2])


def test_segmentation_options_go_to_segment(predictor):
    flipped = Predictor(predictor.cfg, predictor.model, flip=True, scales=[1.0, 0.5])
    assert flipped.options["flip"] is True and flipped.options["scales"] == [1.0, 0.5]
    assert flipped.device == torch.device("cpu") and flipped.predict([_rgb(0)]).shape == (1, 14, 20)


def test_find_inputs_files_folders_globs_and_lists(tmp_path):
    for name in ("a/x.png", "a/b/y.jpg", "a/notes.txt", "out/z.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "list.txt").write_text("# images\na/x.png\n\na/b\n")
    assert find_inputs([str(tmp_path / "a")]) == [(tmp_path / "a/b/y.jpg", tmp_path / "a"),
                                                  (tmp_path / "a/x.png", tmp_path / "a")]
    assert find_inputs([str(tmp_path / "*" / "*.png")], exclude=tmp_path / "out") == [(tmp_path / "a/x.png", tmp_path)]
    assert find_inputs([LIST_PREFIX + str(tmp_path / "list.txt")]) == [(tmp_path / "a/x.png", tmp_path / "a"),
                                                                      (tmp_path / "a/b/y.jpg", tmp_path / "a/b")]
    with pytest.raises(FileNotFoundError, match="no image matches"):
        find_inputs([str(tmp_path / "*.gif")])


def test_same_size_batches_split_at_the_size_and_the_batch_size():
    items = [(i, np.zeros(shape)) for i, shape in enumerate([(2, 2), (2, 2), (2, 2), (3, 2), (2, 2)])]
    assert [[key for key, _ in batch] for batch in same_size_batches(items, 2)] == [[0, 1], [2], [3], [4]]
