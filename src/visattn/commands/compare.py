"""``visattn compare``: train segmentors and attention heads under one recipe and several seeds,
measure their cost side by side, and report which attention helps on this data (:mod:`visattn.comparison`).

    visattn compare --config configs/digits_danet.yaml --models fcn danet ccnet --attentions bam sge psa --seeds 3

Re-running the same command continues: complete runs are skipped, interrupted ones resumed.
"""
from __future__ import annotations

import argparse
import sys


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe every entry is trained with (default: the digit-scenes demo)")
    parser.add_argument("--models", nargs="+", default=[], metavar="NAME",
                        help="registered segmentors (fcn danet ccnet flanet nlnet ...); the first entry is the reference")
    parser.add_argument("--attentions", nargs="+", default=[], metavar="NAME",
                        help="attention modules, each as the head of attnet (bam sge psa ...)")
    parser.add_argument("--seeds", type=_positive, default=3, help="seeds 0 .. N-1 per entry (default 3)")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override keys of the recipe (repeatable; train.seed is each run's own)")
    parser.add_argument("--output", metavar="DIR",
                        help="comparison directory (default: run.root/compare-<config>-<recipe hash>)")
    parser.add_argument("--jobs", type=_positive, default=1,
                        help="runs trained at once, in subprocesses (a GPU each, or cores / N threads each)")


def run(args: argparse.Namespace) -> int:
    from visattn.comparison import RunFailedError, compare, format_table
    from visattn.engine.config import ConfigError

    try:
        report = compare(args.config, args.models, args.attentions, args.seeds, args.overrides, args.output, args.jobs)
    except (ConfigError, FileExistsError, FileNotFoundError, ValueError, RunFailedError) as err:
        print(f"visattn compare: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("visattn compare: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    print(format_table(report))
    return 0
