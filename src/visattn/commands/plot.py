"""``visattn plot --run RUN_DIR``: training curves (loss, validation mIoU, learning rate) as a PNG."""
from __future__ import annotations

import argparse
from pathlib import Path

from visattn.commands.common import add_output_file_argument, add_positional_run_alias, add_run_argument, given_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser, "a training run directory (its metrics.jsonl)")
    add_positional_run_alias(parser)
    add_output_file_argument(parser, "the PNG file to write (default RUN_DIR/curves.png)")


def run(args: argparse.Namespace) -> int:
    from visattn.viz import plot_metrics

    run = given_run(args)
    print(plot_metrics(run, args.output or Path(run) / "curves.png"))
    return 0
