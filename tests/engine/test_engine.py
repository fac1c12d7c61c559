"""Engine: config errors, LR schedule, losses, metrics vs a hand-computed confusion matrix,
inference modes, a short run, exact resume after Ctrl-C, and DDP (2 gloo processes) vs 1 process."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from visattn.cli import main
from visattn.data import DATASETS
from visattn.engine import LRSchedule, SegmentationMetrics, build_optimizer, segment, train
from visattn.engine.config import ConfigError, load_config, read_recipe
from visattn.engine.losses import cross_entropy, ohem_cross_entropy, weighted_loss
from visattn.engine.precision import amp_dtype
from visattn.engine.run_dir import RunDir

HERE = Path(__file__).parent
import tinyseg  # noqa: E402

TINY = ["model.name=tinyseg:build", "model.kwargs={}", "data.digits.train_length=24", "data.digits.val_length=8",
        "data.digits.size=32", "data.digits.digit_size=[8,16]", "data.crop_size=[32,32]", "train.batch_size=8",
        "train.iters=6", "train.log_every=1", "eval.batch_size=8"]


def test_unknown_config_keys_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"'train\.lrr'.*did you mean 'train\.lr'"):
        load_config(None, ["train.lrr=0.1"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  crop_sise: [8, 8]\n")
    with pytest.raises(ConfigError, match=r"'data\.crop_sise' in .*r\.yaml"):
        load_config(recipe)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.lr"])
    cfg = load_config(None, ["model.kwargs.aux=true", "train.lr=2e-2"])
    assert cfg.model.kwargs == {"encoder": "resnet18", "output_stride": 8, "aux": True} and cfg.train.lr == 0.02


def test_data_defaults_follow_the_dataset(tmp_path):
    # The demo's digits augmentation (64 px, no zoom, no flip) must not leak into real datasets.
    assert load_config().data.crop_size == [64, 64] and load_config().data.flip is False
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  dataset: cityscapes\n  root: data/cityscapes\n  flip: false\n")
    data = load_config(recipe).data
    assert (data.crop_size, data.scale_range, data.flip) == ([769, 769], [0.5, 2.0], False)
    data = load_config(recipe, ["data.dataset=ade20k", "data.crop_size=[480,480]"]).data
    assert (data.crop_size, data.scale_range, data.flip) == ([480, 480], [0.5, 2.0], False)
    data = load_config(None, ["data.dataset=imagefolder"]).data
    assert (data.crop_size, data.flip) == ([224, 224], True)
    saved = load_config(None, ["data.dataset=voc", "data.scale_range=[1,1]"])
    assert load_config(None, ["train.lr=0.5"], base=saved).data.scale_range == [1, 1]  # a resumed run keeps its own


def test_poly_warmup():
    f = LRSchedule(total=100, power=0.9, warmup_iters=10, warmup_factor=0.1)
    assert f(0) == pytest.approx(0.1)
    assert f(5) == pytest.approx((1 - 0.05) ** 0.9 * 0.55)
    assert f(50) == pytest.approx(0.5 ** 0.9)
    assert f(100) == 0
    steps = LRSchedule(total=100, milestones=[30, 60], gamma=0.1, min_factor=0.005)
    assert [steps(29), steps(30), steps(60), steps(99)] == pytest.approx([1, 0.1, 0.01, 0.01])
    assert LRSchedule(100, milestones=[10, 20, 30], min_factor=0.005)(50) == 0.005


def test_losses_ignore_and_ohem():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 5, 6), torch.randint(0, 4, (2, 5, 6))
    target[0, 0] = 255
    ref = F.cross_entropy(logits, target, ignore_index=255)
    assert torch.allclose(cross_entropy(logits, target), ref)
    assert torch.allclose(ohem_cross_entropy(logits, target, thresh=1.0, min_kept=0), ref)  # keeps every pixel
    pixel = F.cross_entropy(logits, target, ignore_index=255, reduction="none")[target != 255]
    hardest = pixel.sort(descending=True).values[:7].mean()
    assert torch.allclose(ohem_cross_entropy(logits, target, thresh=0.0, min_kept=7), hardest)
    total, terms = weighted_loss({"out": logits, "aux": logits[:, :, ::2, ::2]}, target, {"out": 1.0, "aux": 0.4})
    aux = F.cross_entropy(F.interpolate(logits[:, :, ::2, ::2], size=(5, 6), mode="bilinear"), target, ignore_index=255)
    assert torch.allclose(total, ref + 0.4 * aux) and set(terms) == {"out", "aux"}
    with pytest.raises(ValueError, match="no loss weight"):
        weighted_loss({"out": logits, "pam": logits}, target, {"out": 1.0})


def test_metrics_match_hand_computed_confusion_matrix():
    torch.manual_seed(0)
    k = 5
    pred = torch.randint(0, k - 1, (3, 17, 19))  # class 4 never predicted
    target = torch.randint(0, k, (3, 17, 19))
    target[target == 3] = 2  # class 3 absent from the ground truth, but predicted
    target[:, :4] = 255
    m = SegmentationMetrics(k)
    m.update(pred[:2], target[:2])
    m.update(F.one_hot(pred[2:], k).permute(0, 3, 1, 2).float(), target[2:])  # scores work too
    result = m.compute()
    cm = torch.zeros(k, k, dtype=torch.long)
    valid = target != 255
    for t, p in zip(target[valid].tolist(), pred[valid].tolist()):
        cm[t, p] += 1
    tp = cm.diag().double()
    union = cm.sum(0) + cm.sum(1) - cm.diag()
    iou = tp / union
    assert result["per_class_iou"] == pytest.approx(iou.tolist())
    assert result["mIoU"] == pytest.approx(iou.mean().item())
    assert result["pixel_acc"] == pytest.approx((tp.sum() / cm.sum()).item())
    assert iou[3] == 0 and iou[4] == 0  # present in only one of prediction / ground truth


class _Pointwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x)


def test_slide_flip_and_scales_agree_with_whole_for_a_pointwise_model():
    torch.manual_seed(0)
    model, x = _Pointwise().eval(), torch.randn(2, 3, 13, 21)
    whole = segment(model, x, 4)
    assert torch.allclose(whole, model(x).softmax(1))
    assert torch.allclose(segment(model, x, 4, mode="slide", crop=(8, 8), stride=(5, 6)), whole, atol=1e-6)
    assert torch.allclose(segment(model, x, 4, mode="slide", crop=(32, 32)), whole, atol=1e-6)  # padded window
    assert torch.allclose(segment(model, x, 4, flip=True), whole, atol=1e-6)
    two = segment(model, x, 4, scales=(1.0, 2.0))
    up = F.interpolate(model(F.interpolate(x, scale_factor=2.0, mode="bilinear")), size=(13, 21), mode="bilinear")
    assert torch.allclose(two, (whole + up.softmax(1)) / 2, atol=1e-6)


def test_short_run_writes_run_directory(tmp_path):
    cfg = load_config(None, TINY + [f"run.dir={tmp_path / 'run'}", "train.ckpt_every=2", "train.keep_ckpts=2",
                                    "train.eval_every=3"])
    result = train(cfg, quiet=True, trust_code=True)
    run = tmp_path / "run"
    assert result["step"] == 6 and not result["interrupted"] and 0 <= result["metrics"]["mIoU"] <= 1
    assert load_config(run / "config.yaml").run.dir == str(run)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in lines if "mIoU" in r] == [3, 6]
    assert {"loss_out", "loss_aux", "lr"} <= set(lines[0])
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "checkpoints/latest").read_text() == "step_0000006"
    assert sorted(p.name for p in (run / "checkpoints").glob("*.safetensors")) == ["step_0000004.safetensors",
                                                                                  "step_0000006.safetensors"]
    state = torch.load(run / "checkpoints/step_0000006.state.pt", weights_only=True)
    assert state["step"] == 6 and "optimizer" in state and "scheduler" in state and state["rng"]["torch"]
    best = json.loads((run / "best.json").read_text())
    assert best["mIoU"] == max(r["mIoU"] for r in lines if "mIoU" in r)
    assert set(load_file(run / "model.safetensors")) == set(load_file(run / "best.safetensors"))
    with pytest.raises(FileExistsError, match="--resume"):  # never overwrite a run
        train(cfg, quiet=True, trust_code=True)


def test_resume_after_ctrl_c_is_bit_identical(tmp_path):
    # dropout exercises the RNG; accumulation + interrupt in the middle of a step and of an epoch
    common = TINY + ["model.kwargs.dropout=0.3", "train.accum_steps=2", "train.ckpt_every=100", "data.flip=true",
                     "train.warmup_iters=2"]
    train(load_config(None, common + [f"run.dir={tmp_path / 'a'}"]), quiet=True, trust_code=True)
    cfg = load_config(None, common + [f"run.dir={tmp_path / 'b'}", "model.kwargs.interrupt_after=5"])
    stopped = train(cfg, quiet=True, trust_code=True)
    assert stopped["interrupted"] and stopped["step"] == 2
    assert (tmp_path / "b/checkpoints/latest").read_text() == "step_0000002"
    cfg = load_config(tmp_path / "b/config.yaml", ["model.kwargs.interrupt_after=null"])
    resumed = train(cfg, resume=tmp_path / "b", quiet=True, trust_code=True)
    assert resumed["step"] == 6 and not resumed["interrupted"]
    a, b = load_file(tmp_path / "a/model.safetensors"), load_file(tmp_path / "b/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [[json.loads(x).get("loss") for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
              for r in ("a", "b")]
    assert losses[0] == losses[1]


def test_train_resume_reads_the_run_once(tmp_path, monkeypatch):
    """``visattn train --resume`` builds the run directory once and reads its config.yaml once, for
    the config it trains with and for the check of what a resumed run must keep."""
    cfg = load_config(None, TINY + [f"run.dir={tmp_path / 'run'}", "model.kwargs.interrupt_after=2"])
    assert train(cfg, quiet=True, trust_code=True)["interrupted"]
    built, reads, init, load = [], [], RunDir.__init__, RunDir.load_config

    def init_recorded(self, path, *args, **kwargs):
        built.append(Path(path))
        init(self, path, *args, **kwargs)

    def load_recorded(self, *args, **kwargs):
        reads.append(self.path)
        return load(self, *args, **kwargs)

    monkeypatch.setattr(RunDir, "__init__", init_recorded)
    monkeypatch.setattr(RunDir, "load_config", load_recorded)
    assert main(["train", "--resume", str(tmp_path / "run"), "--trust-code", "--quiet",
                 "--set", "model.kwargs.interrupt_after=null"]) == 0
    assert built == [tmp_path / "run"] and reads == [tmp_path / "run"]
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 6


def test_classification_run_and_bf16(tmp_path):
    cfg = load_config(None, ["task=classification", "model.name=tinyseg:build_cls", "model.kwargs={}",
                             "data.dataset=digits_cls", "data.digits.size=16", "data.digits.digit_size=[8,12]",
                             "data.crop_size=16", "train.batch_size=32", "train.iters=2", "train.amp=bf16",
                             "eval.batch_size=128", f"run.dir={tmp_path / 'cls'}"])
    result = train(cfg, quiet=True, trust_code=True)
    assert set(result["metrics"]) == {"top1", "top5"} and result["metrics"]["top5"] >= result["metrics"]["top1"]


def test_ddp_two_processes_match_one_process(tmp_path):
    """2 gloo processes x 4 images == 1 process x 8 images. Every image has the same number of
    labelled pixels (no scale/crop padding), so the mean of per-process losses is the global mean;
    the gradient all-reduce sums in another order, hence a float tolerance instead of equality."""
    # SGD: AdamW's normalised steps would magnify the all-reduce's rounding differences
    common = TINY + ["data.scale_range=[1,1]", "data.flip=true", "train.ckpt_every=100", "train.optimizer=sgd",
                     "train.lr=0.05", "train.weight_decay=1e-4"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    sets = [a for s in common for a in ("--set", s)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "visattn",
           "train", "--quiet", "--trust-code", *sets, "--set", f"run.dir={tmp_path / 'ddp'}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = train(load_config(None, common + [f"run.dir={tmp_path / 'one'}"]), quiet=True, trust_code=True)
    assert single["step"] == 6
    a, b = load_file(tmp_path / "ddp/model.safetensors"), load_file(tmp_path / "one/model.safetensors")
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k
    torch.manual_seed(0)
    init = tinyseg.build(11).state_dict()
    assert all((a[k] - init[k]).abs().max() > 1e-4 for k in a)  # training moved every tensor


@pytest.mark.parametrize("recipe", sorted((HERE.parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_recipes_load_and_name_registered_models(recipe):
    from visattn.models import is_model

    cfg = load_config(recipe)
    assert is_model(cfg.model.name)
    assert (cfg.task == "classification") == (DATASETS[cfg.data.dataset].task == "classification")
    if recipe.stem == "digits_danet":  # the no-argument run, written out
        assert cfg == load_config()
    else:  # the papers' recipes train with SGD, whatever the defaults say
        assert read_recipe(recipe)["train"]["optimizer"] == "sgd"


def test_optimizer_choice():
    model = nn.Linear(3, 2)
    t = load_config().train
    adamw = build_optimizer(model, t)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["lr"] == t.lr == 2e-3
    assert adamw.defaults["betas"] == (0.9, 0.999) and adamw.defaults["weight_decay"] == 0.01
    sgd = build_optimizer(model, dataclasses.replace(t, optimizer="sgd", lr=0.01, weight_decay=1e-4))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9 and sgd.defaults["lr"] == 0.01
    with pytest.raises(ValueError, match="train.optimizer must be 'sgd' or 'adamw', got 'adam'"):
        build_optimizer(model, dataclasses.replace(t, optimizer="adam"))


def test_amp_dtype_names_the_option_it_refuses():
    cpu = torch.device("cpu")
    assert amp_dtype(None, cpu) is None and amp_dtype("bf16", cpu) is torch.bfloat16
    assert amp_dtype("fp16", torch.device("cuda")) is torch.float16  # a device object needs no CUDA here
    with pytest.raises(ValueError, match=r"^train\.amp fp16 needs a CUDA device, the device is cpu; use train\.amp bf16"):
        amp_dtype("fp16", cpu)
    with pytest.raises(ValueError, match=r"^--amp must be null, bf16 or fp16, got 'fp8'"):
        amp_dtype("fp8", cpu, option="--amp")


def test_validation_images_of_mixed_sizes_are_evaluated_in_batches(tmp_path):
    """A folder dataset whose validation images differ in size: the trainer's evaluation batches them
    by size (as `visattn eval` does) and counts every pixel."""
    from PIL import Image

    root, rng = tmp_path / "data", torch.Generator().manual_seed(0)
    sizes = {"train": [(32, 32)] * 4, "val": [(32, 32), (24, 40), (24, 40), (32, 32)]}
    for split, shapes in sizes.items():
        for i, (h, w) in enumerate(shapes):
            for folder, array in (("images", torch.randint(0, 256, (h, w, 3), generator=rng)),
                                  ("masks", torch.randint(0, 3, (h, w), generator=rng))):
                (root / folder / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array.numpy().astype("uint8")).save(root / folder / split / f"{i}.png")
    cfg = load_config(None, ["model.name=tinyseg:build", "model.kwargs={}", "data.dataset=folder", f"data.root={root}",
                             "data.num_classes=3", "data.workers=0", "data.crop_size=[24, 24]", "train.iters=2",
                             "train.batch_size=2", "eval.batch_size=4", f"run.dir={tmp_path / 'run'}"])
    result = train(cfg, quiet=True, trust_code=True)
    assert sum(map(sum, result["metrics"]["confusion_matrix"])) == 2 * 32 * 32 + 2 * 24 * 40
