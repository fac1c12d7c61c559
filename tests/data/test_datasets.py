"""Datasets on tiny trees written in the real on-disk layouts, bad-input errors, augmentation."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from visattn.data import (ADE20K, DATASETS, Cityscapes, DigitClassification, DigitScenes, MaskFolder, PascalVOC,
                          build_dataset, classes_and_palette, image_to_tensor, voc_palette)
from visattn.data.registry import label_convention
from visattn.data.segmentation import label_ids_lut
from visattn.data.transforms import segmentation_transforms
from visattn.data import DataConfig


def _png(path: Path, array: np.ndarray, mode: str | None = None, palette: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array.astype(np.uint8), mode=mode)
    if palette:
        img.putpalette([c for rgb in voc_palette(256) for c in rgb])
    img.save(path)
    return path


def _rgb(h=6, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3))


def _cityscapes(root: Path, labels: np.ndarray) -> Path:
    _png(root / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png", _rgb(*labels.shape))
    _png(root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png", labels)
    return root


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    labels = np.array([[7, 8, 26, 33], [0, 1, 24, 255]])
    ds = Cityscapes(_cityscapes(tmp_path, labels), "train")
    assert len(ds) == 1 and ds.num_classes == 19 and len(ds.palette) == 19
    image, mask = ds[0]
    assert image.shape == (3, 2, 4) and image.dtype == torch.uint8
    assert mask.tolist() == [[0, 1, 13, 18], [255, 255, 11, 255]]


# the 19 evaluated classes of the official cityscapesscripts label table: (name, labelId), in trainId order
OFFICIAL_CITYSCAPES = [("road", 7), ("sidewalk", 8), ("building", 11), ("wall", 12), ("fence", 13), ("pole", 17),
                       ("traffic light", 19), ("traffic sign", 20), ("vegetation", 21), ("terrain", 22), ("sky", 23),
                       ("person", 24), ("rider", 25), ("car", 26), ("truck", 27), ("bus", 28), ("train", 31),
                       ("motorcycle", 32), ("bicycle", 33)]


def test_cityscapes_label_ids_round_trip(tmp_path):
    labels = np.arange(34).reshape(2, 17)  # every labelId, evaluated or not
    train_ids = Cityscapes(_cityscapes(tmp_path, labels), "train")[0][1].numpy()
    to_label_ids, palette = label_convention(DataConfig(dataset="cityscapes"))
    evaluated = {label_id: train_id for train_id, (_, label_id) in enumerate(OFFICIAL_CITYSCAPES)}
    assert to_label_ids.dtype == np.uint8 and palette is None
    for label_id, train_id in zip(labels.ravel(), train_ids.ravel()):
        assert train_id == evaluated.get(label_id, 255)
        assert to_label_ids[train_id] == (label_id if label_id in evaluated else 0)  # ignore -> 0 (unlabeled)
    for train_id, (name, label_id) in enumerate(OFFICIAL_CITYSCAPES):
        assert DATASETS["cityscapes"].classes[train_id] == name and to_label_ids[train_id] == label_id


def test_ade20k_label_ids_undo_reduce_zero_label(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    stored = np.arange(151).reshape(1, 151)
    _png(root / "images/validation/ADE_val_00000001.jpg", _rgb(1, 151))
    _png(root / "annotations/validation/ADE_val_00000001.png", stored)
    train_ids = ADE20K(root, "val")[0][1].numpy()
    assert train_ids.tolist() == [[255] + list(range(150))]
    to_label_ids, palette = label_convention(DataConfig(dataset="ade20k"))
    assert np.array_equal(to_label_ids[train_ids], stored) and palette is None  # 0 ("other") comes back from ignore
    assert to_label_ids[:150].tolist() == list(range(1, 151))


def test_voc_label_files_are_palette_pngs_with_the_devkit_colours():
    to_label_ids, palette = label_convention(DataConfig(dataset="voc"))
    assert to_label_ids.tolist() == list(range(256))  # VOC stores class ids, 255 = boundary
    assert palette == voc_palette(256)
    # VOCdevkit colours: aeroplane, person, the boundary
    assert palette[1] == (128, 0, 0) and palette[15] == (192, 128, 128) and palette[255] == (224, 224, 192)
    for name in ("digits", "folder"):
        assert label_convention(DataConfig(dataset=name))[0].tolist() == list(range(256))


def test_label_ids_lut_rejects_an_ambiguous_table():
    lut = np.full(256, -1)
    lut[[3, 4]] = 0
    with pytest.raises(ValueError, match="train id 0 comes from two label values, 3 and 4"):
        label_ids_lut(lut, unlabeled=0)


def test_ade20k_reduce_zero_label(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    _png(root / "images/validation/ADE_val_00000001.jpg", _rgb(2, 3))
    _png(root / "annotations/validation/ADE_val_00000001.png", np.array([[0, 1, 150], [2, 0, 255]]))
    ds = ADE20K(tmp_path, "val")  # the parent of ADEChallengeData2016 works too
    assert ds.num_classes == 150
    assert ds[0][1].tolist() == [[255, 0, 149], [1, 255, 255]]
    assert ADE20K(root, "val", reduce_zero_label=False)[0][1].tolist() == [[0, 1, 150], [2, 0, 255]]


def test_pascal_voc_palette_masks_and_sbd_list(tmp_path):
    root = tmp_path / "VOCdevkit/VOC2012"
    _png(root / "JPEGImages/2007_000032.jpg", _rgb(3, 4))
    _png(root / "JPEGImages/2008_000002.jpg", _rgb(3, 4, seed=1))
    _png(root / "SegmentationClass/2007_000032.png", np.array([[0, 15, 255, 1]] * 3), mode="P", palette=True)
    _png(root / "SegmentationClassAug/2008_000002.png", np.array([[20, 0, 0, 3]] * 3), mode="L")
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000032\n")
    (root / "ImageSets/SegmentationAug").mkdir(parents=True)
    (root / "ImageSets/SegmentationAug/train_aug.txt").write_text("2007_000032\n2008_000002\n")
    val = PascalVOC(tmp_path, "val")
    assert len(val) == 1 and val.num_classes == 21
    assert val[0][1][0].tolist() == [0, 15, 255, 1]
    aug = PascalVOC(root, "train_aug")
    assert len(aug) == 2 and aug[1][1][0].tolist() == [20, 0, 0, 3]


def test_mask_folder_and_imagefolder(tmp_path):
    _png(tmp_path / "seg/images/train/a.png", _rgb(4, 4))
    _png(tmp_path / "seg/masks/train/a.png", np.array([[0, 1, 2, 255]] * 4))
    ds = MaskFolder(tmp_path / "seg", "train", num_classes=3)
    assert ds[0][1][0].tolist() == [0, 1, 2, 255]
    _png(tmp_path / "seg/masks/train/a.png", np.array([[0, 1, 7, 255]] * 4))
    with pytest.raises(ValueError, match=r"a\.png has label values \[7\]; MaskFolder masks hold class ids 0\.\.2 and 255"):
        ds[0]
    for cls in ("cat", "dog"):
        _png(tmp_path / f"cls/train/{cls}/x.png", _rgb(40, 40))
    cfg = DataConfig(dataset="imagefolder", root=str(tmp_path / "cls"), crop_size=32)
    cls_ds = build_dataset(cfg, "train", train=True)
    image, label = cls_ds[1]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 1


def test_mask_folder_split_must_exist(tmp_path):
    _png(tmp_path / "images/train/a.png", _rgb(4, 4))
    _png(tmp_path / "masks/train/a.png", np.zeros((4, 4)))
    with pytest.raises(FileNotFoundError, match=f"directory not found: {tmp_path / 'images' / 'val'} "):
        MaskFolder(tmp_path, "val", num_classes=3)
    _png(tmp_path / "images/val/b.png", _rgb(4, 4))
    with pytest.raises(FileNotFoundError, match=f"directory not found: {tmp_path / 'masks' / 'val'} "):
        MaskFolder(tmp_path, "val", num_classes=3)
    _png(tmp_path / "flat/images/a.png", _rgb(4, 4))  # images with no split folder are not every split
    _png(tmp_path / "flat/masks/a.png", np.zeros((4, 4)))
    with pytest.raises(FileNotFoundError, match="expected images/train/ and masks/train/ inside"):
        MaskFolder(tmp_path / "flat", "train", num_classes=3)


@pytest.mark.parametrize("problem", ["missing_root", "size", "label", "corrupt", "missing_split"])
def test_bad_input_errors_name_the_file(tmp_path, problem):
    labels = np.array([[7, 8], [26, 0]])
    root = _cityscapes(tmp_path / "cs", labels)
    img = root / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    mask = root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    if problem == "missing_root":
        with pytest.raises(FileNotFoundError, match="nowhere"):
            Cityscapes(tmp_path / "nowhere")
        return
    if problem == "missing_split":
        with pytest.raises(FileNotFoundError, match="val"):
            Cityscapes(root, "val")
        return
    if problem == "size":
        _png(mask, np.zeros((3, 2)))
        match = "is 2x2 but its mask .*labelIds.png is 2x3"
    elif problem == "label":
        _png(mask, np.array([[7, 40], [26, 0]]))
        match = r"labelIds.png has label values \[40\]; Cityscapes masks hold labelIds 0\.\.33 and 255 \(ignore\)$"
    else:
        img.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        match = "cannot read image .*leftImg8bit.png"
    with pytest.raises(ValueError, match=match):
        Cityscapes(root)[0]


def test_classes_and_palette_without_data():
    assert len(classes_and_palette(DataConfig(dataset="cityscapes"))[0]) == 19
    assert len(classes_and_palette(DataConfig(dataset="ade20k"))[1]) == 150
    assert classes_and_palette(DataConfig(dataset="folder", num_classes=3))[0] == ("class0", "class1", "class2")


def test_segmentation_transforms_move_image_and_mask_together():
    torch.manual_seed(0)
    labels = torch.randint(0, 5, (20, 30), dtype=torch.uint8)
    image = tv_tensors.Image(labels.expand(3, -1, -1) * 40)  # the image encodes its label
    t = segmentation_transforms(True, crop_size=(24, 36), scale_range=(1.0, 1.0), flip=True,
                                mean=(0, 0, 0), std=(1, 1, 1))
    for _ in range(5):
        x, y = t(image, tv_tensors.Mask(labels))
        assert x.shape == (3, 24, 36) and y.shape == (24, 36) and y.dtype == torch.int64
        valid = y != 255
        assert valid.sum() == 20 * 30  # padding (and only padding) is ignored
        assert torch.equal((x[0][valid] * 255 / 40).round().long(), y[valid])
        assert (x[:, ~valid] == 0).all()
    scaled = segmentation_transforms(True, crop_size=(16, 16), scale_range=(0.5, 2.0), color_jitter=0.4)
    x, y = scaled(image, tv_tensors.Mask(labels))
    assert x.shape == (3, 16, 16) and set(y.unique().tolist()) <= {0, 1, 2, 3, 4, 255}


def test_digit_scenes_deterministic_and_labels_where_digits_were_drawn():
    a, b = DigitScenes("train", length=10, seed=3), DigitScenes("train", length=10, seed=3)
    for i in range(10):
        ia, ma, placed = a.scene(i)
        ib, mb, _ = b.scene(i)
        assert np.array_equal(ia, ib) and np.array_equal(ma, mb)
        assert ia.shape == (64, 64, 3) and ia.dtype == np.uint8
        assert 2 <= len(placed) <= 4
        covered = np.zeros_like(ma, dtype=bool)
        for digit, y, x, side in placed:
            box = np.zeros_like(covered)
            box[y:y + side, x:x + side] = True
            covered |= box
        assert (ma[~covered] == 0).all()  # labels only inside the drawn digits' boxes
        for k, (digit, y, x, side) in enumerate(placed):
            box = ma[y:y + side, x:x + side]
            overlapped = any(not (y + side <= py or py + ps <= y or x + side <= px or px + ps <= x)
                             for j, (_, py, px, ps) in enumerate(placed) if j != k)
            if not overlapped:  # alone in its box: its label marks its ink, and nothing else is there
                assert (box == digit + 1).sum() > 0.1 * side * side
                assert set(np.unique(box).tolist()) <= {0, digit + 1}
    assert not np.array_equal(DigitScenes("train", seed=4).scene(0)[0], a.scene(0)[0])
    assert not np.array_equal(DigitScenes("val", seed=3).scene(0)[0], a.scene(0)[0])
    image, mask = a[0]
    assert image.shape == (3, 64, 64) and mask.shape == (64, 64) and int(mask.max()) <= 10


def test_digit_splits_are_disjoint_and_classification_variant():
    assert not set(DigitScenes("train").pool) & set(DigitScenes("val").pool)
    ds = DigitClassification("val", size=32)
    assert len(ds) == 360 and ds.num_classes == 10
    image, label = ds[5]
    image2, label2 = DigitClassification("val", size=32)[5]
    assert image.shape == (3, 32, 32) and 0 <= label <= 9 and torch.equal(image, image2) and label == label2
    with pytest.raises(ValueError, match="split"):
        DigitScenes("test")


def test_dataset_table_agrees_with_the_datasets(tmp_path):
    for name, dataset in (("digits", DigitScenes("val", length=1)), ("digits_cls", DigitClassification("val")),
                          ("cityscapes", Cityscapes(_cityscapes(tmp_path, np.array([[7, 8]])), "train"))):
        spec = DATASETS[name]
        assert spec.classes == tuple(dataset.classes), name
        assert spec.palette == tuple(getattr(dataset, "palette", None) or voc_palette(len(dataset.classes))), name
        assert classes_and_palette(DataConfig(dataset=name)) == (spec.classes, spec.palette)
    with pytest.raises(ValueError, match="unknown dataset 'cityscape'; choose one of digits, cityscapes"):
        build_dataset(DataConfig(dataset="cityscape"), "train", train=False)
    with pytest.raises(ValueError, match="dataset 'voc' needs data.root"):
        build_dataset(DataConfig(dataset="voc"), "train", train=False)


def test_image_to_tensor_is_the_evaluation_transform():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    expected, _ = segmentation_transforms(False, mean=mean, std=std)(
        tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1)), tv_tensors.Mask(torch.zeros(5, 7, dtype=torch.int64)))
    x = image_to_tensor(rgb, mean, std)
    assert x.shape == (1, 3, 5, 7) and torch.allclose(x[0], expected, atol=1e-6)


def test_read_image_names_an_image_too_large_to_decode(tmp_path, monkeypatch):
    from PIL import Image

    from visattn.data import read_image

    path = tmp_path / "huge.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 3)  # PIL refuses above twice the limit
    with pytest.raises(ValueError, match=r"cannot read image .*huge\.png"):
        read_image(path)


def _exif_photo(path: Path, array: np.ndarray, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(array.astype(np.uint8)).save(path, exif=exif, quality=100, subsampling=0)
    return path


@pytest.mark.parametrize("orientation, turn", [(1, lambda a: a), (3, lambda a: np.rot90(a, 2)),
                                               (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1))])
def test_read_image_turns_a_photo_by_its_exif_orientation(tmp_path, orientation, turn):
    from visattn.data import read_image

    stored = np.zeros((40, 80, 3), dtype=np.uint8)  # 80 wide, 40 high, its top-left quarter white
    stored[:20, :40] = 255
    shown = np.array(read_image(_exif_photo(tmp_path / "photo.jpg", stored, orientation)))
    assert shown.shape == turn(stored).shape
    assert np.abs(shown.astype(int) - turn(stored)).max() < 40  # JPEG


def test_read_image_scales_16_bits_and_drops_alpha_saying_so(tmp_path, capsys, monkeypatch):
    from visattn.data import read_image, segmentation

    monkeypatch.setattr(segmentation, "_said", set())
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    deep = tmp_path / "deep.png"
    Image.fromarray(values).save(deep)
    assert Image.open(deep).mode == "I;16"
    assert np.array(read_image(deep)).tolist() == [[[v] * 3 for v in (0, 1, 128, 255)]]
    assert np.array(read_image(deep, mode="L")).tolist() == [[0, 1, 128, 255]]
    rgba = np.array([[[10, 20, 30, 0], [40, 50, 60, 255]]], dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    assert np.array(read_image(tmp_path / "alpha.png")).tolist() == [[[10, 20, 30], [40, 50, 60]]]
    read_image(tmp_path / "alpha.png")
    assert capsys.readouterr().err.splitlines() == [
        f"visattn: 16-bit images are scaled to 8 bits (0..65535 -> 0..255), e.g. {deep}",
        f"visattn: images with an alpha channel are read without it (transparency dropped), e.g. {tmp_path / 'alpha.png'}"]
    notes = []
    read_image(deep, notes=notes)
    assert notes == [segmentation.SCALED_TO_8_BITS] and capsys.readouterr().err == ""
    Image.fromarray(rgba[..., :3]).save(tmp_path / "keyed.png", transparency=(10, 20, 30))  # RGB, one colour clear
    read_image(tmp_path / "keyed.png", notes=notes)
    assert notes == [segmentation.SCALED_TO_8_BITS, segmentation.ALPHA_DROPPED]
    wide = tmp_path / "wide.tif"
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(wide)
    with pytest.raises(ValueError, match=r"cannot read image .*wide\.tif: 32-bit values 0\.\.70000; save it with 8 or 16"):
        read_image(wide)
    Image.fromarray(np.array([[0.5]], dtype=np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match=r"float\.tif: floating-point pixels"):
        read_image(tmp_path / "float.tif")


def test_masks_are_read_by_their_label_values(tmp_path):
    rgb = _rgb(2, 3)
    _png(tmp_path / "seg/images/train/a.png", rgb)
    labels = np.array([[0, 1, 2], [255, 2, 1]])
    mask_path = tmp_path / "seg/masks/train/a.png"
    _png(mask_path, labels, palette=True)  # palette colours are not the labels: index 1 is (128, 0, 0)
    ds = MaskFolder(tmp_path / "seg", "train", num_classes=3)
    assert Image.open(mask_path).mode == "P" and ds.load_mask(0).tolist() == labels.tolist()
    Image.fromarray(labels.astype(np.uint16)).save(mask_path)
    assert Image.open(mask_path).mode == "I;16" and ds.load_mask(0).tolist() == labels.tolist()
    Image.fromarray(np.array([[0, 1, 2], [300, 2, 1]], dtype=np.uint16)).save(mask_path)
    with pytest.raises(ValueError, match=r"mask .*a\.png has label values outside 0\.\.255: \[300\]"):
        ds.load_mask(0)
    signed = tmp_path / "signed.tif"  # 32-bit: -1 must not wrap around to 255 (ignore)
    Image.fromarray(np.array([[0, 1, 2], [-1, 2, 1]], dtype=np.int32)).save(signed)
    ds.pairs = [(ds.pairs[0][0], signed)]
    with pytest.raises(ValueError, match=r"label values outside 0\.\.255: \[-1\]"):
        ds.load_mask(0)


def test_image_and_mask_are_turned_alike(tmp_path):
    stored = _rgb(4, 6)
    (tmp_path / "seg/images/train").mkdir(parents=True)
    _exif_photo(tmp_path / "seg/images/train/a.jpg", stored, 6)
    _png(tmp_path / "seg/masks/train/a.png", np.zeros((6, 4)))  # drawn on the photo as shown: 4 wide, 6 high
    image, mask = MaskFolder(tmp_path / "seg", "train", num_classes=3)[0]
    assert image.shape == (3, 6, 4) and mask.shape == (6, 4)


def test_mask_folder_without_classes_names_the_config_keys(tmp_path):
    _png(tmp_path / "images/train/a.png", _rgb(4, 4))
    _png(tmp_path / "masks/train/a.png", np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"in a config: data\.num_classes or data\.classes"):
        MaskFolder(tmp_path, "train")
