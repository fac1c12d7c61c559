"""``visattn explain``: draw where a segmentor's attention modules look on an image.

Runs the model once on the image, captures the input of each registered attention module (every
one draws the maps its class declares in ``maps_drawn`` and ``query_maps_drawn``) with a forward
hook and renders its ``attention_maps`` over the image: one PNG per map in ``--output-dir`` (see
:func:`visattn.viz.explain`). The model is a training run's (``--run``, or ``--config`` with
``--weights``), or a registered segmentor named by ``--model`` with ``--weights`` or random
(seeded) weights, which show the mechanics: the cross of one criss-cross pass, the whole image
reached by two. (SGE is initialised to a constant gate, ``sigmoid(1)``: its picture is flat until
it is trained.)
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from visattn.commands.common import (add_hidden_alias, add_output_dir_argument, add_run_arguments,
                                     resolve_inference_device)


def _point(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROW,COL in image pixels, got {text!r}") from None
    return h, w


# Without a run or a config (None on the command line, so that giving one with a run is an error).
_MODEL, _ENCODER, _CLASSES = "danet", "resnet18", 11


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image file")
    add_run_arguments(parser)
    parser.add_argument("--model", help=f"registered segmentor without --run or --config (default {_MODEL}; "
                                        "--weights or random weights)")
    parser.add_argument("--attention", help="attention module of the attnet head (bam, sge, psa, ...)")
    parser.add_argument("--encoder", help=f"timm encoder of --model (default {_ENCODER})")
    parser.add_argument("--num-classes", type=int, help=f"classes of --model (default {_CLASSES}: digits)")
    parser.add_argument("--points", type=_point, nargs="+", default=[], metavar="ROW,COL",
                        help="query pixels (default: the image centre)")
    parser.add_argument("--module-paths", nargs="+", default=[], metavar="PATH",
                        help="attention modules to draw, by their path in the model or a pattern (e.g. head.sa "
                             "'blocks.*'; default all)")
    add_hidden_alias(parser, "--modules", "module_paths", nargs="+")
    add_output_dir_argument(parser, "the folder to write into (default ./explain)", default="explain")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random numbers: here, the random weights")


def run(args: argparse.Namespace) -> int:

    from visattn.data import IMAGENET_MEAN, IMAGENET_STD, read_image
    from visattn.viz import explain

    device, _ = resolve_inference_device(args)
    model_options = {"--model": args.model, "--attention": args.attention, "--encoder": args.encoder,
                     "--num-classes": args.num_classes}
    if args.run is not None or args.config is not None:
        given = [flag for flag, value in model_options.items() if value is not None]
        if given:
            source = "a run directory comes from its config.yaml" if args.run else "--config comes from that file"
            raise ValueError(f"{' '.join(given)}: the model of {source}")
        from visattn.trained import load_trained

        cfg, model = load_trained(args.run, args.config, args.weights, args.overrides, device, args.trust_code)
        mean, std = cfg.data.mean, cfg.data.std
    else:
        model, mean, std = _registered_model(args).to(device).eval(), IMAGENET_MEAN, IMAGENET_STD
    image = np.array(read_image(args.image))
    for path in explain(model, image, args.output_dir, args.points, mean, std, prefix=f"{Path(args.image).stem}_",
                        only=args.module_paths):
        print(path)
    return 0


def _registered_model(args: argparse.Namespace):
    """``--model`` (+ ``--attention``, ``--encoder``, ``--num-classes``) with ``--weights`` or seeded random weights."""
    import torch

    from visattn.models import create_model
    from visattn.weights import load_weights

    if args.overrides:
        raise ValueError("--set configures a run or a config; give --run or --config")
    kwargs = {"encoder": args.encoder or _ENCODER}
    if args.attention:
        kwargs["attention"] = args.attention
    torch.manual_seed(args.seed)
    model = create_model(args.model or _MODEL, num_classes=args.num_classes or _CLASSES, **kwargs)
    if args.weights is not None:
        load_weights(model, args.weights)
    return model
