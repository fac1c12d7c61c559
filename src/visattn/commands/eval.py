"""``visattn eval``: mIoU, per-class IoU and pixel accuracy (or top-1/top-5) of trained weights.

Single or multi-scale (+ flip), whole image or sliding window; prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", metavar="RUN_DIR", help="a training run directory (its config.yaml and best weights)")
    parser.add_argument("--config", help="YAML recipe (with --weights, instead of --run)")
    parser.add_argument("--weights", help="weights file (.safetensors or torch.save); default: the run's best")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable)")
    parser.add_argument("--scales", type=float, nargs="+", help="test scales, e.g. 0.75 1 1.25 1.5 (default eval.scales)")
    parser.add_argument("--flip", action="store_true", help="average with horizontally flipped predictions")
    parser.add_argument("--mode", choices=("whole", "slide"), help="whole image or sliding window (default eval.mode)")
    parser.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"), help="sliding-window size")
    parser.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), help="sliding-window stride")
    parser.add_argument("--device", default="auto")


def segment_kwargs(cfg: dict, args: argparse.Namespace) -> dict:
    e = cfg["eval"]
    return {"scales": args.scales or e["scales"], "flip": args.flip or e["flip"], "mode": args.mode or e["mode"],
            "crop": args.crop_size or e["crop_size"] or cfg["data"]["crop_size"], "stride": args.stride or e["stride"]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_inference_arguments(parser)
    parser.add_argument("--split", help="dataset split (default data.val_split)")
    parser.add_argument("--batch-size", type=int, help="default eval.batch_size")
    parser.add_argument("--output", help="JSON file (default RUN_DIR/eval_<split>.json, or eval_<split>.json)")


def run(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from visattn.data import build_dataset, classes_and_palette
    from visattn.engine.config import ConfigError
    from visattn.engine.distributed import resolve_device
    from visattn.engine.evaluate import evaluate, format_table
    from visattn.engine.inference import load_trained

    try:
        device = resolve_device(args.device)
        cfg, model = load_trained(args.run, args.config, args.weights, args.overrides, device)
        split = args.split or cfg["data"]["val_split"]
        dataset = build_dataset(cfg["data"], split, train=False)
        classes, _ = classes_and_palette(cfg["data"])
        loader = DataLoader(dataset, batch_size=args.batch_size or cfg["eval"]["batch_size"],
                            num_workers=cfg["data"]["workers"])
        kwargs = segment_kwargs(cfg, args) if cfg["task"] == "segmentation" else {}
        result = evaluate(model, tqdm(loader, desc=f"eval {split}"), len(classes), cfg["task"], device, **kwargs)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"visattn eval: error: {err}", file=sys.stderr)
        return 2
    print(format_table(result, classes))
    out = Path(args.output) if args.output else (Path(args.run) if args.run else Path(".")) / f"eval_{split}.json"
    record = {"split": split, "dataset": cfg["data"]["dataset"], "model": cfg["model"], **kwargs, **result}
    if "per_class_iou" in result:
        record["per_class_iou"] = dict(zip(classes, result["per_class_iou"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")
    return 0
