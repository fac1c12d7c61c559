"""Pictures: the drawn arrays equal the modules' attention weights; every PNG has its size and is not blank."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import check_png, randomize_
from PIL import Image
from torch import nn

from visattn import create_attention
from visattn.cli import main
from visattn.data import DigitScenes
from visattn.data.palettes import DIGIT_CLASSES, voc_palette
from visattn.viz import (
    attention_maps,
    explain,
    figure_size,
    plot_metrics,
    render_attention_map,
    save_prediction,
    to_feature,
    to_image,
)

C = 64  # PSA's paper conv groups (1, 4, 8, 16) need 16 | C // 4


def _feature(h: int = 5, w: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, C, h, w, generator=torch.Generator().manual_seed(seed))


def _module(name: str, **kwargs) -> nn.Module:
    return randomize_(create_attention(name, C, **kwargs), seed=1).eval()


def _image(size: int = 40) -> np.ndarray:
    return DigitScenes("val", length=1, size=size, digit_size=(10, 16)).scene(0)[0]


def _by_key(maps) -> dict:
    return {m.key: m for m in maps}


# ------------------------------------------------------------------ drawn arrays == attention_weights


def test_pam_map_is_the_query_row():
    m, x, points = _module("pam"), _feature(), [(0, 0), (2, 5), (4, 6)]
    maps = _by_key(attention_maps(m, x, points))
    full = m.attention_weights(x)["position"][0]  # (N, H, W), all queries
    for i, (h, w) in enumerate(points):
        drawn = maps[f"pam_q{i}"].values
        assert maps[f"pam_q{i}"].point == (h, w)
        np.testing.assert_allclose(drawn, full[h * x.shape[3] + w].numpy(), rtol=1e-5, atol=1e-7)
        assert drawn.sum() == pytest.approx(1, abs=1e-5)


def test_cca_map_is_the_query_cross():
    m, x, (h, w) = _module("cca"), _feature(), (3, 2)
    drawn = _by_key(attention_maps(m, x, [(h, w)]))["cca_q0"].values
    weights = m.attention_weights(x)
    expected = np.zeros(x.shape[2:])
    for k in range(x.shape[2]):
        expected[k, w] += weights["column"][0, h, w, k].item()
    for k in range(x.shape[3]):
        expected[h, k] += weights["row"][0, h, w, k].item()
    np.testing.assert_allclose(drawn, expected, rtol=1e-5, atol=1e-7)
    assert drawn.sum() == pytest.approx(1, abs=1e-5)
    off_cross = np.ones(x.shape[2:], bool)
    off_cross[h, :] = off_cross[:, w] = False
    assert (drawn[off_cross] == 0).all()


def test_rcca_maps_are_pass_one_cross_and_reach():
    m, x, (h, w) = _module("rcca"), _feature(), (1, 4)
    maps = _by_key(attention_maps(m, x, [(h, w)]))
    weights = m.attention_weights(x)
    np.testing.assert_allclose(maps["rcca_reach_q0"].values, weights["reach"][0, h, w].numpy(), rtol=1e-6)
    assert (maps["rcca_reach_q0"].values > 0).all()  # two passes reach every position
    single = _by_key(attention_maps(m.cca, x, [(h, w)]))["cca_q0"].values
    np.testing.assert_allclose(maps["rcca_pass1_q0"].values, single, rtol=1e-6)


def test_fla_matrices_are_the_query_row_and_column():
    m, x, (h, w) = _module("fla"), _feature(), (2, 6)
    maps = _by_key(attention_maps(m, x, [(h, w)]))
    weights = m.attention_weights(x)
    np.testing.assert_allclose(maps["fla_column_q0"].values, weights["column"][0, w].numpy(), rtol=1e-6)
    np.testing.assert_allclose(maps["fla_row_q0"].values, weights["row"][0, h].numpy(), rtol=1e-6)
    peak = 0.5 * (weights["row"][0].amax(-1).mean(-1)[:, None] + weights["column"][0].amax(-1).mean(-1)[None, :])
    np.testing.assert_allclose(maps["fla_q0"].values, peak.numpy(), rtol=1e-6)


def test_cam_matrix_and_gathered_channel():
    m, x, (h, w) = _module("cam"), _feature(), (4, 1)
    maps = _by_key(attention_maps(m, x, [(h, w)]))
    att = m.attention_weights(x)["channel"][0]
    np.testing.assert_allclose(maps["cam_matrix"].values, att.numpy(), rtol=1e-6)
    q = int(x[0, :, h, w].argmax())
    expected = sum(att[q, k].item() * x[0, k].numpy() for k in range(C))
    np.testing.assert_allclose(maps["cam_q0"].values, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,key,reduce", [
    ("bam", "bam_gate", lambda w: w["gate"][0].mean(0)),
    ("bam", "bam_spatial", lambda w: w["spatial"][0, 0]),
    ("sge", "sge_gate", lambda w: w["gate"][0].mean(0)),
    ("sge", "sge_group0", lambda w: w["gate"][0, 0]),
    ("psa", "psa_branch", lambda w: w["branch"][0, :, :, 0, 0]),
])
def test_gates(name, key, reduce):
    m, x = _module(name, **({"groups": 4} if name == "sge" else {})), _feature(8, 8)
    drawn = _by_key(attention_maps(m, x))[key].values
    np.testing.assert_allclose(drawn, reduce(m.attention_weights(x)).numpy(), rtol=1e-6)


def test_unsupported_module_and_batch():
    with pytest.raises(ValueError, match="SqueezeExcite"):
        attention_maps(create_attention("se", C), _feature())
    with pytest.raises(ValueError, match="one feature map"):
        attention_maps(_module("pam"), torch.randn(2, C, 3, 3))


def test_coordinates_round_trip():
    assert to_feature((0, 0), (64, 64), (8, 8)) == (0, 0)
    assert to_feature((63, 63), (64, 64), (8, 8)) == (7, 7)
    assert to_image((7, 0), (64, 64), (8, 8)) == (63, 0)
    for p in [(0, 5), (3, 7), (6, 2)]:
        assert to_feature(tuple(round(v) for v in to_image(p, (64, 80), (7, 8))), (64, 80), (7, 8)) == p


# ------------------------------------------------------------------ pictures


class _TinyAttentionNet(nn.Module):
    """stride-4 conv -> PAM -> CAM -> RCCA -> FLA -> BAM -> SGE -> PSA -> logits: every drawable module."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, stride=4, padding=1)
        self.blocks = nn.Sequential(*(create_attention(n, C) for n in ("pam", "cam", "rcca", "fla", "bam")),
                                    create_attention("sge", C, groups=4), create_attention("psa", C))
        self.cls = nn.Conv2d(C, 3, 1)

    def forward(self, x):
        return nn.functional.interpolate(self.cls(self.blocks(self.stem(x))), size=x.shape[-2:], mode="bilinear")


def test_explain_writes_every_picture(tmp_path):
    model = randomize_(_TinyAttentionNet(), seed=2).eval()
    image = _image(40)
    paths = explain(model, image, tmp_path, points=[(5, 30), (39, 0)], prefix="t_")
    names = {p.name for p in paths}
    for key in ("pam_q0", "pam_q1", "cam_matrix", "rcca_reach_q1", "rcca_pass1_q0", "fla_row_q1", "bam_gate",
                "sge_gate", "psa_branch"):
        assert any(n.endswith(f"_{key}.png") for n in names), key
    assert "t_blocks_0_pam_q0.png" in names
    for p in paths:
        check_png(p, figure_size(2))
    with pytest.raises(ValueError, match="outside"):
        explain(model, image, tmp_path, points=[(40, 0)])
    only = explain(model, image, tmp_path / "only", only=["blocks.0", "*.3"])
    drawn = {p.name.split("_")[1] for p in only}
    assert drawn == {"0", "3"} and {p.name for p in only} < {p.name.removeprefix("t_") for p in paths}
    with pytest.raises(ValueError, match=r"no attention module named 'head\.sa'.*has: blocks\.0"):
        explain(model, image, tmp_path, only=["head.sa"])


def test_heat_map_on_a_flat_image_is_not_blank(tmp_path):
    """On a grey image all the colour comes from the drawn heat map and its colour bar."""
    m, x, (h, w) = _module("cca"), _feature(5, 5), (2, 2)
    amap = _by_key(attention_maps(m, x, [(h, w)]))["cca_q0"]
    grey = np.full((41, 41, 3), 128, np.uint8)
    path = render_attention_map(amap, grey, tmp_path / "cca.png")
    check_png(path, figure_size(2))


def test_save_prediction(tmp_path):
    image = _image(48)
    scene = DigitScenes("val", length=1, size=48, digit_size=(10, 16))
    target = scene.scene(0)[1]
    pred = np.where(target > 0, (target % 10) + 1, 0).astype(np.uint8)
    palette = voc_palette(len(DIGIT_CLASSES))
    check_png(save_prediction(image, pred, DIGIT_CLASSES, palette, tmp_path / "p.png"), figure_size(4))
    check_png(save_prediction(image, pred, DIGIT_CLASSES, palette, tmp_path / "q.png", target=target), figure_size(5))


def _metrics(run_dir):
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for step in range(10, 110, 10):
        lines.append({"step": step, "epoch": step / 50, "lr": 0.01 * (1 - step / 110) ** 0.9,
                      "loss": 2 / step ** 0.5, "loss_out": 1 / step ** 0.5, "loss_aux": 1 / step ** 0.5})
        if step % 50 == 0:
            lines.append({"step": step, "mIoU": step / 200, "pixel_acc": 0.9})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run_dir


def test_plot_metrics(tmp_path):
    check_png(plot_metrics(_metrics(tmp_path / "run"), tmp_path / "c.png"), figure_size(3))
    with pytest.raises(FileNotFoundError):
        plot_metrics(tmp_path / "missing", tmp_path / "d.png")


def test_cli_plot_and_explain(tmp_path, capsys):
    run = _metrics(tmp_path / "run")
    assert main(["plot", str(run)]) == 0
    check_png(run / "curves.png", figure_size(3))
    assert main(["plot", str(tmp_path / "nope")]) == 2

    Image.fromarray(_image(32)).save(tmp_path / "img.png")
    out = tmp_path / "explain"
    argv = ["explain", str(tmp_path / "img.png"), "--model", "ccnet", "--encoder", "resnet10t", "--num-classes", "3",
            "--points", "3,4", "30,30", "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == ["img_head_rcca_rcca_pass1_q0.png", "img_head_rcca_rcca_pass1_q1.png",
                       "img_head_rcca_rcca_reach_q0.png", "img_head_rcca_rcca_reach_q1.png"]
    for name in written:
        check_png(out / name, figure_size(2))
    assert main(argv[:2] + ["--points", "99,0", "--encoder", "resnet10t", "--out", str(out)]) == 2
    assert "outside" in capsys.readouterr().err
    assert main(argv + ["--modules", "head.sa"]) == 2
    assert "no attention module named 'head.sa' (this model has: head.rcca)" in capsys.readouterr().err


def test_cli_explain_refuses_model_options_with_a_run_directory(tmp_path, capsys):
    run = _metrics(tmp_path / "run")  # a directory: its model would come from its config.yaml
    Image.fromarray(_image(32)).save(tmp_path / "img.png")
    assert main(["explain", str(tmp_path / "img.png"), "--checkpoint", str(run), "--model", "ccnet",
                 "--num-classes", "3"]) == 2
    assert "--model --num-classes: the model of a run directory comes from its config.yaml" in capsys.readouterr().err
