"""Per-class weights: label counts of hand-made masks, median frequency balancing and inverse
square-root frequency against hand-computed values, the checks on given lists, the share of the
work under DDP, and the run directory's cache (written by a new run, read by a resumed one)."""
import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image

from visattn.data import DigitClassification, DigitScenes, MaskFolder
from visattn.engine import class_weights as cw
from visattn.engine.config import CLASS_WEIGHTINGS, ConfigError, load_config
from visattn.engine.distributed import DistInfo
from visattn.engine.run_dir import RunDir
from visattn.engine.trainer import Trainer

# labelled pixels: A 4 (classes 0, 1), B 3 (0, 2), C 2 (1); class 3 appears nowhere
MASKS = {"a": [[0, 0], [0, 1]], "b": [[0, 2], [2, 255]], "c": [[1, 1], [255, 255]]}
PIXELS, IMAGE_PIXELS = [4, 3, 2, 0], [4 + 3, 4 + 2, 3, 0]


def _mask_folder(root) -> MaskFolder:
    for name, mask in MASKS.items():
        for folder, array in (("images", np.zeros((2, 2, 3))), ("masks", np.array(mask))):
            (root / folder / "train").mkdir(parents=True, exist_ok=True)
            Image.fromarray(array.astype(np.uint8)).save(root / folder / "train" / f"{name}.png")
    return MaskFolder(root, "train", num_classes=4)


def test_weightings_are_the_configs():
    assert set(cw.WEIGHTINGS) == set(CLASS_WEIGHTINGS)


def test_counts_of_hand_made_masks(tmp_path):
    counts = cw.count_labels(_mask_folder(tmp_path), 4, quiet=True)
    assert counts == cw.LabelCounts(PIXELS, IMAGE_PIXELS, 3)


def test_median_frequency_by_hand():
    # freq = 4/7, 3/6, 2/3; median 4/7
    weights = cw.median_frequency_weights(cw.LabelCounts(PIXELS, IMAGE_PIXELS, 3))
    assert weights == pytest.approx([1, (4 / 7) / (1 / 2), (4 / 7) / (2 / 3), 0])
    # an even number of classes: the median is the mean of the two middle frequencies (1/4, 1/2)
    weights = cw.median_frequency_weights(cw.LabelCounts([1, 1, 2, 3], [10, 4, 4, 3], 4))
    assert weights == pytest.approx([3.75, 1.5, 0.75, 0.375])


def test_inverse_sqrt_frequency_by_hand():
    raw = [1 / (4 / 9) ** 0.5, 1 / (3 / 9) ** 0.5, 1 / (2 / 9) ** 0.5]
    weights = cw.inverse_sqrt_frequency_weights(cw.LabelCounts(PIXELS, IMAGE_PIXELS, 3))
    assert weights == pytest.approx([w / (sum(raw) / 3) for w in raw] + [0])
    assert sum(weights[:3]) / 3 == pytest.approx(1)


def test_a_set_without_labels_has_no_weights():
    with pytest.raises(ValueError, match="hold no labelled pixel"):
        cw.median_frequency_weights(cw.LabelCounts([0, 0], [0, 0], 2))


def test_unknown_labels_are_named():
    class Masks:
        def __len__(self):
            return 1

        def load(self, index):
            return None, np.array([[0, 5], [7, 255]], dtype=np.uint8)

    with pytest.raises(ValueError, match=r"mask 0 of Masks has labels \[5, 7\]; expected 0\.\.3 and 255"):
        cw.count_labels(Masks(), 4, quiet=True)


def test_given_lists_and_their_length():
    classes = ("bg", "cat", "dog")
    assert cw.resolve_class_weights(None, None, classes) == (None, None)
    assert cw.resolve_class_weights([1, 2, 0.5], None, classes) == ([1.0, 2.0, 0.5], None)
    with pytest.raises(ConfigError, match=r"^config key 'train\.class_weights' must be a list of 3 numbers, one per "
                                          r"class \(bg, cat, dog\), got 2: \[1, 2\]$"):
        cw.resolve_class_weights([1, 2], None, classes)
    with pytest.raises(ConfigError, match=r"'train\.class_weights' must be null or a list of numbers for "
                                          "DigitClassification"):
        cw.resolve_class_weights("median_frequency", DigitClassification("train", 16, (8, 12)), tuple("0123456789"))


def test_counts_shared_over_processes(tmp_path):
    """Each process counts items ``rank::world_size`` and the shares are all-reduced: run here as the
    two shares of a two-process job, each in a process group of one (whose all-reduce keeps it)."""
    scenes = DigitScenes("train", length=5, size=16, digit_size=(4, 8))
    total = cw.count_labels(scenes, 11, quiet=True)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        shares = [cw.count_labels(scenes, 11, DistInfo(rank, 2), quiet=True) for rank in (0, 1)]
    finally:
        dist.destroy_process_group()
    assert [a + b for a, b in zip(shares[0].pixels, shares[1].pixels)] == total.pixels
    assert [a + b for a, b in zip(shares[0].image_pixels, shares[1].image_pixels)] == total.image_pixels
    assert shares[0].pixels != total.pixels and sum(total.pixels) == 5 * 16 * 16


TINY = ["model.name=tinyseg:build", "model.kwargs={}", "data.digits.train_length=8", "data.digits.val_length=4",
        "data.digits.size=32", "data.digits.digit_size=[8,16]", "data.crop_size=[32,32]", "train.batch_size=8",
        "train.iters=1", "train.eval_every=null", "eval.batch_size=4", "train.class_weights=median_frequency"]


def test_a_run_keeps_its_weights_and_a_resumed_run_reads_them(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    cfg = load_config(None, TINY + [f"run.dir={run}"])
    with Trainer(cfg, torch.device("cpu"), quiet=True, trust_code=True) as trainer:
        trainer.fit()
        weights = trainer.criterion.class_weights.tolist()
    record = json.loads(run.class_weights.read_text())
    scenes = DigitScenes("train", length=8, size=32, digit_size=(8, 16))
    masks = [scenes.load(i)[1] for i in range(8)]
    pixels = [sum(int((m == c).sum()) for m in masks) for c in range(11)]
    image_pixels = [sum(m.size for m in masks if (m == c).any()) for c in range(11)]
    assert record == {"method": "median_frequency", "classes": list(scenes.classes), "images": 8, "pixels": pixels,
                      "image_pixels": image_pixels, "weights": pytest.approx(weights)}
    freq = [p / q for p, q in zip(pixels, image_pixels) if p]
    assert weights == pytest.approx([float(np.median(freq)) * q / p if p else 0 for p, q in zip(pixels, image_pixels)])

    def no_counting(*args, **kwargs):
        raise AssertionError("a resumed run counts again")

    monkeypatch.setattr(cw, "count_labels", no_counting)
    with Trainer(run.load_config(), torch.device("cpu"), resume=run.path, quiet=True, trust_code=True) as resumed:
        assert resumed.criterion.class_weights.tolist() == weights
    monkeypatch.undo()
    # another weighting on resume is refused: the loss of the steps so far is the run's
    with pytest.raises(ConfigError, match=r"train\.class_weights='inverse_sqrt_frequency' \(the run's is "
                                          r"'median_frequency'\)"):
        Trainer(run.load_config(["train.class_weights=inverse_sqrt_frequency"]), torch.device("cpu"), resume=run.path,
                quiet=True, trust_code=True)
    assert json.loads(run.class_weights.read_text()) == record
    # a record of another weighting is not used: counted again
    assert cw.read_class_weights(run.class_weights, "inverse_sqrt_frequency", resumed.classes) is None
    counted, new_record = cw.resolve_class_weights("inverse_sqrt_frequency", resumed.train_set, resumed.classes,
                                                   run.class_weights, quiet=True)
    assert new_record["method"] == "inverse_sqrt_frequency"
    assert counted == pytest.approx(cw.inverse_sqrt_frequency_weights(cw.LabelCounts(pixels, image_pixels, 8)))


def test_a_cache_whose_weights_its_counts_do_not_give_is_an_error_naming_it(tmp_path, capsys):
    """A resumed run whose class_weights.json was edited to 1e308: refused naming the file, not a
    non-finite loss."""
    from visattn.cli import main

    run = RunDir(tmp_path / "run")
    argv = ["train", "--quiet", "--trust-code", *[a for s in TINY for a in ("--set", s)], "--set", f"run.dir={run}"]
    assert main(argv) == 0
    record = json.loads(run.class_weights.read_text())
    record["weights"][1] = 1e308
    run.class_weights.write_text(json.dumps(record))
    assert main(["train", "--resume", str(run.path), "--trust-code", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{run.class_weights} holds class weights its pixel counts do not give (class '0': 1e+308" in err
    assert len(err.strip().splitlines()) == 1
