"""``visattn bench``: time and peak memory of attention modules: visattn against the naive published
code, ``torch.compile`` of it, and (PAM, Non-local) ``F.scaled_dot_product_attention``.

Runs :mod:`visattn.benchmark` (the code behind ``benchmarks/run.py`` and docs/benchmarks.md) for
the chosen modules at one size and prints the same table; ``--output`` writes the full report as JSON.
``--dtype`` is the dtype the module, its weights and its input are cast to (not the autocast of
``--amp`` in eval and predict).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from visattn.commands.common import add_device_argument, add_hidden_alias, add_output_file_argument, int_at_least


def _case_name(name: str) -> str:
    """A module or network name of :mod:`visattn.benchmark`, imported only to check one (it brings torch)."""
    from visattn.benchmark import MODULES, NETWORKS

    if name not in (*MODULES, *NETWORKS):
        raise argparse.ArgumentTypeError(f"{name!r} is none of {', '.join((*MODULES, *NETWORKS))}")
    return name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--modules", nargs="+", type=_case_name, metavar="NAME",
                        help="attention modules or networks (an unknown name lists them); default: all modules")
    parser.add_argument("--size", type=int, nargs=2, default=(64, 64), metavar=("H", "W"),
                        help="size of the random input: the feature map (the image for networks); default 64 64")
    parser.add_argument("--channels", type=int, default=512, help="channels C of the random input (default 512)")
    parser.add_argument("--batch-size", type=int_at_least(1), default=1, metavar="N",
                        help="random inputs per forward pass (default 1; BAM training needs >= 2)")
    add_hidden_alias(parser, "--batch", "batch_size", type=int_at_least(1))
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="the dtype the module and its input are cast to (not autocast; float16 on CUDA only; "
                             "default float32)")
    parser.add_argument("--train", action="store_true", help="time a training step (forward + backward)")
    parser.add_argument("--reps", type=int_at_least(1), default=5, metavar="N",
                        help="timed naive/visattn pairs (median; default 5)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--no-naive", action="store_true", help="measure visattn only")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile of the naive code")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-case subprocess memory measurement")
    add_output_file_argument(parser, "the JSON file to write the report to", type=Path)
    add_device_argument(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    from visattn.benchmark import MODULES, Case, format_table, run_cases
    from visattn.engine.distributed import resolve_device

    device = resolve_device(args.device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {args.device}: the benchmark runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}, but torch sees no CUDA device")
    if args.dtype == "float16" and device.type != "cuda":
        raise ValueError("--dtype float16 runs on CUDA only (--device cuda)")
    modules = args.modules or list(MODULES)
    cases = [
        Case(name, *args.size, channels=args.channels, batch=args.batch_size, train=args.train, dtype=args.dtype,
             naive=not args.no_naive, compiled=not args.no_compile, memory=not args.no_memory, reps=args.reps,
             device=str(device))
        for name in modules
    ]
    report = run_cases(cases, threads=args.threads)
    report["command"] = "visattn bench " + " ".join(
        ["--modules", *modules, "--size", *map(str, args.size), "--channels", str(args.channels),
         "--batch-size", str(args.batch_size), "--dtype", args.dtype, "--reps", str(args.reps)]
        + (["--train"] if args.train else []) + (["--no-naive"] if args.no_naive else [])
        + (["--no-compile"] if args.no_compile else []) + (["--no-memory"] if args.no_memory else [])
        + ["--device", str(device)]
    )
    print(format_table(report))
    print(f"load average: start {report['load_avg_start']}, end {report['load_avg_end']}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=1))
        print(f"written to {args.output}")
    return 0
