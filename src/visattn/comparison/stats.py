"""The statistics of a comparison: mean and standard deviation over seeds, and each entry's paired
difference to the first with a Student t confidence interval (exact t quantiles, no SciPy)."""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np

from ..engine.config import Config
from .entries import Entry
from .output import CompareDir

__all__ = ["CONFIDENCE", "t_quantile", "mean_and_std", "paired_difference", "class_means", "summarise"]

CONFIDENCE = 0.95


def _t_cdf(t: float, df: int) -> float:
    """Student t CDF at ``t >= 0`` for integer ``df`` (Abramowitz & Stegun 26.7.3-4, exact)."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:
        term = series = math.cos(theta) if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= 2 * k / (2 * k + 1) * c2
            series += term
        two_sided = 2 / math.pi * (theta + math.sin(theta) * series)
    else:
        term = series = 1.0
        for k in range(1, df // 2):
            term *= (2 * k - 1) / (2 * k) * c2
            series += term
        two_sided = math.sin(theta) * series
    return 0.5 + 0.5 * two_sided


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (``0.5 <= p < 1``) of Student's t with ``df`` degrees of freedom (bisection
    on the exact CDF; no SciPy needed)."""
    if not 0.5 <= p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 <= p < 1 and df >= 1, got p={p}, df={df}")
    low, high = 0.0, 1.0
    while _t_cdf(high, df) < p:
        low, high = high, 2 * high
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if _t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


def mean_and_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def paired_difference(values: Sequence[float], reference: Sequence[float], level: float = CONFIDENCE) -> dict:
    """``values - reference`` seed by seed: ``{"per_seed", "mean", "low", "high", "level"}``, the
    interval ``mean ± t_{(1+level)/2, n-1} * sd / sqrt(n)`` (``low``/``high`` ``None`` for one seed)."""
    diffs = [v - r for v, r in zip(values, reference, strict=True)]
    mean, sd = mean_and_std(diffs)
    if sd is None:
        return {"per_seed": diffs, "mean": mean, "low": None, "high": None, "level": level}
    half = t_quantile((1 + level) / 2, len(diffs) - 1) * sd / math.sqrt(len(diffs))
    return {"per_seed": diffs, "mean": mean, "low": mean - half, "high": mean + half, "level": level}


def class_means(runs: Sequence[dict]) -> list[float | None]:
    """Per-class IoU averaged over the runs where it is defined (``None`` where it never is)."""
    table = np.array([[math.nan if v is None else v for v in r["metrics"]["per_class_iou"]] for r in runs])
    defined = ~np.isnan(table)
    sums = np.where(defined, table, 0).sum(0)
    return [float(s / n) if n else None for s, n in zip(sums, defined.sum(0))]


def summarise(entries: Sequence[Entry], configs: dict[str, Config], records: dict[tuple[str, int], dict],
              seeds: Sequence[int], cdir: CompareDir, baselines: Sequence[str] = ()) -> list[dict]:
    """Per entry: its runs and the statistics over them (fractions, as the trainer's metrics): the
    paired difference to the first entry (``delta_mIoU``) and to each of ``baselines``
    (``delta_mIoU_vs``, ``None`` for the baseline itself)."""
    def miou_of(name: str) -> list[float]:
        return [records[name, s]["metrics"]["mIoU"] for s in seeds]

    reference = miou_of(entries[0].name)
    reference_classes: list[float | None] = []
    rows = []
    for entry in entries:
        runs = [{"seed": s, "run_dir": str(cdir.run(entry, s).path.relative_to(cdir.path)),
                 **records[entry.name, s]} for s in seeds]
        miou = [r["metrics"]["mIoU"] for r in runs]
        macc = [r["metrics"]["mAcc"] for r in runs]
        classes = class_means(runs)
        reference_classes = reference_classes or classes
        cfg = configs[entry.name]
        rows.append({
            "name": entry.name, "model": cfg.model.name, "kwargs": cfg.model.kwargs, "runs": runs,
            "mIoU": dict(zip(("mean", "std"), mean_and_std(miou))), "mAcc": dict(zip(("mean", "std"), mean_and_std(macc))),
            "delta_mIoU": None if entry is entries[0] else paired_difference(miou, reference),
            "delta_mIoU_vs": {b: None if b == entry.name else paired_difference(miou, miou_of(b)) for b in baselines},
            "per_class_iou": classes,
            "per_class_iou_delta": [None if a is None or b is None else a - b for a, b in zip(classes, reference_classes)],
        })
    return rows
