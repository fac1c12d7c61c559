"""``visattn predict``: images and videos (files, folders, globs, lists) -> colour masks with the
dataset palette and overlays, or label files for benchmark servers.

For each input image ``name.ext`` it writes ``name_mask.png`` (a palette PNG: pixel values are class
ids, shown in the dataset's colours), ``name_overlay.png`` (the colours blended over the image) and
``name_legend.png`` (image, mask, overlay and the names of the classes found; without matplotlib,
the ``viz`` extra, there are no legends, which is said once); with ``--format``
one file in that format instead (:mod:`visattn.engine.predictions`: ``labelids`` writes
``name_labelIds.png`` in the dataset's own label ids, e.g. Cityscapes labelIds).
Classifiers print their top-5 classes instead.

A video ``clip.mp4`` (:data:`visattn.data.video.VIDEO_FORMATS`; needs the ``video`` extra) gives
``clip_overlay.mp4``: every frame with the colours over it, at the same size and frame rate; with
``--frames`` also each frame's prediction as ``clip/000000_mask.png``, ... (or in ``--format``).

``@LIST`` names a text file of inputs, one file, folder or glob per line (blank lines and lines
starting with ``#`` skipped; relative paths are relative to the list's folder).

All inputs are listed first (for the output names and the progress bar's total); images are
decoded as they are needed, read ahead by ``--workers`` processes, and segmented in batches of up to
``--batch-size`` consecutive images of one size (a batch's predictions equal those of its images
one at a time); so are a video's frames. ``--amp bf16|fp16`` runs the model in mixed precision.

The output folder mirrors the inputs' tree below their common root (a folder itself, a file's
folder, a glob's fixed leading folders), so ``a/x.png`` and ``b/x.png`` give ``a/x_mask.png`` and
``b/x_mask.png``; images of one folder whose names would be the same keep their extension
(``x.png``, ``x.jpg``, ``x.png.png`` -> ``x.png_mask.png``, ``x.jpg_mask.png``, ``x.png.png_mask.png``),
so no output is written twice. Each image's line names every file written for it. Images are read
as viewers show them (EXIF orientation applied); an alpha channel dropped or 16 bits scaled to 8
is said once. An image or video that cannot be read or segmented is skipped and reported at
the end. Exit status (:mod:`visattn.cli`): 0 all written, 1 some skipped, 2 nothing to do (an input
names no image or video, bad run, config or device).

The inputs are found by :func:`visattn.data.inputs.find_inputs`; the predictions are
:class:`visattn.engine.predictor.Predictor`'s (``visattn.Predictor``, the same from Python).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm.auto import tqdm

from visattn._extras import require
from visattn.cli import EXIT_SOME_FAILED
from visattn.commands.common import (add_amp_argument, add_output_dir_argument, add_run_arguments,
                                     add_segment_arguments, int_at_least, resolve_inference_device, segment_kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image or video files, folders, glob patterns, or @LIST: a text "
                        "file naming one of these per line (relative to the list's folder)")
    add_run_arguments(parser)
    add_amp_argument(parser)
    add_segment_arguments(parser)
    parser.add_argument("--batch-size", type=int_at_least(1), default=8, metavar="N",
                        help="images (or video frames) of one size segmented together (default 8)")
    parser.add_argument("--workers", type=int_at_least(0), metavar="N",
                        help="processes reading images ahead (default data.workers; 0: read in this process)")
    add_output_dir_argument(parser, "the folder to write into (default ./predictions)", default="predictions")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the mask colours")
    parser.add_argument("--frames", action="store_true", help="also write each video frame's prediction as "
                        "VIDEO/000000_mask.png, ... (or as --format says)")
    add_format_argument(parser, "(default: the colour mask, overlay and legend)")


def add_format_argument(parser: argparse.ArgumentParser, default_text: str, default: str | None = None) -> None:
    """``--format``, the keys of :data:`visattn.engine.predictions.FORMATS` (spelt out here so that
    ``--help`` does not import torch)."""
    parser.add_argument("--format", choices=("labelids", "trainids", "mask", "color", "overlay"), default=default,
                        help="one file per image: labelids = the dataset's own label ids (Cityscapes labelIds, "
                             "ADE20K with 0 = other, VOC palette PNGs), trainids = the class indices, mask = the "
                             "class indices in a palette PNG with the dataset's colours, color = the dataset's "
                             f"colours (RGB), overlay = those colours over the image {default_text}")


def run(args: argparse.Namespace) -> int:

    from visattn.data.inputs import find_inputs
    from visattn.data.segmentation import say_once
    from visattn.data.video import is_video
    from visattn.engine.predictor import Predictor
    from visattn.engine.predictions import PredictionWriter, output_names
    from visattn.trained import load_trained

    out_dir = Path(args.output_dir)
    sources = find_inputs(args.inputs, exclude=out_dir)
    device, amp = resolve_inference_device(args)
    cfg, model = load_trained(args.run, args.config, args.weights, args.overrides, device, args.trust_code)
    writer = PredictionWriter(cfg.data, args.format, args.alpha)
    has_videos = any(is_video(path) for path, _ in sources)
    if cfg.task != "segmentation" and args.format is not None:
        raise ValueError(f"--format applies to segmentation models; {cfg.model.name!r} is a classifier")
    if cfg.task != "segmentation" and has_videos:
        raise ValueError(f"videos need a segmentation model; {cfg.model.name!r} is a classifier")
    if has_videos:
        require("av", extra="video")
    options = segment_kwargs(cfg, args) if cfg.task == "segmentation" else {}
    predictor = Predictor(cfg, model, device, amp, **options)
    frame_writer = PredictionWriter(cfg.data, args.format or "mask") if args.frames else None
    files = [(path, out_dir / name) for (path, _), name in zip(sources, output_names(sources))]
    workers = cfg.data.workers if args.workers is None else args.workers
    skipped: list[str] = []
    if writer.no_legends is not None and cfg.task == "segmentation":
        print(f"visattn predict: masks and overlays without legends ({writer.no_legends})", file=sys.stderr)
    with tqdm(total=len(files), desc="predict", unit="file", file=sys.stderr) as bar:
        for result in predictor.predict_files(files, writer, frame_writer, args.batch_size, workers, progress=True):
            for note in result.notes:
                say_once(note, result.path)
            if result.error is not None:
                skipped.append(f"{result.path}: {result.error}")
            else:
                bar.write(_report(result))
            bar.update()
    if skipped:
        kind = "images and videos" if has_videos else "images"
        print(f"visattn predict: skipped {len(skipped)} of {len(sources)} {kind}:", *skipped, sep="\n  ",
              file=sys.stderr)
        return EXIT_SOME_FAILED
    return 0


def _report(result) -> str:
    """The line shown for a file predicted (:class:`visattn.engine.predictor.FilePrediction`)."""
    if result.top is not None:
        return f"{result.path}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, p in result.top)
    if result.frames is not None:
        frames = f"; each one's prediction under {result.frames_folder}" if result.frames_folder is not None else ""
        return f"{result.path} -> {result.written} ({result.frames} frames{frames})"
    return f"{result.path} -> {', '.join(map(str, result.files))}"
