"""``visattn predict``: images (files, folders, globs) -> colour masks with the dataset palette and overlays,
or label files for benchmark servers.

For each input ``name.ext`` it writes ``name_mask.png`` (a palette PNG: pixel values are class
ids, shown in the dataset's colours), ``name_overlay.png`` (the colours blended over the image) and
``name_legend.png`` (image, mask, overlay and the names of the classes found); with ``--format``
one file in that format instead (:mod:`visattn.engine.predictions`: ``labelids`` writes
``name_labelIds.png`` in the dataset's own label ids, e.g. Cityscapes labelIds).
Classifiers print their top-5 classes instead.

The output folder mirrors the inputs' tree below their common root (a folder itself, a file's
folder, a glob's fixed leading folders), so ``a/x.png`` and ``b/x.png`` give ``a/x_mask.png`` and
``b/x_mask.png``; images of one folder that share a stem (``x.png``, ``x.jpg``) keep their extension
(``x.png_mask.png``). An image that cannot be read or segmented is skipped and reported at the end.
Exit status: 0 all written, 1 some images skipped, 2 nothing to do (an input names no image, bad
run or config).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

from visattn.commands.common import add_run_arguments, add_segment_arguments, segment_kwargs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    add_run_arguments(parser)
    add_segment_arguments(parser)
    parser.add_argument("--output", default="predictions", help="output folder (default ./predictions)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the mask colours")
    add_format_argument(parser, "(default: the colour mask, overlay and legend)")


def add_format_argument(parser: argparse.ArgumentParser, default_text: str, default: str | None = None) -> None:
    """``--format``, the keys of :data:`visattn.engine.predictions.FORMATS` (spelt out here so that
    ``--help`` does not import torch)."""
    parser.add_argument("--format", choices=("labelids", "trainids", "color", "overlay"), default=default,
                        help="one file per image: labelids = the dataset's own label ids (Cityscapes labelIds, "
                             "ADE20K with 0 = other, VOC palette PNGs), trainids = the class indices, color = the "
                             f"dataset's colours, overlay = those colours over the image {default_text}")


def _glob_root(pattern: str) -> Path:
    """The folder a glob pattern searches: its leading parts without wildcards."""
    parts = Path(pattern).parts[:-1]
    fixed = []
    for part in parts:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _expand(inputs: list[str], output: Path) -> list[tuple[Path, Path]]:
    """``(image, root)`` for each image the inputs name, in order, without repeats and without the
    files under ``output``. An input that names no image is a ``FileNotFoundError``."""
    from visattn.data.segmentation import IMAGE_EXTENSIONS

    def is_image(p: Path) -> bool:
        return p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not _inside(p, output)

    found: dict[Path, tuple[Path, Path]] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files, root = sorted(p for p in path.rglob("*") if is_image(p)), path
            if not files:
                raise FileNotFoundError(f"no images in folder {item!r} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
        elif path.is_file():
            files, root = [path], path.parent
        else:
            files, root = sorted(p for p in map(Path, glob.glob(item, recursive=True)) if is_image(p)), _glob_root(item)
            if not files:
                raise FileNotFoundError(f"no image matches {item!r}")
        for file in files:
            found.setdefault(Path(os.path.abspath(file)), (file, root))
    return list(found.values())


def _inside(path: Path, folder: Path) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from visattn.data import image_to_tensor, read_image
    from visattn.engine.config import ConfigError
    from visattn.engine.distributed import resolve_device
    from visattn.engine.inference import segment
    from visattn.engine.predictions import PredictionWriter, output_names
    from visattn.engine.run_dir import load_trained

    out_dir = Path(args.output)
    try:
        images = _expand(args.inputs, out_dir)
        device = resolve_device(args.device)
        cfg, model = load_trained(args.run, args.config, args.weights, args.overrides, device, args.trust_code)
        writer = PredictionWriter(cfg.data, args.format, args.alpha)
        if args.format is not None and cfg.task != "segmentation":
            raise ValueError(f"--format applies to segmentation models; {cfg.model.name!r} is a classifier")
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"visattn predict: error: {err}", file=sys.stderr)
        return 2
    classes = writer.classes
    skipped: list[str] = []
    for (path, _), name in zip(images, output_names(images)):
        try:
            rgb = np.array(read_image(path))
            x = image_to_tensor(rgb, cfg.data.mean, cfg.data.std)
            with torch.no_grad():
                if cfg.task != "segmentation":
                    p = model(x.to(device)).softmax(1)[0].cpu()
                    top = p.topk(min(5, len(classes)))
                    print(f"{path}: " + ", ".join(f"{classes[i]} {100 * v:.1f}%" for v, i in zip(top.values, top.indices)))
                    continue
                pred = segment(model, x.to(device), len(classes), **segment_kwargs(cfg, args)).argmax(1)[0].cpu().numpy()
            print(f"{path} -> {writer.write(out_dir / name, pred, rgb)}")
        except (ValueError, OSError, RuntimeError) as err:
            skipped.append(f"{path}: {err}")
    if skipped:
        print(f"visattn predict: skipped {len(skipped)} of {len(images)} images:", *skipped, sep="\n  ", file=sys.stderr)
        return 1
    return 0
