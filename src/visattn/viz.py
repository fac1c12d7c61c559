"""Pictures: attention maps over the image, predictions with a legend, training curves, confusion matrices.

Two layers, so that what is drawn can be tested against what the modules return:

- every attention module's ``attention_maps`` method (called by :func:`attention_maps`) turns its
  ``attention_weights`` on its input feature map into :class:`AttentionMap` arrays (feature
  resolution, before any resizing or colouring);
- ``render_*`` / ``save_*`` draw them with matplotlib (Agg backend, no display needed) into PNGs of
  a fixed pixel size (:func:`figure_size`).

:func:`explain` ties them to a segmentor: a forward pre-hook captures the input of every attention
module during one forward pass, then each module's maps are rendered over the image.

Query points are given in image pixels ``(row, column)`` and mapped to feature cells with the
``align_corners=True`` grid the segmentors upsample with (:func:`to_feature`); maps are upsampled
to the image the same way, so a feature cell's centre lands where its logits do.
"""
from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._extras import require
from .attention import list_attentions
from .attention._common import AttentionMap, check_one_map
from .data import colorize
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, image_to_tensor
from .engine.run_dir import RunDir, read_metrics_file
from .weights import atomic_write

__all__ = [
    "AttentionMap", "attention_maps", "find_attention_modules", "capture_inputs", "explain",
    "to_feature", "to_image", "upsample", "render_attention_map", "save_prediction", "plot_metrics",
    "read_metrics", "save_confusion_matrix", "CONFUSION_PX", "MAX_TICK_LABELS", "figure_size", "PANEL_PX",
    "attention_map_of", "save_attention_maps", "save_miou_vs_cost", "save_per_class_iou_delta", "COMPARE_PLOT_PX",
    "MAP_COLUMNS",
]

PANEL_PX = 256  # pixel size of one square panel; a figure is a row of panels
MAP_COLUMNS = 8  # a comparison's attention maps wrap into rows of this many panels
CONFUSION_PX = 800  # width and height of a confusion-matrix picture
MAX_TICK_LABELS = 40  # more classes than this: every k-th class is named on the axes
_DPI = 100
_MARKED_POINTS = 50  # training curves of at most this many points mark each one


# ---------------------------------------------------------------------------------------------
# coordinates


def to_feature(point: tuple[int, int], image_size: tuple[int, int], feature_size: tuple[int, int]) -> tuple[int, int]:
    """Image pixel ``(row, col)`` -> nearest feature cell on the ``align_corners=True`` grid."""
    return tuple(  # type: ignore[return-value]
        min(f - 1, max(0, round(p * (f - 1) / max(s - 1, 1)))) for p, s, f in zip(point, image_size, feature_size)
    )


def to_image(cell: tuple[int, int], image_size: tuple[int, int], feature_size: tuple[int, int]) -> tuple[float, float]:
    """Feature cell ``(row, col)`` -> its centre in image pixels (``align_corners=True`` grid)."""
    return tuple(c * (s - 1) / max(f - 1, 1) for c, s, f in zip(cell, image_size, feature_size))  # type: ignore[return-value]


def upsample(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear ``(h, w)`` -> ``size`` with ``align_corners=True`` (as the segmentors' logits)."""
    t = torch.as_tensor(np.asarray(values, dtype=np.float32))[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=True)[0, 0].numpy()


# ---------------------------------------------------------------------------------------------
# attention modules -> arrays


def _drawable(module: nn.Module) -> bool:
    return callable(getattr(module, "attention_maps", None))


def _no_pictures_hint() -> str:
    return f"modules with an attention_maps method, e.g. the attention modules {', '.join(list_attentions())}"


def attention_maps(module: nn.Module, x: Tensor, points: Sequence[tuple[int, int]] = ()) -> list[AttentionMap]:
    """``module.attention_maps(x, points)``: the maps of ``module`` for its input ``x`` ``(1, C, H, W)``.

    ``points`` are feature cells ``(row, col)`` (default: the centre cell); modules without query
    points ignore them. What each module's maps show is documented on its ``attention_maps``.
    """
    if not _drawable(module):
        raise ValueError(f"no pictures for {type(module).__name__}: it has no attention_maps method "
                         f"(drawable: {_no_pictures_hint()})")
    check_one_map(type(module).__name__, x)
    return module.attention_maps(x, points)


# ---------------------------------------------------------------------------------------------
# model -> captured inputs


def find_attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``name -> module`` of the modules with an ``attention_maps`` method (outermost only: RCCA's
    inner CCA is part of RCCA, DualAttention's PAM and CAM are part of it)."""
    found: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if _drawable(m) and not any(name.startswith(n + ".") for n in found):
            found[name] = m
    return found


@torch.no_grad()
def capture_inputs(model: nn.Module, x: Tensor, modules: Mapping[str, nn.Module]) -> tuple[Tensor, dict[str, Tensor]]:
    """Run ``model(x)`` once and return ``(output, name -> the input each module received)``."""
    inputs: dict[str, Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda _m, args, n=n: inputs.__setitem__(n, args[0].detach()))
               for n, m in modules.items()]
    try:
        out = model(x)
    finally:
        for hd in handles:
            hd.remove()
    return out, inputs


# ---------------------------------------------------------------------------------------------
# rendering


def _grid(panels: int, columns: int | None) -> tuple[int, int]:
    """``(rows, columns)`` of ``panels`` panels in rows of at most ``columns`` (``None``: one row)."""
    columns = panels if columns is None else min(columns, panels)
    return math.ceil(panels / columns), columns


def figure_size(panels: int, columns: int | None = None) -> tuple[int, int]:
    """``(width, height)`` in pixels of a figure of ``panels`` panels side by side, in rows of at
    most ``columns`` panels (``None``: one row)."""
    rows, columns = _grid(panels, columns)
    return PANEL_PX * columns, (PANEL_PX + PANEL_PX // 8) * rows


def _figure(panels: int, columns: int | None = None):
    """A figure of :func:`figure_size` and its first ``panels`` axes, row by row (the rest hidden)."""
    require("matplotlib", extra="viz")
    from matplotlib.figure import Figure

    w, h = figure_size(panels, columns)
    # constrained layout fits titles, labels and colour bars inside the fixed figure size
    fig = Figure(figsize=(w / _DPI, h / _DPI), dpi=_DPI, layout="constrained")
    axes = fig.subplots(*_grid(panels, columns), squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_axis_off()
    return fig, axes[:panels]


def _save(fig, path: str | os.PathLike) -> Path:
    """``fig`` written to ``path`` (its format from the suffix) through a temporary file: a picture is
    never seen half-written, and a file linked elsewhere is replaced, not written through."""
    path = Path(path)
    # no bbox_inches="tight": the pixel size stays figure_size()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=_DPI, format=path.suffix[1:].lower() or "png"))


def _colorbar(fig, ax, im) -> None:
    cb = fig.colorbar(im, ax=ax, shrink=0.85)
    cb.ax.tick_params(labelsize=6)


def render_attention_map(amap: AttentionMap, image: np.ndarray, path: str | os.PathLike, alpha: float = 0.55) -> Path:
    """Draw ``amap`` into ``path``: a spatial map upsampled over ``image`` (uint8 ``(H, W, 3)``) with
    a colour bar and the query marked; a matrix as it is, next to the image with the query marked."""
    fig, (ax_img, ax_map) = _figure(2)
    size = image.shape[:2]
    marker = None
    if amap.point is not None:
        marker = to_image(amap.point, size, amap.values.shape if amap.spatial else amap.grid)
    ax_img.imshow(image)
    ax_img.set_title("image", fontsize=8)
    if amap.spatial:
        ax_map.imshow(image)
        im = ax_map.imshow(upsample(amap.values, size), cmap="jet", alpha=alpha)
    else:
        im = ax_map.imshow(amap.values, cmap="viridis", aspect="auto", interpolation="nearest")
        ax_map.set_xlabel(amap.xlabel, fontsize=7)
        ax_map.set_ylabel(amap.ylabel, fontsize=7)
        if amap.yticklabels is not None:
            ax_map.set_yticks(range(len(amap.yticklabels)), amap.yticklabels)
        ax_map.tick_params(labelsize=6)
    _colorbar(fig, ax_map, im)
    ax_map.set_title(amap.title, fontsize=8)
    for ax in (ax_img, ax_map) if amap.spatial else (ax_img,):
        ax.set_xticks([])
        ax.set_yticks([])
        if marker is not None:
            ax.plot(marker[1], marker[0], marker="*", markersize=12, color="white", markeredgecolor="black")
    return _save(fig, path)


def _legend(ax, classes: Sequence[str], palette: Sequence[Sequence[int]], ids: Iterable[int]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=np.asarray(palette[i]) / 255, edgecolor="black", label=classes[i]) for i in ids]
    ax.legend(handles=handles, loc="center", fontsize=7, ncol=1 + len(handles) // 12, frameon=False,
              title="classes", title_fontsize=8)
    ax.axis("off")


def save_prediction(image: np.ndarray, pred: np.ndarray, classes: Sequence[str], palette: Sequence[Sequence[int]],
                    path: str | os.PathLike, alpha: float = 0.5, target: np.ndarray | None = None) -> Path:
    """Image, colour mask, overlay (and ``target``'s mask if given) and a legend naming the classes
    that appear, as one PNG. ``pred``/``target``: ``(H, W)`` class ids (255 = ignore, drawn black)."""

    panels = [("image", image)]
    if target is not None:
        panels.append(("ground truth", colorize(target, palette)))
    mask = colorize(pred, palette)
    panels += [("prediction", mask), ("overlay", ((1 - alpha) * image + alpha * mask).round().astype(np.uint8))]
    fig, axes = _figure(len(panels) + 1)
    for ax, (title, picture) in zip(axes, panels):
        ax.imshow(picture)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    present = np.unique(pred if target is None else np.concatenate([pred.ravel(), target.ravel()]))
    _legend(axes[-1], classes, palette, [int(i) for i in present if i < len(classes)])
    return _save(fig, path)


def read_metrics(path: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """``(train records, validation records)`` of a run directory's (or a file's) metrics.jsonl:
    train lines carry ``loss``, validation lines ``mIoU`` (or ``top1``)."""
    path = Path(path)
    if path.is_dir():
        path = RunDir(path).metrics
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl at {path}")
    records = read_metrics_file(path)
    return [r for r in records if "loss" in r], [r for r in records if "loss" not in r]


def plot_metrics(run: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Loss, validation mIoU (top-1 for classification runs) and learning rate over steps, as one PNG."""
    train, val = read_metrics(run)
    if not train and not val:
        raise ValueError(f"{run}: metrics.jsonl holds no records")
    fig, (ax_loss, ax_val, ax_lr) = _figure(3)
    steps = [r["step"] for r in train]
    points = "." if len(steps) <= _MARKED_POINTS else None  # a short run's one or few points show as dots
    ax_loss.plot(steps, [r["loss"] for r in train], marker=points, label="total")
    for key in sorted({k for r in train for k in r if k.startswith("loss_")}):
        ax_loss.plot(steps, [r.get(key, math.nan) for r in train], lw=0.8, marker=points, label=key[5:])
    ax_loss.set_title("training loss", fontsize=8)
    ax_loss.legend(fontsize=6)
    metric = "mIoU" if any("mIoU" in r for r in val) else "top1"
    ax_val.plot([r["step"] for r in val if metric in r], [100 * r[metric] for r in val if metric in r], "o-")
    ax_val.set_title(f"validation {metric} (%)", fontsize=8)
    ax_lr.plot(steps, [r["lr"] for r in train], marker=points)
    ax_lr.set_title("learning rate", fontsize=8)
    for ax in (ax_loss, ax_val, ax_lr):
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def save_confusion_matrix(matrix: Sequence[Sequence[int]] | np.ndarray, classes: Sequence[str],
                          path: str | os.PathLike, title: str = "confusion matrix") -> Path:
    """Draw a ``(K, K)`` confusion matrix of pixel counts (rows: ground truth, columns: prediction)
    row-normalised (each row: where that class's pixels went; rows without pixels stay empty) into a
    ``CONFUSION_PX`` square PNG. Both axes name every class up to ``MAX_TICK_LABELS`` classes, else
    every k-th one so that at most ``MAX_TICK_LABELS`` names are drawn."""
    require("matplotlib", extra="viz")
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, dtype=np.float64)
    rows = counts.sum(1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.full_like(counts, np.nan), where=rows > 0)
    fig = Figure(figsize=(CONFUSION_PX / _DPI, CONFUSION_PX / _DPI), dpi=_DPI, layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    _colorbar(fig, ax, im)
    step = math.ceil(len(classes) / MAX_TICK_LABELS)
    ticks = np.arange(0, len(classes), step)
    fontsize = 7 if len(classes) <= 20 else 5
    ax.set_xticks(ticks, [classes[i] for i in ticks], rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, [classes[i] for i in ticks], fontsize=fontsize)
    ax.set_xlabel("prediction", fontsize=8)
    ax.set_ylabel("ground truth", fontsize=8)
    ax.set_title(f"{title} (row-normalised)", fontsize=9)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# model + image -> PNGs


def explain(
    model: nn.Module,
    image: np.ndarray,
    out_dir: str | os.PathLike,
    points: Sequence[tuple[int, int]] = (),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    prefix: str = "",
    only: Sequence[str] = (),
) -> list[Path]:
    """Render every attention module of ``model`` on ``image`` (uint8 ``(H, W, 3)``) into ``out_dir``.

    ``points``: query pixels ``(row, col)`` of the image (default: its centre). ``only``: module
    names or shell-style patterns (``head.sa``, ``blocks.*``) to draw, default all; a pattern that
    matches no attention module is an error naming the ones there are. One PNG per map, named
    ``{prefix}{module}_{map}.png``. Returns the paths written.
    """
    modules = find_attention_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} holds no attention module that can be drawn "
                         f"({_no_pictures_hint()})")
    if only:
        unmatched = [pat for pat in only if not fnmatch.filter(modules, pat)]
        if unmatched:
            raise ValueError(f"no attention module named {', '.join(map(repr, unmatched))} "
                             f"(this model has: {', '.join(modules)})")
        modules = {n: m for n, m in modules.items() if any(fnmatch.fnmatchcase(n, pat) for pat in only)}
    size = image.shape[:2]
    points = list(points) or [(size[0] // 2, size[1] // 2)]
    for p in points:
        if not (0 <= p[0] < size[0] and 0 <= p[1] < size[1]):
            raise ValueError(f"query point {tuple(p)} outside the {size[0]}x{size[1]} image")
    device = next(model.parameters()).device
    x = image_to_tensor(image, mean, std)
    model.eval()
    _, inputs = capture_inputs(model, x.to(device), modules)
    written = []
    for name, module in modules.items():
        feat = inputs[name]
        cells = [to_feature(p, size, tuple(feat.shape[-2:])) for p in points]
        for amap in attention_maps(module, feat, cells):
            written.append(render_attention_map(amap, image, Path(out_dir) / f"{prefix}{name.replace('.', '_')}_{amap.key}.png"))
    return written


# ---------------------------------------------------------------------------------------------
# comparisons of several models (visattn compare)

COMPARE_PLOT_PX = 480  # side of one panel of the comparison plots (labelled points need more room than PANEL_PX)


def attention_map_of(model: nn.Module, image: np.ndarray, point: tuple[int, int], mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD) -> tuple[str, AttentionMap] | None:
    """One map that shows how ``model`` attends on ``image`` (uint8 ``(H, W, 3)``): of its first
    attention module that runs, the first map of the query pixel ``point`` ``(row, col)``, else its
    first spatial map, else its first map. ``(module name, map)``; ``None`` for a model without
    attention modules (an FCN)."""
    modules = find_attention_modules(model)
    if not modules:
        return None
    device = next(model.parameters()).device
    model.eval()
    _, inputs = capture_inputs(model, image_to_tensor(image, mean, std).to(device), modules)
    name = next(n for n in modules if n in inputs)
    feat = inputs[name]
    maps = attention_maps(modules[name], feat, [to_feature(point, image.shape[:2], tuple(feat.shape[-2:]))])
    chosen = next((m for m in maps if m.point is not None), None) or next((m for m in maps if m.spatial), maps[0])
    return name, chosen


def save_attention_maps(panels: Sequence[tuple[str, AttentionMap | None]], image: np.ndarray,
                        point: tuple[int, int], path: str | os.PathLike, alpha: float = 0.55) -> Path:
    """One panel per ``(label, map)``, in rows of :data:`MAP_COLUMNS`: a spatial map upsampled over
    ``image`` with the query ``point`` (image pixel) marked, a matrix as it is; a ``None`` map: the
    image and "no attention module"."""
    fig, axes = _figure(len(panels), MAP_COLUMNS)
    size = image.shape[:2]
    for ax, (label, amap) in zip(axes, panels):
        if amap is not None and not amap.spatial:
            ax.imshow(amap.values, cmap="viridis", aspect="auto", interpolation="nearest")
            ax.set_xlabel(amap.xlabel, fontsize=6)
            ax.set_ylabel(amap.ylabel, fontsize=6)
            if amap.yticklabels is not None:
                ax.set_yticks(range(len(amap.yticklabels)), amap.yticklabels)
            ax.tick_params(labelsize=5)
        else:
            ax.imshow(image)
            if amap is not None:
                ax.imshow(upsample(amap.values, size), cmap="jet", alpha=alpha)
            ax.plot(point[1], point[0], marker="*", markersize=10, color="white", markeredgecolor="black")
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_title(f"{label}\n{'no attention module' if amap is None else amap.title}", fontsize=7)
    return _save(fig, path)


def _plots(panels: int, width_px: int | None = None, height_px: int = COMPARE_PLOT_PX):
    require("matplotlib", extra="viz")
    from matplotlib.figure import Figure

    fig = Figure(figsize=((width_px or COMPARE_PLOT_PX * panels) / _DPI, height_px / _DPI), dpi=_DPI,
                 layout="constrained")
    return fig, fig.subplots(1, panels, squeeze=False)[0]


def save_miou_vs_cost(names: Sequence[str], miou: Sequence[float], miou_std: Sequence[float],
                      ms_per_step: Sequence[float], params_m: Sequence[float], path: str | os.PathLike) -> Path:
    """mIoU (with ``miou_std`` error bars) against milliseconds per training step and against
    millions of parameters: one labelled point per model, labels moved apart where they would overlap."""
    fig, axes = _plots(2)
    for ax, cost, label in ((axes[0], ms_per_step, "ms per training step"), (axes[1], params_m, "parameters (M)")):
        for i in range(len(names)):
            ax.errorbar(cost[i], miou[i], yerr=miou_std[i], fmt="o", capsize=3, color=f"C{i % 10}")
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("mIoU (%)", fontsize=8)
        ax.ticklabel_format(useOffset=False, style="plain")
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_title("mIoU against training time", fontsize=9)
    axes[1].set_title("mIoU against size", fontsize=9)
    fig.draw_without_rendering()  # the layout fixed, so that data map to their final points
    for ax, cost in ((axes[0], ms_per_step), (axes[1], params_m)):
        for i, offset in enumerate(_label_offsets(ax, cost, miou, names, fontsize=7)):
            ax.annotate(names[i], (cost[i], miou[i]), textcoords="offset points", xytext=offset, fontsize=7,
                        arrowprops=None if offset == _LABEL_OFFSET else {"arrowstyle": "-", "lw": 0.4, "color": "0.5"})
    return _save(fig, path)


_LABEL_OFFSET = (5.0, 4.0)  # points right and up of a labelled point


def _label_offsets(ax, xs: Sequence[float], ys: Sequence[float], names: Sequence[str],
                   fontsize: float) -> list[tuple[float, float]]:
    """Offsets (points) of the labels ``names`` of the points ``(xs, ys)`` that keep them apart:
    from the highest point down, each label goes beside its point, or a line up or down, two, ...,
    whichever place first overlaps no label placed before (an estimate of the text's extent)."""
    at = ax.transData.transform(np.column_stack([xs, ys])) * 72 / ax.figure.dpi  # points
    line = 1.3 * fontsize
    placed: list[tuple[float, float, float]] = []  # left, bottom, width of each placed label
    offsets: list[tuple[float, float]] = [_LABEL_OFFSET] * len(names)
    for i in sorted(range(len(names)), key=lambda k: -at[k][1]):
        width = 0.65 * fontsize * len(names[i]) + 2
        for shift in (0, -1, 1, -2, 2, -3, 3, -4, 4, -5, 5):
            dx, dy = _LABEL_OFFSET[0], _LABEL_OFFSET[1] + shift * line
            left, bottom = at[i][0] + dx, at[i][1] + dy
            if all(abs(bottom - b) >= line or left + width <= lf or lf + w <= left for lf, b, w in placed):
                break
        placed.append((left, bottom, width))
        offsets[i] = (dx, dy)
    return offsets


def save_per_class_iou_delta(classes: Sequence[str], names: Sequence[str], deltas: Sequence[Sequence[float]],
                             reference: str, path: str | os.PathLike) -> Path:
    """A table of colours: a row per model, a column per class, each cell the model's IoU minus
    ``reference``'s (``deltas[i][c]``, points; red better, blue worse, on one symmetric scale;
    NaN, undefined: grey), written in the cell while the table is small enough to read. Without
    models besides the reference, a note says so. Rows stay distinguishable for any number of
    models (grouped bars run out of colours)."""
    rows = max(1, len(names))
    fig, (ax,) = _plots(1, min(4 * COMPARE_PLOT_PX, max(COMPARE_PLOT_PX, 48 * len(classes) + 240)),
                        max(COMPARE_PLOT_PX, 22 * rows + 140))
    values = np.asarray(deltas, dtype=float).reshape(len(names), len(classes))
    if names:
        from matplotlib import colormaps

        limit = (float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 0.0) or 1.0  # all equal: any scale
        cmap = colormaps["RdBu_r"].with_extremes(bad="0.85")
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=-limit, vmax=limit, aspect="auto",
                          interpolation="nearest")
        fig.colorbar(image, ax=ax, shrink=0.8).set_label(f"IoU − IoU of {reference} (points)", fontsize=8)
        if values.size <= 600:
            for (i, c), v in np.ndenumerate(values):
                if np.isfinite(v):
                    ax.text(c, i, f"{v:+.0f}" if round(v) else "0", ha="center", va="center", fontsize=6,
                            color="white" if abs(v) > 0.6 * limit else "black")
        ax.set_yticks(range(len(names)), names, fontsize=7)
    else:
        ax.text(0.5, 0.5, f"only {reference}: nothing to compare", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    step = math.ceil(len(classes) / MAX_TICK_LABELS)
    ticks = np.arange(len(classes))[::step]
    ax.set_xticks(ticks, [classes[i] for i in ticks], rotation=90 if len(classes) > 12 else 0, fontsize=7)
    ax.set_title(f"per-class IoU difference to {reference} (points, mean over seeds)", fontsize=9)
    return _save(fig, path)
