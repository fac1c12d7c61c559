"""``visattn plot --run RUN_DIR``: the curves PNG next to the run's metrics (or at --output)."""
import json

from helpers import check_png

from visattn.cli import main
from visattn.engine.run_dir import RunDir
from visattn.viz import figure_size


def _run_with_metrics(path):
    run = RunDir(path)
    run.path.mkdir(parents=True)
    lines = [{"step": s, "lr": 0.01 * (1 - s / 60), "loss": 2 / s, "loss_out": 1 / s} for s in range(10, 60, 10)]
    lines.append({"step": 50, "mIoU": 0.25, "pixel_acc": 0.9})
    run.metrics.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run


def test_plot_run(tmp_path, capsys):
    run = _run_with_metrics(tmp_path / "run")
    assert main(["plot", "--run", str(run)]) == 0
    check_png(run.path / "curves.png", figure_size(3))
    assert main(["plot", str(run), "--output", str(tmp_path / "c.png")]) == 0  # the run also positionally
    check_png(tmp_path / "c.png", figure_size(3))
    capsys.readouterr()
    assert main(["plot", "--run", str(tmp_path / "nope")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    assert main(["plot"]) == 2 and main(["plot", str(run), "--run", str(run)]) == 2
    assert "--run RUN_DIR" in capsys.readouterr().err
