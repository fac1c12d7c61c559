"""The report of a comparison: the Markdown table and text (report.md), report.json, and the pictures
(mIoU against cost, per-class IoU differences, each entry's attention map on one validation image)."""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..data import IGNORE_INDEX, build_dataset, classes_and_palette
from ..engine.config import Config
from ..trained import load_trained
from ..viz import attention_map_of, save_attention_maps, save_miou_vs_cost, save_per_class_iou_delta
from ..weights import atomic_write
from .entries import Entry
from .output import CompareDir
from .stats import CONFIDENCE

__all__ = ["format_table", "markdown", "query_point", "draw_pictures", "save_report"]


def _signed(value: float) -> str:
    return f"{100 * value:+.2f}"


def _spread(stat: dict) -> str:
    return f"{100 * stat['mean']:.2f}" + ("" if stat["std"] is None else f" ± {100 * stat['std']:.2f}")


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _difference(delta: dict | None) -> str:
    """A table cell: the mean difference and its interval, or ``reference`` (the entry itself)."""
    if delta is None:
        return "reference"
    if delta["low"] is None:
        return _signed(delta["mean"])
    return f"{_signed(delta['mean'])} [{_signed(delta['low'])}, {_signed(delta['high'])}]"


def format_table(report: dict) -> str:
    """The comparison as a Markdown table (metrics in %, differences in points): a ΔmIoU column for
    the first entry and one for each of the report's ``baselines``."""
    baselines = report.get("baselines", [])
    against = [report["entries"][0]["name"], *baselines]
    lines = ["| entry | params (M) | GFLOPs | ms/step | peak train memory (MB) | mIoU | mAcc | "
             + " | ".join(f"ΔmIoU vs {name} ({100 * CONFIDENCE:.0f}% CI)" for name in against) + " |",
             "|---" * (7 + len(against)) + "|"]
    for row in report["entries"]:
        cost = row["cost"]
        deltas = [row["delta_mIoU"], *(row["delta_mIoU_vs"][name] for name in baselines)]
        lines.append(f"| {row['name']} | {cost['params_m']:.2f} | {cost['gflops']:.2f} | {cost['ms_per_step']:.1f} "
                     f"| {_number(cost['peak_train_mb'], '.0f')} | {_spread(row['mIoU'])} | {_spread(row['mAcc'])} | "
                     + " | ".join(map(_difference, deltas)) + " |")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    t, setup = report["recipe"]["train"], report["cost_setup"]
    n = len(report["seeds"])
    length = f"{t['epochs']} epochs" if t["epochs"] else f"{t['iters']} steps"
    where = setup.get("gpu") or f"{report['machine']['cpu']}, {setup['threads']} threads"
    reference = report["entries"][0]["name"]
    ci = (f"ΔmIoU: the mean over seeds of each seed's mIoU minus {reference}'s (points), with its "
          f"{100 * CONFIDENCE:.0f}% Student t interval over the {n} per-seed differences ({n - 1} "
          f"degree{'s' if n > 2 else ''} of freedom); an interval that excludes 0 is a difference the seeds do not explain."
          if n > 1 else f"ΔmIoU: mIoU minus {reference}'s (points); one seed, so no interval.")
    if report.get("baselines"):
        ci += " Each further ΔmIoU column: the same against the entry it names."
    maps = "; ".join(f"{row['name']}: {m['module']} {m['map']}" if (m := row["attention_map"]) else
                     f"{row['name']}: none" for row in report["entries"])
    return "\n".join([
        "# Attention comparison", "",
        f"Recipe: {report['config'] or 'the default config'}"
        + (f" with {', '.join(report['overrides'])}" if report["overrides"] else "")
        + f"; data {report['recipe']['data']['dataset']}; {length} x batch {t['batch_size']}; "
        f"model arguments {report['recipe']['model']['kwargs']}; seeds {', '.join(map(str, report['seeds']))}.", "",
        format_table(report), "",
        "mIoU, mAcc: mean ± standard deviation over seeds (%), the final evaluation of each run. " + ci, "",
        f"Cost, measured after training on {setup['device']} ({where}): parameters; GFLOPs of one forward at "
        f"{setup['eval_size'][0]}x{setup['eval_size'][1]}; ms/step: median of {setup['timed_steps']} training steps "
        f"on a batch of {'x'.join(map(str, setup['batch']))} after {setup['warmup_steps']} warm-up steps, entries "
        "interleaved; peak train memory: two training steps of a fresh model in its own process (weights, "
        "gradients, optimizer state, activations).", "",
        "![mIoU against cost](miou_vs_cost.png)", "",
        f"![per-class IoU difference to {reference}](per_class_iou_delta.png)", "",
        f"![attention maps](attention_maps.png) (validation image {report['image_index']}, query pixel "
        f"{tuple(report['query_point'])}; {maps})", "",
    ])


def query_point(mask: np.ndarray) -> tuple[int, int]:
    """The pixel nearest the centre whose class is not the image's most frequent one (an object rather
    than the background); the centre if every labelled pixel has one class."""
    h, w = mask.shape
    labelled = mask[mask != IGNORE_INDEX]
    if labelled.size:
        values, counts = np.unique(labelled, return_counts=True)
        ys, xs = np.nonzero((mask != values[counts.argmax()]) & (mask != IGNORE_INDEX))
        if len(ys):
            i = int(np.argmin((ys - (h - 1) / 2) ** 2 + (xs - (w - 1) / 2) ** 2))
            return int(ys[i]), int(xs[i])
    return h // 2, w // 2


def draw_pictures(report: dict, entries: Sequence[Entry], cdir: CompareDir, base: Config, device: torch.device) -> None:
    """The three pictures; each entry's attention map from its seed-0 model (best weights)."""
    rows = report["entries"]
    save_miou_vs_cost([r["name"] for r in rows], [100 * r["mIoU"]["mean"] for r in rows],
                      [100 * (r["mIoU"]["std"] or 0) for r in rows], [r["cost"]["ms_per_step"] for r in rows],
                      [r["cost"]["params_m"] for r in rows], cdir.miou_vs_cost)
    classes, _ = classes_and_palette(base.data)
    save_per_class_iou_delta(classes, [r["name"] for r in rows[1:]],
                             [[math.nan if d is None else 100 * d for d in r["per_class_iou_delta"]] for r in rows[1:]],
                             rows[0]["name"], cdir.per_class_iou_delta)
    image, mask = build_dataset(base.data, base.data.val_split, train=False).dataset[report["image_index"]]
    image = torch.as_tensor(image).permute(1, 2, 0).numpy()
    point = query_point(np.asarray(mask))
    panels = []
    for entry, row in zip(entries, rows):
        _, model = load_trained(cdir.run(entry, report["seeds"][0]).path, device=device)
        found = attention_map_of(model, image, point, base.data.mean, base.data.std)
        row["attention_map"] = None if found is None else {"module": found[0], "map": found[1].key}
        panels.append((entry.name, None if found is None else found[1]))
    save_attention_maps(panels, image, point, cdir.attention_maps)
    report["query_point"] = list(point)


def save_report(report: dict, cdir: CompareDir) -> None:
    """report.json (everything) and report.md (:func:`markdown`) in ``cdir``."""
    atomic_write(cdir.report_json, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    atomic_write(cdir.report_md, lambda tmp: Path(tmp).write_text(markdown(report)))
