#!/usr/bin/env python
"""Regenerate the pictures of docs/pictures.md (into docs/img by default).

    python scripts/make_figures.py                         # train the default model first (= `visattn train`)
    python scripts/make_figures.py --run runs/danet-digits-...   # use an existing run directory
    python scripts/make_figures.py --set train.iters=5     # a quick check: override the training config
    python scripts/make_figures.py --ccnet-run RUN_DIR     # criss-cross pictures from a trained CCNet
    python scripts/make_figures.py --datasets              # only the dataset samples of docs/datasets.md

Pictures of the trained run (DANet on the embedded digit scenes by default): predictions on
validation scenes next to their ground truth, PAM of two query points placed on digits, CAM, and
the training curves. Pictures with random (seeded) weights: CCNet's criss-cross pass and RCCA
reach (trained weights with ``--ccnet-run``), FLANet's FLA, and the ``attnet`` head with BAM, SGE
and PSA. File names are fixed (see :data:`FIGURES`); existing files are overwritten.

``--datasets`` draws the embedded datasets' scenes with their labels instead (:data:`DATASET_FIGURES`,
no training): digit scenes, and occluded digit scenes each drawn with three identities.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEED = 0  # of the random weights
PREDICTED_SCENES = (0, 1, 2)  # validation scene indices drawn with their predictions

# explain() key -> PNG name, per model (explain writes every map; these are the ones kept)
DANET_MAPS = {"pam_q0": "danet_pam_q0", "pam_q1": "danet_pam_q1", "cam_matrix": "danet_cam_matrix",
              "cam_q0": "danet_cam_q0"}
CCNET_MAPS = {"rcca_pass1_q0": "ccnet_cca_pass1", "rcca_reach_q0": "ccnet_rcca_reach"}
RANDOM_MODELS = (  # (registered model, create_model kwargs, explain key -> PNG name), random seeded weights
    ("flanet", {}, {"fla_q0": "flanet_fla", "fla_column_q0": "flanet_fla_column", "fla_row_q0": "flanet_fla_row"}),
    ("attnet", {"attention": "bam"}, {"bam_gate": "attnet_bam_gate"}),
    ("attnet", {"attention": "sge"}, {"sge_gate": "attnet_sge_gate"}),
    ("attnet", {"attention": "psa"}, {"psa_branch": "attnet_psa_branch"}),
)
# every PNG written -> its number of panels (pixel size: visattn.viz.figure_size(panels))
FIGURES = {
    **{f"predict_val{i}": 5 for i in PREDICTED_SCENES},  # image, ground truth, prediction, overlay, legend
    **{name: 2 for name in DANET_MAPS.values()},
    **{name: 2 for name in CCNET_MAPS.values()},
    **{name: 2 for _, _, maps in RANDOM_MODELS for name in maps.values()},
    "train_curves": 3,
}
DATASET_SCENES = (0, 1, 2)  # validation scenes drawn by --datasets (digit scenes)
IDENTITY_SHIFTS = (0, 3, 6)  # occluded digit scene 0 drawn with its own identity + these (mod 10)
DATASET_FIGURES = {"dataset_digits": 2 * len(DATASET_SCENES), "dataset_occluded_digits": 2 * len(IDENTITY_SHIFTS)}


def train_default(overrides: list[str], quiet: bool = False) -> Path:
    """``visattn train`` with no arguments (plus ``overrides``): the default config, run dir under runs/."""
    from visattn.engine.config import load_config
    from visattn.engine.trainer import train

    result = train(load_config(None, overrides), quiet=quiet)
    if result["interrupted"]:
        raise KeyboardInterrupt
    print(f"trained {result['step']} steps, mIoU {100 * result['metrics']['mIoU']:.2f}; run directory: {result['run_dir']}")
    return Path(result["run_dir"])


def point_on_digit(mask, digit: tuple[int, int, int, int]) -> tuple[int, int]:
    """The pixel labelled with ``digit`` (``(digit, y, x, side)`` of ``DigitScenes.scene``) nearest its box centre."""
    import numpy as np

    d, y, x, side = digit
    ys, xs = np.nonzero(mask[y:y + side, x:x + side] == d + 1)
    if len(ys) == 0:  # covered by a later digit
        return y + side // 2, x + side // 2
    i = int(np.argmin((ys - side / 2) ** 2 + (xs - side / 2) ** 2))
    return y + int(ys[i]), x + int(xs[i])


def explain_kept(model, image, points, mean, std, keep: dict[str, str], out: Path) -> list[Path]:
    """:func:`visattn.viz.explain` into a scratch folder; move the maps named in ``keep`` to ``out``."""
    from visattn.viz import explain

    written = []
    with tempfile.TemporaryDirectory(dir=out) as scratch:
        paths = explain(model, image, scratch, points, mean, std)
        for key, name in keep.items():
            found = [p for p in paths if p.name.endswith(f"_{key}.png")]
            if len(found) != 1:
                raise ValueError(f"{type(model).__name__}: expected one {key!r} map, explain wrote "
                                 f"{sorted(p.name for p in paths)}")
            os.replace(found[0], out / f"{name}.png")
            written.append(out / f"{name}.png")
    return written


def make_figures(run: Path, out: Path, ccnet_run: Path | None = None) -> list[Path]:
    """Write every picture of :data:`FIGURES` into ``out`` from the run directory ``run``."""
    import torch

    from visattn.data import build_dataset, classes_and_palette
    from visattn.engine.inference import segment
    from visattn.trained import load_trained
    from visattn.models import create_model
    from visattn.viz import plot_metrics, save_prediction

    out.mkdir(parents=True, exist_ok=True)
    cfg, model = load_trained(run=run)
    data = cfg.data
    if data.dataset != "digits":
        raise ValueError(f"{run}: the pictures need a run on the digit scenes, not {data['dataset']!r}")
    classes, palette = classes_and_palette(data)
    val = build_dataset(data, data.val_split, train=False, seed=cfg.train.seed)
    scenes = val.dataset  # the DigitScenes under the eval transforms
    if len(scenes) <= max(PREDICTED_SCENES):
        raise ValueError(f"{run}: {len(scenes)} validation scenes; the pictures need {max(PREDICTED_SCENES) + 1}")
    written = []

    items = [val[i] for i in PREDICTED_SCENES]  # (normalised image, mask) as the evaluation sees them
    with torch.no_grad():
        preds = segment(model, torch.stack([x for x, _ in items]), len(classes)).argmax(1).numpy()
    for i, pred, (_, target) in zip(PREDICTED_SCENES, preds, items):
        written.append(save_prediction(scenes.scene(i)[0], pred, classes, palette, out / f"predict_val{i}.png",
                                       target=target.numpy()))

    # attention pictures on the first validation scene with two digits; queries on those digits
    i = next((i for i in range(len(scenes)) if len(scenes.scene(i)[2]) >= 2), None)
    if i is None:
        raise ValueError("no validation scene holds two digits (data.digits.digits_per_image)")
    image, mask, placed = scenes.scene(i)
    points = [point_on_digit(mask, d) for d in placed[:2]]
    written += explain_kept(model, image, points, data.mean, data.std, DANET_MAPS, out)

    def random_model(name: str, **kwargs):
        torch.manual_seed(SEED)
        return create_model(name, num_classes=len(classes), encoder="resnet18", output_stride=8, **kwargs)

    if ccnet_run is not None:
        cc_cfg, ccnet = load_trained(run=ccnet_run)
        cc_mean, cc_std = cc_cfg.data.mean, cc_cfg.data.std
    else:
        ccnet, cc_mean, cc_std = random_model("ccnet"), data.mean, data.std
    written += explain_kept(ccnet, image, points[:1], cc_mean, cc_std, CCNET_MAPS, out)

    for name, kwargs, keep in RANDOM_MODELS:
        model = random_model(name, **kwargs)
        if kwargs.get("attention") == "sge":
            # SGE starts with weight 0 and bias 1: a constant gate sigmoid(1), nothing to see; draw seeded weights
            torch.nn.init.normal_(model.head.attention.weight, generator=torch.Generator().manual_seed(SEED))
        written += explain_kept(model, image, points[:1], data.mean, data.std, keep, out)

    written.append(plot_metrics(run, out / "train_curves.png"))
    return written


def draw_panels(panels: list[tuple[str, np.ndarray]], path: Path) -> Path:
    """``(title, uint8 (H, W, 3) picture)`` panels side by side, one PNG of :func:`visattn.viz.figure_size`."""
    from matplotlib.figure import Figure

    from visattn.viz import figure_size

    width, height = figure_size(len(panels))
    fig = Figure(figsize=(width / 100, height / 100), dpi=100, layout="constrained")
    for ax, (title, picture) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.savefig(path, dpi=100)
    return path


def make_dataset_figures(out: Path) -> list[Path]:
    """Write the pictures of :data:`DATASET_FIGURES` into ``out``: validation scenes and their labels."""
    from visattn.data import DigitScenes, OccludedDigitScenes, colorize

    out.mkdir(parents=True, exist_ok=True)
    digits = DigitScenes("val", length=max(DATASET_SCENES) + 1)
    panels = []
    for i in DATASET_SCENES:
        image, mask, _ = digits.scene(i)
        panels += [(f"scene {i}", image), ("labels", colorize(mask, digits.palette))]
    written = [draw_panels(panels, out / "dataset_digits.png")]

    occluded = OccludedDigitScenes("val", length=1)
    own = occluded.scene(0)[2][0][0]
    panels = []
    for identity in ((own + shift) % 10 for shift in IDENTITY_SHIFTS):  # only the clean digits change
        image, mask, _ = occluded.scene(0, identity=identity)
        panels += [(f"identity {identity}", image), (f"labels (all {identity})", colorize(mask, occluded.palette))]
    written.append(draw_panels(panels, out / "dataset_occluded_digits.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, metavar="RUN_DIR",
                        help="an existing run of the default model (DANet on the digit scenes; default: train one first)")
    parser.add_argument("--output-dir", type=Path, metavar="DIR", default=ROOT / "docs" / "img",
                        help="the folder to write into (default docs/img)")
    parser.add_argument("--output", type=Path, dest="output_dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--ccnet-run", type=Path, metavar="RUN_DIR",
                        help="a trained CCNet run for the criss-cross pictures (default: random seeded weights)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training config key, e.g. --set train.iters=5 (repeatable; without --run)")
    parser.add_argument("--quiet", action="store_true", help="no training progress bar")
    parser.add_argument("--datasets", action="store_true",
                        help="draw only the dataset samples of docs/datasets.md (no training)")
    args = parser.parse_args(argv)
    if args.run is not None and args.overrides:
        parser.error("--set configures the training; it cannot be combined with --run")
    if args.datasets and (args.run or args.ccnet_run or args.overrides):
        parser.error("--datasets draws the datasets alone; it cannot be combined with --run, --ccnet-run or --set")
    if args.datasets:
        for path in make_dataset_figures(args.output_dir):
            print(path)
        return 0

    from visattn.engine.config import ConfigError

    try:
        run = args.run if args.run is not None else train_default(args.overrides, args.quiet)
        for path in make_figures(run, args.output_dir, args.ccnet_run):
            print(path)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, KeyError) as err:
        print(f"make_figures: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
