"""``visattn eval``: per-class IoU, accuracy and Dice, mIoU, mAcc, mDice, pixel accuracy and the
confusion matrix (or top-1/top-5) of trained weights (see :mod:`visattn.engine.metrics`).

Single or multi-scale (+ flip), whole image or sliding window, optionally in mixed precision
(``--amp bf16|fp16``); prints the tables, writes JSON and, for segmentation, the row-normalised
confusion matrix as ``confusion_<split>.png`` next to the JSON (when matplotlib is installed).
``--save-predictions DIR`` also writes each prediction, named after the dataset's image files (by
default in the dataset's own label ids, e.g. Cityscapes ``*_labelIds.png`` for the benchmark server;
see :mod:`visattn.engine.predictions`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

from visattn._extras import MissingExtraError

from visattn.commands.common import (add_amp_argument, add_output_file_argument, add_run_arguments,
                                     add_segment_arguments, int_at_least, resolve_inference_device,
                                     segment_kwargs)
from visattn.commands.predict import add_format_argument
from visattn.filenames import path_component


MAX_PRINTED_CONFUSION = 20  # more classes than this: the confusion matrix is in the JSON and the PNG only


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    add_amp_argument(parser)
    add_segment_arguments(parser)
    parser.add_argument("--split", help="dataset split (default data.val_split)")
    parser.add_argument("--batch-size", type=int_at_least(1), metavar="N", help="images per forward pass "
                        "(default eval.batch_size)")
    add_output_file_argument(parser, "the JSON file to write (default RUN_DIR/eval_<split>.json, or eval_<split>.json)")
    parser.add_argument("--save-predictions", metavar="DIR", help="also write each prediction under DIR, mirroring "
                        "the dataset's image tree (segmentation)")
    add_format_argument(parser, "with --save-predictions (default labelids)", default="labelids")


def run(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from visattn.data import build_dataset, classes_and_palette
    from visattn.data.inputs import collate_same_size, same_size_runs
    from visattn.engine.metrics import evaluate, format_confusion_matrix, format_table
    from visattn.engine.predictions import PredictionWriter, dataset_names, evaluate_and_save
    from visattn.trained import load_trained
    from visattn.weights import atomic_write

    device, amp = resolve_inference_device(args)
    cfg, model = load_trained(args.run, args.config, args.weights, args.overrides, device, args.trust_code)
    # the split names the output files: a run's config.yaml must not point them elsewhere
    split = path_component(args.split, "--split") if args.split else path_component(
        cfg.data.val_split, f"data.val_split of {_config_source(args)}")
    dataset = build_dataset(cfg.data, split, train=False)
    classes, _ = classes_and_palette(cfg.data)
    loader = DataLoader(dataset, batch_size=args.batch_size or cfg.eval.batch_size, num_workers=cfg.data.workers,
                        collate_fn=collate_same_size)
    batches = same_size_runs(tqdm(loader, desc=f"eval {split}"))  # one forward per image size
    kwargs = segment_kwargs(cfg, args) if cfg.task == "segmentation" else {}
    if args.save_predictions is None:
        result = evaluate(model, batches, len(classes), cfg.task, device, amp, **kwargs)
    elif cfg.task != "segmentation":
        raise ValueError(f"--save-predictions applies to segmentation models; {cfg.model.name!r} is a classifier")
    else:
        writer = PredictionWriter(cfg.data, args.format)
        result = evaluate_and_save(model, batches, len(classes), dataset_names(dataset), writer,
                                   args.save_predictions, device, cfg.data.mean, cfg.data.std, amp, **kwargs)
    print(format_table(result, classes))
    if "confusion_matrix" in result and len(classes) <= MAX_PRINTED_CONFUSION:
        print(format_confusion_matrix(result["confusion_matrix"], classes))
    run_is_dir = args.run is not None and Path(args.run).is_dir()  # not a hf-hub: id
    out = Path(args.output) if args.output else (Path(args.run) if run_is_dir else Path(".")) / f"eval_{split}.json"
    record = {"split": split, "dataset": cfg.data.dataset, "model": dataclasses.asdict(cfg.model), "amp": args.amp,
              **kwargs, **result}
    for key in ("per_class_iou", "per_class_acc", "per_class_dice"):
        if key in result:
            record[key] = dict(zip(classes, result[key]))
    if "confusion_matrix" in result:
        record["classes"] = list(classes)  # names the rows (ground truth) and columns (prediction)
    # atomically: a link at ``out`` is replaced, never followed
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))
    print(f"wrote {out}" + (f" and the predictions under {args.save_predictions}" if args.save_predictions else ""))
    if "confusion_matrix" in result:
        _save_confusion_picture(result["confusion_matrix"], classes, out.parent / f"confusion_{split}.png", split)
    return 0


def _config_source(args: argparse.Namespace) -> str:
    """Where the config came from, for messages: the file, or the run's."""
    if args.config:
        return str(args.config)
    return str(Path(args.run) / "config.yaml") if args.run else "the config"


def _save_confusion_picture(matrix, classes, path: Path, split: str) -> None:
    from visattn.viz import save_confusion_matrix

    if path.is_symlink():  # replaced, never followed (the picture writer would write through it)
        path.unlink()
    try:
        save_confusion_matrix(matrix, classes, path, title=f"{split} confusion matrix")
    except MissingExtraError as err:
        print(f"visattn eval: no {path.name} ({err})", file=sys.stderr)
        return
    print(f"wrote {path}")
