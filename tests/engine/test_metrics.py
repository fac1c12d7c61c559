"""Segmentation metrics against hand-computed confusion matrices, and what ``visattn eval`` writes:
every metric in its JSON, the confusion matrix checked against pixel counts of the dataset's masks,
and the confusion-matrix picture."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import check_png

from visattn.cli import main
from visattn.engine.metrics import SegmentationMetrics, format_confusion_matrix, format_table, metrics_from_confusion
from visattn.viz import CONFUSION_PX, save_confusion_matrix


def _nan(v):
    return v is None or math.isnan(v)


def test_metrics_of_a_hand_computed_confusion_matrix():
    # rows: ground truth, columns: prediction
    cm = torch.tensor([[5, 1, 0, 0],   # class 0: TP 5, FN 1, FP 2
                       [2, 3, 0, 0],   # class 1: TP 3, FN 2, FP 1
                       [0, 0, 0, 0],   # classes 2 and 3: absent from both -> NaN everywhere
                       [0, 0, 0, 0]])
    r = metrics_from_confusion(cm)
    assert r["per_class_iou"][:2] == pytest.approx([5 / 8, 3 / 6])
    assert r["per_class_acc"][:2] == pytest.approx([5 / 6, 3 / 5])
    assert r["per_class_dice"][:2] == pytest.approx([10 / 13, 6 / 9])
    assert all(_nan(r[k][2]) and _nan(r[k][3]) for k in ("per_class_iou", "per_class_acc", "per_class_dice"))
    assert r["mIoU"] == pytest.approx((5 / 8 + 3 / 6) / 2)
    assert r["mAcc"] == pytest.approx((5 / 6 + 3 / 5) / 2)
    assert r["mDice"] == pytest.approx((10 / 13 + 6 / 9) / 2)
    assert r["pixel_acc"] == pytest.approx(8 / 11)
    assert r["confusion_matrix"] == cm.tolist()

    # class 2 predicted once for a class-0 pixel, never in the ground truth: IoU and Dice 0 (counted
    # in the means), accuracy undefined (no ground-truth pixel)
    cm[0, 2] = 1
    r = metrics_from_confusion(cm)
    assert r["per_class_iou"][:3] == pytest.approx([5 / 9, 3 / 6, 0.0])
    assert r["per_class_dice"][:3] == pytest.approx([10 / 14, 6 / 9, 0.0])
    assert r["per_class_acc"][0] == pytest.approx(5 / 7) and _nan(r["per_class_acc"][2])
    assert r["mIoU"] == pytest.approx((5 / 9 + 3 / 6) / 3)
    assert r["mAcc"] == pytest.approx((5 / 7 + 3 / 5) / 2)
    assert r["pixel_acc"] == pytest.approx(8 / 12)


def test_segmentation_metrics_count_pixels_like_a_loop(device):
    torch.manual_seed(0)
    k = 6
    pred = torch.randint(0, k - 1, (3, 13, 11))  # class 5 never predicted
    target = torch.randint(0, k - 1, (3, 13, 11))
    target[target == 3] = 2  # class 3 predicted but absent from the ground truth
    target[:, :3] = 255
    m = SegmentationMetrics(k, device)
    m.update(pred[:2].to(device), target[:2].to(device))
    m.update(F.one_hot(pred[2:], k).permute(0, 3, 1, 2).float().to(device), target[2:].to(device))
    result = m.compute()
    cm = [[0] * k for _ in range(k)]
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
        if t != 255:
            cm[t][p] += 1
    assert result["confusion_matrix"] == cm
    tp = [cm[c][c] for c in range(k)]
    gt = [sum(cm[c]) for c in range(k)]
    predicted = [sum(row[c] for row in cm) for c in range(k)]
    for c in range(k):
        if gt[c] + predicted[c] == 0:
            assert _nan(result["per_class_iou"][c]) and _nan(result["per_class_dice"][c])
        else:
            assert result["per_class_iou"][c] == pytest.approx(tp[c] / (gt[c] + predicted[c] - tp[c]))
            assert result["per_class_dice"][c] == pytest.approx(2 * tp[c] / (gt[c] + predicted[c]))
        assert _nan(result["per_class_acc"][c]) if gt[c] == 0 else result["per_class_acc"][c] == pytest.approx(tp[c] / gt[c])
    assert _nan(result["per_class_iou"][5]) and result["per_class_iou"][3] == 0 and _nan(result["per_class_acc"][3])
    assert result["pixel_acc"] == pytest.approx(sum(tp) / sum(gt))


def test_tables_name_every_metric():
    r = metrics_from_confusion(torch.tensor([[3, 1, 0], [0, 2, 0], [0, 0, 0]]))
    table = format_table(r, ["sky", "road", "car"])
    lines = table.splitlines()
    assert lines[0].split() == ["class", "IoU", "Acc", "Dice"]
    assert lines[1].split() == ["sky", "75.00", "75.00", "85.71"]
    assert lines[3].split() == ["car", "n/a", "n/a", "n/a"]
    assert [line.split()[0] for line in lines[4:]] == ["mIoU", "mAcc", "mDice", "pixel"]
    assert lines[5].split()[1] == f"{100 * (3 / 4 + 1) / 2:.2f}"
    matrix = format_confusion_matrix(r["confusion_matrix"], ["sky", "road", "car"]).splitlines()
    assert matrix[1].split() == ["0", "sky", "3", "1", "0"] and matrix[2].split() == ["1", "road", "0", "2", "0"]


@pytest.mark.parametrize("k", [19, 150])
def test_confusion_matrix_picture(tmp_path, k):
    rng = torch.Generator().manual_seed(0)
    matrix = torch.randint(0, 50, (k, k), generator=rng) + torch.diag(torch.full((k,), 500))
    matrix[1] = 0  # a class without ground-truth pixels
    path = save_confusion_matrix(matrix.numpy(), [f"class{i}" for i in range(k)], tmp_path / "c.png")
    check_png(path, (CONFUSION_PX, CONFUSION_PX), min_std=10)


TINY = ["model.name=tinyseg:build", "model.kwargs={}", "data.digits.train_length=8", "data.digits.val_length=4",
        "data.digits.size=32", "data.digits.digit_size=[8,16]", "data.crop_size=[32,32]", "train.batch_size=8",
        "train.iters=2", "eval.batch_size=4"]


# cross-entropy alone, and cross-entropy + Dice with median-frequency class weights
LOSSES = {"ce": [], "ce+dice": ["train.class_weights=median_frequency", "train.loss={ce: 1, dice: 1}"]}


@pytest.mark.parametrize("loss", LOSSES)
def test_eval_writes_every_metric_and_the_confusion_matrix(tmp_path, capsys, loss):
    from visattn.data import build_dataset
    from visattn.trained import load_trained

    run = tmp_path / "run"
    sets = [a for s in TINY + LOSSES[loss] for a in ("--set", s)]
    assert main(["train", "--quiet", "--trust-code", *sets, "--output", str(run)]) == 0
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in log if "loss" not in r]
    assert val and all({"mIoU", "mAcc", "mDice"} <= set(r) and "confusion_matrix" not in r for r in val)
    trained = [r for r in log if "loss" in r]
    assert trained and all(math.isfinite(r["loss"]) for r in trained)
    if loss == "ce+dice":
        assert all(r["loss_out"] == pytest.approx(r["loss_out_ce"] + r["loss_out_dice"], rel=1e-5) for r in trained)
        assert json.loads((run / "class_weights.json").read_text())["method"] == "median_frequency"
    else:
        assert not (run / "class_weights.json").exists()
    capsys.readouterr()

    assert main(["eval", "--run", str(run), "--trust-code"]) == 0
    out = capsys.readouterr().out
    assert all(word in out for word in ("mIoU", "mAcc", "mDice", "gt \\ pred"))
    result = json.loads((run / "eval_val.json").read_text())
    classes = result["classes"]
    k = len(classes)
    assert k == 11 and set(result["per_class_acc"]) == set(result["per_class_dice"]) == set(classes)
    assert all(0 <= result[key] <= 1 for key in ("mIoU", "mAcc", "mDice", "pixel_acc"))
    cm = result["confusion_matrix"]
    assert len(cm) == k and all(len(row) == k for row in cm)

    cfg, _ = load_trained(str(run), None, None, [], "cpu", True)
    counts = [0] * k
    for _, mask in build_dataset(cfg.data, "val", train=False):
        for c in range(k):
            counts[c] += int((mask == c).sum())
    assert [sum(row) for row in cm] == counts and sum(counts) > 0
    tp = sum(cm[c][c] for c in range(k))
    assert result["pixel_acc"] == pytest.approx(tp / sum(counts))
    assert result["mAcc"] == pytest.approx(sum(cm[c][c] / counts[c] for c in range(k) if counts[c])
                                           / sum(1 for c in counts if c))
    check_png(run / "confusion_val.png", (CONFUSION_PX, CONFUSION_PX), min_std=5)
