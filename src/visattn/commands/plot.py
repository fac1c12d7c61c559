"""``visattn plot RUN_DIR``: training curves (loss, validation mIoU, learning rate) as a PNG."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN_DIR", help="a training run directory (its metrics.jsonl)")
    parser.add_argument("--output", help="PNG file (default RUN_DIR/curves.png)")


def run(args: argparse.Namespace) -> int:
    from visattn.viz import plot_metrics

    try:
        out = plot_metrics(args.run, args.output or Path(args.run) / "curves.png")
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"visattn plot: error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0
