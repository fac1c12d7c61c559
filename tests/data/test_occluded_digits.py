"""Occluded digit scenes: determinism, labels, occluders that carry no identity, clean siblings in
every scene, the dataset table entry, a tiny `visattn train` on them, and their pictures."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import check_png

from visattn.cli import main
from visattn.data import DATASETS, DigitScenes, OccludedDigitScenes, build_dataset, classes_and_palette
from visattn.data.digits import _digits
from visattn.data.occluded_digits import MOSAIC_CELLS
from visattn.data import DataConfig
from visattn.viz import figure_size

ROOT = Path(__file__).resolve().parents[2]
SCENES = 40


def _box(shape, y, x, side):
    box = np.zeros(shape, bool)
    box[y:y + side, x:x + side] = True
    return box


def test_deterministic_and_item_format():
    a, b = OccludedDigitScenes("train", length=SCENES, seed=3), OccludedDigitScenes("train", length=SCENES, seed=3)
    for i in range(SCENES):
        (ia, ma, pa), (ib, mb, pb) = a.scene(i), b.scene(i)
        assert np.array_equal(ia, ib) and np.array_equal(ma, mb) and pa == pb
    assert not np.array_equal(OccludedDigitScenes("train", seed=4).scene(0)[0], a.scene(0)[0])
    assert not np.array_equal(OccludedDigitScenes("val", seed=3).scene(0)[0], a.scene(0)[0])
    image, mask = a[5]
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
    assert mask.shape == (64, 64) and mask.dtype == torch.uint8
    assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(a.scene(5)[0]))
    assert torch.equal(mask, torch.from_numpy(a.scene(5)[1]))


def test_one_identity_per_scene_clean_siblings_and_occluded_boxes():
    scenes = OccludedDigitScenes("val", length=SCENES)
    half = scenes.size // 2
    for i in range(SCENES):
        image, mask, placed = scenes.scene(i)
        identity = placed[0][0]
        assert 2 <= len(placed) <= 4 and {d for d, *_ in placed} == {identity}
        occluded = [p[4] for p in placed]
        assert occluded == sorted(occluded) and 1 <= sum(occluded) < len(placed)  # clean first; both kinds
        assert len({(y // half, x // half) for _, y, x, side, _ in placed}) == len(placed)  # one per quadrant
        assert set(np.unique(mask).tolist()) == {0, identity + 1}
        covered = np.zeros(mask.shape, bool)
        for _, y, x, side, is_occluded in placed:
            assert 12 <= side <= 24 and (y // half, x // half) == ((y + side - 1) // half, (x + side - 1) // half)
            covered |= _box(mask.shape, y, x, side)
            labels = mask[y:y + side, x:x + side]
            if is_occluded:  # the whole box, in mosaic blocks of one colour each
                assert (labels == identity + 1).all()
                cells = np.arange(side) * MOSAIC_CELLS // side
                crop = image[y:y + side, x:x + side].astype(int)
                for r in range(MOSAIC_CELLS):
                    for c in range(MOSAIC_CELLS):
                        block = crop[cells == r][:, cells == c]
                        assert (block == block[0, 0]).all()
            else:  # a handwritten digit: its grown ink, not the box
                assert 0.1 * side * side < (labels == identity + 1).sum() < side * side
        assert (mask[~covered] == 0).all()


def test_clean_digits_are_samples_of_the_identity():
    scenes = OccludedDigitScenes("train", length=1)
    targets = _digits()[1]
    assert sorted(np.concatenate(scenes.pool_by_digit).tolist()) == sorted(scenes.pool.tolist())
    for d, pool in enumerate(scenes.pool_by_digit):
        assert len(pool) > 100 and (targets[pool] == d).all()
    assert not set(scenes.pool) & set(OccludedDigitScenes("val").pool)


def test_occluders_carry_no_identity():
    """The same scene drawn with each of the 10 identities: the occluded boxes (and everything outside
    the clean instances' boxes) are bit-identical, so no crop around an occluder tells the digits apart;
    only the clean siblings and the labels change."""
    scenes = OccludedDigitScenes("val", length=SCENES)
    identities = set()
    for i in range(SCENES):
        image, mask, placed = scenes.scene(i)
        identities.add(placed[0][0])
        own = scenes.scene(i, identity=placed[0][0])
        assert np.array_equal(own[0], image) and np.array_equal(own[1], mask) and own[2] == placed
        clean = np.zeros(mask.shape, bool)
        for _, y, x, side, is_occluded in placed:
            if not is_occluded:
                clean |= _box(mask.shape, y, x, side)
        clean_crops = set()
        for d in range(10):
            other, other_mask, other_placed = scenes.scene(i, identity=d)
            assert [p[1:] for p in other_placed] == [p[1:] for p in placed]
            assert np.array_equal(other[~clean], image[~clean])
            for _, y, x, side, is_occluded in other_placed:
                if is_occluded:
                    assert (other_mask[y:y + side, x:x + side] == d + 1).all()
            assert set(np.unique(other_mask[clean]).tolist()) == {0, d + 1}
            clean_crops.add(other[clean].tobytes())
        assert len(clean_crops) == 10  # the clean instances show the identity
    assert len(identities) >= 8  # identities vary across scenes


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"digits_per_image \(1, 3\) must lie within 2\.\.4"):
        OccludedDigitScenes(digits_per_image=(1, 3))
    with pytest.raises(ValueError, match=r"digits_per_image \(2, 5\) must lie within 2\.\.4"):
        OccludedDigitScenes(digits_per_image=(2, 5))
    with pytest.raises(ValueError, match=r"digit_size \(12, 33\) must be at most size // 2 = 32"):
        OccludedDigitScenes(digit_size=(12, 33))
    scenes = OccludedDigitScenes(length=3)
    with pytest.raises(ValueError, match="identity must be a digit 0..9, got 10"):
        scenes.scene(0, identity=10)
    with pytest.raises(IndexError, match="index 3 out of range for 3 scenes"):
        scenes.scene(3)


def test_dataset_table_entry_uses_the_digits_section():
    spec = DATASETS["occluded_digits"]
    assert spec.task == "segmentation"
    assert (spec.crop_size, spec.scale_range, spec.flip) == ((64, 64), (1.0, 1.0), False)
    assert (spec.classes, spec.palette) == (tuple(DigitScenes.classes), DigitScenes.palette) == \
        (tuple(OccludedDigitScenes.classes), OccludedDigitScenes.palette)
    cfg = DataConfig(dataset="occluded_digits")
    cfg.digits.val_length, cfg.digits.size, cfg.digits.digit_size, cfg.digits.seed = 3, 48, [10, 20], 7
    assert classes_and_palette(cfg) == (spec.classes, spec.palette)
    val = build_dataset(cfg, "val", train=False)
    scenes = val.dataset
    assert type(scenes) is OccludedDigitScenes and len(val) == 3
    assert (scenes.split, scenes.size, scenes.digit_size, scenes.seed) == ("val", 48, (10, 20), 7)
    image, mask = val[0]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32
    assert torch.equal(mask, torch.from_numpy(scenes.scene(0)[1]).long())


def test_cli_trains_on_occluded_digits(tmp_path):
    run = tmp_path / "run"
    sets = ["model.name=tinyseg:build", "model.kwargs={}", "data.dataset=occluded_digits",
            "data.digits.train_length=16", "data.digits.val_length=4", "data.digits.size=32",
            "data.digits.digit_size=[8,16]", "data.crop_size=[32,32]", "train.batch_size=4", "train.iters=2",
            "eval.batch_size=4", f"run.dir={run}"]
    assert main(["train", "--quiet", "--trust-code", *[a for s in sets for a in ("--set", s)]]) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["dataset"] == "occluded_digits"
    assert (run / "model.safetensors").is_file()


def test_figure_script_draws_the_dataset_samples(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_figures", ROOT / "scripts" / "make_figures.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--datasets", "--output", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / f"{name}.png") for name in script.DATASET_FIGURES]
    assert sorted(p.stem for p in tmp_path.iterdir()) == sorted(script.DATASET_FIGURES)
    for name, panels in script.DATASET_FIGURES.items():
        check_png(tmp_path / f"{name}.png", figure_size(panels), min_std=10, min_colours=50)
    docs = (ROOT / "docs" / "datasets.md").read_text()
    assert all(f"(img/{name}.png)" in docs for name in script.DATASET_FIGURES)
    assert "python scripts/make_figures.py --datasets" in docs
