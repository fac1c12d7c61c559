"""``visattn plot --run RUN_DIR``: training curves (loss, validation mIoU, learning rate) as a PNG."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", metavar="RUN_DIR", help="a training run directory (its metrics.jsonl)")
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="the same as --run")
    parser.add_argument("--output", help="PNG file (default RUN_DIR/curves.png)")


def run(args: argparse.Namespace) -> int:
    from visattn.viz import plot_metrics

    if (args.run is None) == (args.run_dir is None):
        print("visattn plot: error: give the run directory once: --run RUN_DIR", file=sys.stderr)
        return 2
    run = args.run or args.run_dir
    try:
        out = plot_metrics(run, args.output or Path(run) / "curves.png")
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"visattn plot: error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0
