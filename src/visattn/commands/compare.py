"""``visattn compare``: train segmentors and attention heads under one recipe and several seeds,
measure their cost side by side, and report which attention helps on this data (:mod:`visattn.comparison`).

    visattn compare --config configs/digits_danet.yaml --models fcn danet ccnet --attentions bam sge psa --seeds 3

Re-running the same command continues: complete runs are skipped, interrupted ones resumed. Exit
status (:mod:`visattn.cli`): 1 when some runs failed (each named with its log), 130 when interrupted.
"""
from __future__ import annotations

import argparse
import sys

from visattn.cli import EXIT_SOME_FAILED
from visattn.commands.common import add_output_dir_argument, add_set_argument, int_at_least


class _MoreOverrides(argparse.Action):
    """KEY=VALUE words after one ``--set``'s value: more overrides, in their place (``--set a=1 b=2``)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        namespace.overrides = [*namespace.overrides, *values]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe every entry is trained with (default: the digit-scenes demo)")
    parser.add_argument("--models", nargs="+", default=[], metavar="NAME",
                        help="registered segmentors (fcn danet ccnet flanet nlnet ...); the first entry is the reference")
    parser.add_argument("--attentions", nargs="+", default=[], metavar="NAME",
                        help="attention modules, each as the head of attnet (bam sge psa ...)")
    parser.add_argument("--seeds", type=int_at_least(1), default=3, metavar="N",
                        help="seeds 0 .. N-1 per entry (default 3)")
    add_set_argument(parser, "override a key of the recipe (repeatable; train.seed is each run's own)")
    parser.add_argument("overrides_positional", nargs="*", action=_MoreOverrides, help=argparse.SUPPRESS)
    add_output_dir_argument(parser, "the comparison directory (default: run.root/compare-<config>-<recipe hash>)")
    parser.add_argument("--jobs", type=int_at_least(1), default=1, metavar="N",
                        help="runs trained at once, in subprocesses (a GPU each, or cores / N threads each)")


def run(args: argparse.Namespace) -> int:
    from visattn.comparison import RunFailedError, compare, format_table

    try:
        report = compare(args.config, args.models, args.attentions, args.seeds, args.overrides, args.output_dir,
                         args.jobs)
    except KeyboardInterrupt:
        raise KeyboardInterrupt("run the same command again to continue") from None
    except RunFailedError as err:  # the complete runs are kept; the same command again retries the others
        print(f"visattn compare: {err}", file=sys.stderr)
        return EXIT_SOME_FAILED
    print(format_table(report))
    return 0
