"""``visattn bench``: time and peak memory of attention modules: visattn against the naive published
code, ``torch.compile`` of it, and (PAM, Non-local) ``F.scaled_dot_product_attention``.

Runs :mod:`visattn.benchmark` (the code behind ``benchmarks/run.py`` and docs/benchmarks.md) for
the chosen modules at one size and prints the same table; ``--output`` writes the full report as JSON.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


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
                        help="feature map size (image size for networks); default 64 64")
    parser.add_argument("--channels", type=int, default=512, help="channels C (default 512)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1; BAM training needs >= 2)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--train", action="store_true", help="time a training step (forward + backward)")
    parser.add_argument("--reps", type=int, default=5, help="timed naive/visattn pairs (median; default 5)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--no-naive", action="store_true", help="measure visattn only")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile of the naive code")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-case subprocess memory measurement")
    parser.add_argument("--output", type=Path, metavar="FILE", help="write the report as JSON")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where to run: cuda times by CUDA events and adds each SDPA backend (default cpu)")


def run(args: argparse.Namespace) -> int:
    import torch

    from visattn.benchmark import MODULES, Case, format_table, run_cases

    if args.reps < 1:
        print("visattn bench: --reps must be >= 1")
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("visattn bench: --device cuda, but torch sees no CUDA device")
        return 2
    modules = args.modules or list(MODULES)
    cases = [
        Case(name, *args.size, channels=args.channels, batch=args.batch, train=args.train, dtype=args.dtype,
             naive=not args.no_naive, compiled=not args.no_compile, memory=not args.no_memory, reps=args.reps,
             device=args.device)
        for name in modules
    ]
    report = run_cases(cases, threads=args.threads)
    report["command"] = "visattn bench " + " ".join(
        ["--modules", *modules, "--size", *map(str, args.size), "--channels", str(args.channels),
         "--batch", str(args.batch), "--dtype", args.dtype, "--reps", str(args.reps)]
        + (["--train"] if args.train else []) + (["--no-naive"] if args.no_naive else [])
        + (["--no-compile"] if args.no_compile else []) + (["--no-memory"] if args.no_memory else [])
        + ["--device", args.device]
    )
    print(format_table(report))
    print(f"load average: start {report['load_avg_start']}, end {report['load_avg_end']}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=1))
        print(f"written to {args.output}")
    return 0
