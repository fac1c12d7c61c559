"""The up-front check of a dataset's files, and what training does with a file that only decoding
finds bad: it saves the last completed step, then fails naming the file."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from visattn.data import build_dataset
from visattn.data.validate import bad_files_error, dataset_files, find_bad_files, pair_problem
from visattn.engine import train
from visattn.engine.config import DataConfig, load_config
from visattn.engine.trainer import Trainer

SIZE = 32


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def _pair(root: Path, split: str, name: str, seed: int, mask_size: tuple[int, int] = (SIZE, SIZE)) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    image = _save(root / "images" / split / f"{name}.png", rng.integers(0, 256, (SIZE, SIZE, 3)))
    mask = _save(root / "masks" / split / f"{name}.png", rng.integers(0, 3, mask_size))
    return image, mask


def _mask_folder(root: Path, train_items: int = 12, val_items: int = 4) -> Path:
    for split, count in (("train", train_items), ("val", val_items)):
        for i in range(count):
            _pair(root, split, f"{i:02d}", seed=i + 100 * (split == "val"))
    return root


def _truncate(path: Path) -> None:
    """Keep the PNG header (size and mode read fine), cut the pixel data short."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _config(root: Path, run_dir: Path):
    return load_config(None, ["model.name=tinyseg:build", "model.kwargs={}", "data.dataset=folder", f"data.root={root}",
                              "data.num_classes=3", f"data.crop_size=[{SIZE},{SIZE}]", "data.scale_range=[1,1]",
                              "train.batch_size=4", "train.iters=4", "train.ckpt_every=100", "train.log_every=1",
                              "eval.batch_size=4", f"run.dir={run_dir}"])


def test_pair_problem_reads_headers_only(tmp_path):
    image, mask = _pair(tmp_path, "train", "ok", seed=0)
    assert pair_problem(image, mask) is None and pair_problem(image, None) is None
    _truncate(image)
    assert pair_problem(image, mask) is None  # found when the item is decoded (see below)
    _, short = _pair(tmp_path, "train", "short", seed=1, mask_size=(SIZE, SIZE - 1))
    assert pair_problem(image, short) == f"image {image} is 32x32 but its mask {short} is 31x32"
    rgb = _save(tmp_path / "rgb.png", np.zeros((SIZE, SIZE, 3)))
    assert pair_problem(image, rgb) == f"mask {rgb} has mode 'RGB': expected a single-channel label image"
    text = tmp_path / "text.png"
    text.write_text("not an image")
    assert pair_problem(text, mask).startswith(f"cannot read image {text}: ")
    assert pair_problem(image, tmp_path / "missing.png").startswith(f"cannot read mask {tmp_path / 'missing.png'}: ")


def test_find_bad_files_lists_every_problem(tmp_path, capsys):
    pairs = [_pair(tmp_path, "train", f"{i:02d}", seed=i) for i in range(14)]
    for image, _ in pairs[1::2]:
        image.write_text("not an image")
    problems = find_bad_files(pairs, desc="check train files")
    assert problems == [pair_problem(*pair) for pair in pairs[1::2]] and len(problems) == 7
    assert "check train files" in capsys.readouterr().err  # the progress bar
    message = str(bad_files_error(problems + problems, shown=10))
    assert message.splitlines()[0] == "14 bad dataset files (fix or remove them):"
    assert message.splitlines()[1:11] == [f"  {p}" for p in (problems + problems)[:10]]
    assert message.splitlines()[-1] == "  ... and 4 more"


def test_dataset_files_of_each_kind(tmp_path):
    root = _mask_folder(tmp_path / "seg", train_items=3, val_items=1)
    folder = build_dataset(DataConfig(dataset="folder", root=str(root), num_classes=3), "train", train=True)
    files = dataset_files(folder)
    assert [(f.image, f.mask) for f in files] == [(root / f"images/train/{i:02d}.png", root / f"masks/train/{i:02d}.png")
                                                  for i in range(3)]
    np.testing.assert_array_equal(files[1].read_mask(), folder.dataset.load_mask(1))
    _save(tmp_path / "cls/train/cat/x.png", np.zeros((8, 8, 3)))
    classes = build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path / "cls"), crop_size=8), "train", True)
    assert dataset_files(classes) == [(tmp_path / "cls/train/cat/x.png", None, None)]
    assert dataset_files(build_dataset(DataConfig(), "train", train=True)) == []  # digits: in memory


def test_bad_validation_file_fails_before_training(tmp_path):
    root = _mask_folder(tmp_path / "seg")
    _, mask = _pair(root, "val", "01", seed=7, mask_size=(SIZE - 2, SIZE))
    with pytest.raises(ValueError, match=f"1 bad dataset file .*\n  image .*01.png is 32x32 but its mask {mask} is 32x30"):
        train(_config(root, tmp_path / "run"), quiet=True, trust_code=True)
    assert not (tmp_path / "run").exists()  # nothing written, no step run


def test_undecodable_training_file_saves_the_last_step_then_names_the_file(tmp_path):
    root = _mask_folder(tmp_path / "seg")
    assert train(_config(root, tmp_path / "straight"), quiet=True, trust_code=True)["step"] == 4
    with Trainer(_config(root, tmp_path / "run"), torch.device("cpu"), quiet=True, trust_code=True) as trainer:
        trainer.sampler.set_epoch(0)
        first_of_step_3 = list(trainer.sampler)[2 * trainer.micro_batch]
        image = trainer.train_set.dataset.pairs[first_of_step_3][0]
        original = image.read_bytes()
        _truncate(image)  # after the up-front check, which it would pass anyway
        with pytest.raises(ValueError, match=f"cannot read image {image}"):
            trainer.fit()
    assert (tmp_path / "run/checkpoints/latest").read_text() == "step_0000002"
    image.write_bytes(original)
    cfg = load_config(tmp_path / "run/config.yaml")
    assert train(cfg, resume=tmp_path / "run", quiet=True, trust_code=True)["step"] == 4
    a, b = load_file(tmp_path / "straight/model.safetensors"), load_file(tmp_path / "run/model.safetensors")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_undecodable_validation_file_keeps_the_final_weights(tmp_path):
    root = _mask_folder(tmp_path / "seg")
    with Trainer(_config(root, tmp_path / "run"), torch.device("cpu"), quiet=True, trust_code=True) as trainer:
        _truncate(root / "images/val/02.png")
        with pytest.raises(ValueError, match=f"cannot read image {root / 'images/val/02.png'}"):
            trainer.fit()
    assert (tmp_path / "run/checkpoints/latest").read_text() == "step_0000004"
    assert (tmp_path / "run/model.safetensors").is_file()


def test_a_mask_label_outside_the_classes_fails_before_training(tmp_path):
    root = _mask_folder(tmp_path / "seg")
    mask = root / "masks/train/05.png"
    _save(mask, np.full((SIZE, SIZE), 3))  # data.num_classes=3: labels 0..2 and 255
    with pytest.raises(ValueError, match=r"1 bad dataset file .*\n  mask .*05\.png has label values \[3\]; MaskFolder "
                                         r"masks hold class ids 0\.\.2 and 255 \(ignore\)$"):
        train(_config(root, tmp_path / "run"), quiet=True, trust_code=True)
    assert not (tmp_path / "run").exists()  # no step run, no checkpoint to --resume from


def test_mask_check_reads_the_mask_not_the_image(tmp_path):
    root = _mask_folder(tmp_path / "seg", train_items=1, val_items=1)
    folder = build_dataset(DataConfig(dataset="folder", root=str(root), num_classes=3), "train", train=True)
    (item,) = dataset_files(folder)
    _truncate(item.image)
    assert pair_problem(*item) is None  # the image's pixels are not decoded
    _save(item.mask, np.array([[0, 1, 255, 9]] * SIZE, dtype=np.uint8).repeat(8, axis=1))
    assert pair_problem(*item) == (f"mask {item.mask} has label values [9]; MaskFolder masks hold class ids 0..2 "
                                   "and 255 (ignore)")


def test_exif_orientation_turns_the_size_the_check_compares(tmp_path):
    image, mask = tmp_path / "photo.jpg", _save(tmp_path / "mask.png", np.zeros((80, 40)))  # 40 wide, 80 high
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 80x40, shown turned by 90 degrees
    Image.new("RGB", (80, 40)).save(image, exif=exif)
    assert pair_problem(image, mask) is None
    _save(mask, np.zeros((40, 80)))
    assert pair_problem(image, mask) == f"image {image} is 40x80 but its mask {mask} is 80x40"


def test_alpha_and_16_bit_images_are_said_once(tmp_path, capsys, monkeypatch):
    from visattn.data import segmentation

    monkeypatch.setattr(segmentation, "_said", set())
    mask = _save(tmp_path / "mask.png", np.zeros((SIZE, SIZE)))
    rgba = [tmp_path / f"rgba{i}.png" for i in range(3)]
    for path in rgba:
        Image.new("RGBA", (SIZE, SIZE)).save(path)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.zeros((SIZE, SIZE), dtype=np.uint16)).save(deep)
    assert find_bad_files([(p, mask) for p in [*rgba, deep, deep]], quiet=True) == []
    assert capsys.readouterr().err.splitlines() == [
        f"visattn: images with an alpha channel are read without it (transparency dropped), e.g. {rgba[0]}",
        f"visattn: 16-bit images are scaled to 8 bits (0..65535 -> 0..255), e.g. {deep}"]
