"""``visattn predict``: images (files, folders, globs) -> colour masks with the dataset palette and overlays.

For each input ``name.ext`` it writes ``name_mask.png`` (a palette PNG: pixel values are class
ids, shown in the dataset's colours), ``name_overlay.png`` (the colours blended over the image) and
``name_legend.png`` (image, mask, overlay and the names of the classes found).
Classifiers print their top-5 classes instead.
"""
from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

from visattn.commands.common import add_run_arguments, add_segment_arguments, segment_kwargs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    add_run_arguments(parser)
    add_segment_arguments(parser)
    parser.add_argument("--output", default="predictions", help="output folder (default ./predictions)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the mask colours")


def _expand(inputs: list[str]) -> list[Path]:
    from visattn.data.segmentation import IMAGE_EXTENSIONS

    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            files.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).suffix.lower() in IMAGE_EXTENSIONS)
            if not matches:
                raise FileNotFoundError(f"no image matches {item!r}")
            files += matches
    return files


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from visattn.data import classes_and_palette, colorize, image_to_tensor, read_image
    from visattn.engine.config import ConfigError
    from visattn.engine.distributed import resolve_device
    from visattn.engine.inference import segment
    from visattn.engine.run_dir import load_trained
    from visattn.viz import save_prediction

    try:
        files = _expand(args.inputs)
        device = resolve_device(args.device)
        cfg, model = load_trained(args.run, args.config, args.weights, args.overrides, device)
        classes, palette = classes_and_palette(cfg.data)
        out_dir = Path(args.output)
        out_dir.mkdir(parents=True, exist_ok=True)
        flat_palette = [c for rgb in palette for c in rgb]
        for path in files:
            rgb = np.array(read_image(path))
            x = image_to_tensor(rgb, cfg.data.mean, cfg.data.std)
            with torch.no_grad():
                if cfg.task != "segmentation":
                    p = model(x.to(device)).softmax(1)[0].cpu()
                    top = p.topk(min(5, len(classes)))
                    print(f"{path}: " + ", ".join(f"{classes[i]} {100 * v:.1f}%" for v, i in zip(top.values, top.indices)))
                    continue
                pred = segment(model, x.to(device), len(classes), **segment_kwargs(cfg, args)).argmax(1)[0].cpu().numpy()
            mask = Image.fromarray(pred.astype(np.uint8), mode="P")
            mask.putpalette(flat_palette)
            mask.save(out_dir / f"{path.stem}_mask.png")
            overlay = (1 - args.alpha) * rgb + args.alpha * colorize(pred, palette)
            Image.fromarray(overlay.round().astype(np.uint8)).save(out_dir / f"{path.stem}_overlay.png")
            save_prediction(rgb, pred, classes, palette, out_dir / f"{path.stem}_legend.png", args.alpha)
            print(f"{path} -> {out_dir / (path.stem + '_mask.png')}")
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"visattn predict: error: {err}", file=sys.stderr)
        return 2
    return 0
