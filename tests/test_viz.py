"""Pictures: the drawn arrays equal the modules' attention weights; every PNG has its size and is not blank."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from helpers import check_png, randomize_
from PIL import Image
from torch import nn

from visattn import create_attention
from visattn.data import DigitScenes
from visattn.data.palettes import DIGIT_CLASSES, voc_palette
from visattn.viz import (
    COMPARE_PLOT_PX,
    MAP_COLUMNS,
    AttentionMap,
    attention_maps,
    explain,
    find_attention_modules,
    figure_size,
    plot_metrics,
    render_attention_map,
    save_attention_maps,
    save_per_class_iou_delta,
    save_prediction,
    to_feature,
    to_image,
)

C = 64  # PSA's paper conv groups (1, 4, 8, 16) need 16 | C // 4


def _feature(h: int = 5, w: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, C, h, w, generator=torch.Generator().manual_seed(seed))


def _module(name: str) -> nn.Module:
    return randomize_(create_attention(name, C), seed=1).eval()


def _image(size: int = 40) -> np.ndarray:
    return DigitScenes("val", length=1, size=size, digit_size=(10, 16)).scene(0)[0]


def _by_key(maps) -> dict:
    return {m.key: m for m in maps}


# ------------------------------------------------------------------ which modules are drawn
# (what each mechanism's maps hold is tested against its attention_weights in tests/attention/test_maps.py)


def test_attention_maps_calls_the_module():
    m, x, points = _module("fla"), _feature(), [(1, 2), (4, 6)]
    drawn, own = attention_maps(m, x, points), m.attention_maps(x, points)
    assert [a.key for a in drawn] == [a.key for a in own] == ["fla_q0", "fla_column_q0", "fla_row_q0",
                                                              "fla_q1", "fla_column_q1", "fla_row_q1"]
    for a, b in zip(drawn, own):
        np.testing.assert_array_equal(a.values, b.values)
    assert [a.point for a in attention_maps(m, x)] == [(2, 3)] * 3  # the centre cell by default


def test_unsupported_module_and_batch():
    with pytest.raises(ValueError, match="no pictures for Conv2d: it has no attention_maps method.* pam"):
        attention_maps(nn.Conv2d(C, C, 1), _feature())
    with pytest.raises(ValueError, match="PositionAttention: .*one feature map"):
        attention_maps(_module("pam"), torch.randn(2, C, 3, 3))


class _Drawn(nn.Module):
    """Any module with an attention_maps method is drawn, whatever its class."""

    def forward(self, x):
        return x

    def attention_maps(self, x, points=()):
        return [AttentionMap("mine", "mine", x[0, 0].numpy())]


def test_find_attention_modules_takes_the_outermost_with_maps():
    model = nn.Sequential(create_attention("dual", C), create_attention("rcca", C), nn.Conv2d(C, C, 1), _Drawn(),
                          nn.Sequential(create_attention("se", C)))
    found = find_attention_modules(model)
    assert list(found) == ["0", "1", "3", "4.0"]  # not 0.pam, 0.cam, 1.cca
    assert [a.key for a in attention_maps(found["3"], _feature())] == ["mine"]
    with pytest.raises(ValueError, match=r"Conv2d holds no attention module that can be drawn \(modules with an "
                                         r"attention_maps method.*cbam"):
        explain(nn.Conv2d(3, 3, 1), _image(16), ".")


def test_coordinates_round_trip():
    assert to_feature((0, 0), (64, 64), (8, 8)) == (0, 0)
    assert to_feature((63, 63), (64, 64), (8, 8)) == (7, 7)
    assert to_image((7, 0), (64, 64), (8, 8)) == (63, 0)
    for p in [(0, 5), (3, 7), (6, 2)]:
        assert to_feature(tuple(round(v) for v in to_image(p, (64, 80), (7, 8))), (64, 80), (7, 8)) == p


# ------------------------------------------------------------------ pictures


class _TinyAttentionNet(nn.Module):
    """stride-4 conv -> PAM -> CAM -> RCCA -> FLA -> BAM -> SGE -> PSA -> SE -> CBAM -> logits."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, stride=4, padding=1)
        self.blocks = nn.Sequential(*(create_attention(n, C) for n in ("pam", "cam", "rcca", "fla", "bam")),
                                    create_attention("sge", C, groups=4),
                                    *(create_attention(n, C) for n in ("psa", "se", "cbam")))
        self.cls = nn.Conv2d(C, 3, 1)

    def forward(self, x):
        return nn.functional.interpolate(self.cls(self.blocks(self.stem(x))), size=x.shape[-2:], mode="bilinear")


def test_explain_writes_every_picture(tmp_path):
    model = randomize_(_TinyAttentionNet(), seed=2).eval()
    image = _image(40)
    paths = explain(model, image, tmp_path, points=[(5, 30), (39, 0)], prefix="t_")
    names = {p.name for p in paths}
    for key in ("pam_q0", "pam_q1", "cam_matrix", "rcca_reach_q1", "rcca_pass1_q0", "fla_row_q1", "bam_gate",
                "sge_gate", "psa_branch", "se_channel", "cbam_spatial"):
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


def test_many_attention_maps_wrap_into_rows(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    spatial = AttentionMap("m_q0", "map", np.random.default_rng(1).random((4, 4)), point=(1, 2))
    panels = [(f"entry {i}", None if i % 3 == 0 else spatial) for i in range(MAP_COLUMNS + 3)]
    path = save_attention_maps(panels, image, (9, 17), tmp_path / "maps.png")
    check_png(path, figure_size(MAP_COLUMNS + 3, MAP_COLUMNS))
    assert figure_size(MAP_COLUMNS + 3, MAP_COLUMNS) == (MAP_COLUMNS * figure_size(1)[0], 2 * figure_size(1)[1])
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels[-figure_size(1)[1]:, -figure_size(1)[0]:].std() == 0  # the second row's unused places are blank


def test_per_class_differences_of_many_models_are_one_row_each(tmp_path):
    deltas = np.random.default_rng(0).normal(0, 10, (30, 3))
    deltas[4, 1] = np.nan  # a class a model never saw: a grey cell
    path = save_per_class_iou_delta(["bg", "a", "b"], [f"m{i}" for i in range(30)], deltas, "fcn", tmp_path / "d.png")
    check_png(path, (COMPARE_PLOT_PX, 22 * 30 + 140), min_std=10, min_colours=50)
    check_png(save_per_class_iou_delta(["bg"], [], [], "fcn", tmp_path / "e.png"), (COMPARE_PLOT_PX, COMPARE_PLOT_PX))


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


def test_curves_of_a_one_step_run_show_the_point(tmp_path, monkeypatch):
    from visattn import viz

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0, "loss_aux": 0.4, "lr": 0.1}) + "\n")
    figures = []
    save = viz._save
    monkeypatch.setattr(viz, "_save", lambda fig, path: figures.append(fig) or save(fig, path))
    picture = np.asarray(Image.open(plot_metrics(tmp_path, tmp_path / "curves.png")).convert("RGB")).astype(int)
    loss_panel, _, lr_panel = figures[0].axes
    assert len(loss_panel.lines) == 2 and all(line.get_marker() == "." for line in loss_panel.lines + lr_panel.lines)
    width = picture.shape[1]
    blue = (np.abs(picture[:, 2 * width // 3:] - (31, 119, 180)).sum(-1) < 60).sum()  # matplotlib's first colour
    assert blue > 5  # the learning-rate panel, which has no legend, shows its one point


def test_labels_of_nearby_points_are_moved_apart():
    from matplotlib.figure import Figure

    from visattn.viz import _LABEL_OFFSET, _label_offsets

    ax = Figure(figsize=(4, 4), dpi=100).subplots()
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 10)
    offsets = _label_offsets(ax, [5, 5.01, 9, 2], [5, 5.01, 1, 5], ["nlnet", "dnlnet", "fcn", "far"], fontsize=7)
    assert offsets[2] == offsets[3] == _LABEL_OFFSET  # nothing near: beside its point
    assert abs(offsets[0][1] - offsets[1][1]) >= 1.3 * 7  # a line apart


def test_a_picture_replaces_its_file_and_leaves_other_links_to_it(tmp_path):
    (tmp_path / "kept.png").write_bytes(b"an older picture")
    os.link(tmp_path / "kept.png", tmp_path / "d.png")  # e.g. a comparison folder copied with hard links
    path = save_per_class_iou_delta(["bg"], [], [], "fcn", tmp_path / "d.png")
    check_png(path, (COMPARE_PLOT_PX, COMPARE_PLOT_PX))
    assert (tmp_path / "kept.png").read_bytes() == b"an older picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.png", "kept.png"]  # no temporary file left
