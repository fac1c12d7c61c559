"""scripts/make_figures.py: a tiny training run -> every picture of docs/pictures.md, at its pixel size, not blank."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from helpers import check_png

from visattn.viz import figure_size

ROOT = Path(__file__).resolve().parents[1]
# the default model (DANet, ResNet-18) for 2 steps, on 32x32 scenes to keep the test fast
TINY = ["train.iters=2", "train.batch_size=4", "data.digits.train_length=8", "data.digits.val_length=4",
        "data.digits.size=32", "data.digits.digit_size=[8,16]", "data.crop_size=[32,32]", "eval.batch_size=4"]
PANELS = {  # the stable names docs/pictures.md embeds -> panels
    "predict_val0": 5, "predict_val1": 5, "predict_val2": 5,
    "danet_pam_q0": 2, "danet_pam_q1": 2, "danet_cam_matrix": 2, "danet_cam_q0": 2,
    "ccnet_cca_pass1": 2, "ccnet_rcca_reach": 2,
    "flanet_fla": 2, "flanet_fla_column": 2, "flanet_fla_row": 2, "attnet_bam_gate": 2, "attnet_sge_gate": 2, "attnet_psa_branch": 2,
    "train_curves": 3,
}


def _script():
    spec = importlib.util.spec_from_file_location("make_figures", ROOT / "scripts" / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_figures_trains_and_writes_every_picture(tmp_path, capsys):
    script = _script()
    assert script.FIGURES == PANELS
    run, out = tmp_path / "run", tmp_path / "img"
    out.mkdir()
    for name in PANELS:  # an earlier generation: overwritten
        (out / f"{name}.png").write_bytes(b"stale")
    sets = [a for s in TINY + [f"run.dir={run}"] for a in ("--set", s)]
    assert script.main(["--quiet", *sets, "--output", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert (run / "model.safetensors").is_file() and "run directory" in printed[0]
    assert printed[1:] == [str(out / f"{name}.png") for name in PANELS]  # every path written, in order
    assert sorted(p.stem for p in out.iterdir()) == sorted(PANELS)  # nothing else (no scratch folder left)
    for name, panels in PANELS.items():
        check_png(out / f"{name}.png", figure_size(panels), min_std=10, min_colours=50)

    with pytest.raises(SystemExit):  # --set configures the training, not an existing run
        script.main(["--run", str(run), "--set", "train.iters=1"])
    assert capsys.readouterr().err
    assert script.main(["--run", str(tmp_path / "missing"), "--output", str(out)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_query_points_lie_on_their_digits():
    from visattn.data import DigitScenes

    script, scenes = _script(), DigitScenes("val", length=8)
    for i in range(len(scenes)):
        _, mask, placed = scenes.scene(i)
        for d in placed:
            y, x = script.point_on_digit(mask, d)
            assert d[1] <= y < d[1] + d[3] and d[2] <= x < d[2] + d[3]
            assert mask[y, x] == d[0] + 1 or not (mask[d[1]:d[1] + d[3], d[2]:d[2] + d[3]] == d[0] + 1).any()


def test_gallery_embeds_exactly_the_written_pictures():
    text = (ROOT / "docs" / "pictures.md").read_text()
    assert sorted(set(re.findall(r"\(img/([\w-]+)\.png\)", text))) == sorted(PANELS)
    assert "python scripts/make_figures.py" in text
