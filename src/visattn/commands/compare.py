"""``visattn compare``: train segmentors and attention heads under one recipe and several seeds,
measure their cost side by side, and report which attention helps on this data (:mod:`visattn.comparison`).

    visattn compare --config configs/digits_danet.yaml --models fcn danet ccnet --attentions bam sge psa --seeds 3

Re-running the same command continues: complete runs are skipped, interrupted ones resumed. Exit
status (:mod:`visattn.cli`): 1 when some runs failed (each named with its log), 130 when interrupted.
With ``--emit-jobs FILE`` nothing is trained: FILE gets one ``visattn train`` command per missing run,
for a batch system; the same command without it then collects the finished runs and reports.
"""
from __future__ import annotations

import argparse
import shlex
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
    parser.add_argument("--baselines", nargs="+", default=[], metavar="NAME",
                        help="entries to difference every entry against too (a ΔmIoU column each; e.g. pspnet "
                             "deeplabv3); re-running a finished comparison with other baselines only reports")
    parser.add_argument("--seeds", type=int_at_least(1), default=3, metavar="N",
                        help="seeds 0 .. N-1 per entry (default 3)")
    add_set_argument(parser, "override a key of the recipe (repeatable; train.seed is each run's own)")
    parser.add_argument("overrides_positional", nargs="*", action=_MoreOverrides, help=argparse.SUPPRESS)
    add_output_dir_argument(parser, "the comparison directory (default: run.root/compare-<config>-<recipe hash>)")
    parser.add_argument("--jobs", type=int_at_least(1), default=1, metavar="N",
                        help="runs trained at once, in subprocesses (a GPU each, or cores / N threads each)")
    parser.add_argument("--emit-jobs", metavar="FILE",
                        help="train nothing: write one `visattn train` command per missing run to FILE (a line per "
                             "batch job); the same command without --emit-jobs then collects the runs and reports")


def run(args: argparse.Namespace) -> int:
    from visattn.comparison import RunFailedError, compare, emit_jobs, format_table

    if args.emit_jobs is not None:
        lines = emit_jobs(args.emit_jobs, args.config, args.models, args.attentions, args.seeds, args.overrides,
                          args.output_dir, args.baselines)
        print(_jobs_advice(len(lines), args.emit_jobs))
        return 0
    try:
        report = compare(args.config, args.models, args.attentions, args.seeds, args.overrides, args.output_dir,
                         args.jobs, baselines=args.baselines)
    except KeyboardInterrupt:
        raise KeyboardInterrupt("run the same command again to continue") from None
    except RunFailedError as err:  # the complete runs are kept; the same command again retries the others
        print(f"visattn compare: {err}", file=sys.stderr)
        return EXIT_SOME_FAILED
    print(format_table(report))
    return 0


def _jobs_advice(count: int, file: str) -> str:
    """The line that says how many jobs ``file`` holds and how to run them."""
    quoted = shlex.quote(file)
    if count == 0:
        return f"no run is missing ({quoted} is empty): run the same command without --emit-jobs for the report"
    return (f"{count} training job(s) in {quoted}, one `visattn train` per line: run each, e.g. "
            f"`sbatch --array=1-{count}` with a script running line $SLURM_ARRAY_TASK_ID "
            f"(bash -c \"$(sed -n ${{SLURM_ARRAY_TASK_ID}}p {quoted})\"); then the same command without "
            "--emit-jobs collects the runs and reports")
