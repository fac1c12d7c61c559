"""Run the benchmark tables of docs/benchmarks.md and write them as JSON.

    python benchmarks/run.py [--quick] [--output benchmarks/results/cpu.json]
    python benchmarks/run.py --device cuda                          # benchmarks/results/cuda.json
    python benchmarks/run.py --show benchmarks/results/cpu.json   # the table of a saved run

A thin script over :mod:`visattn.benchmark` (the code behind ``visattn bench``) with the cases of
docs/benchmarks.md: C = 512, 2 torch threads; visattn against the naive published code,
``torch.compile`` of it and (PAM, Non-local) ``F.scaled_dot_product_attention``; time (median of 5
rotated rounds after warm-up) and peak memory (one subprocess per case and implementation; PAM and
Non-local at 64 x 128 also with glibc's default allocator). ``--device cuda``: the GPU table (fp32,
bf16, fp16; each SDPA backend; networks at 1024 x 2048 inference and a 769 x 769 training step).
``--quick`` runs a small subset at small sizes to check the script.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from visattn.benchmark import NETWORKS, Case, add_throughput, format_table, run_cases


def cases(network_size: tuple[int, int]) -> list[Case]:
    out = [
        Case("pam", 64, 128, default_allocator=True),
        Case("pam", 64, 128, train=True, default_allocator=True),
        Case("nonlocal", 64, 128, default_allocator=True),
        Case("nonlocal", 64, 128, train=True, default_allocator=True),
        Case("cca", 97, 97),
        Case("cca", 97, 97, train=True),
    ]
    for name in ("cam", "fla", "bam", "psa", "sge"):
        batch = 2 if name == "bam" else 1  # BAM's BatchNorm1d cannot train on one item
        out += [Case(name, 64, 64, batch=batch), Case(name, 64, 64, batch=batch, train=True)]
    # compiling a whole network costs minutes on a small machine: eager only
    out += [Case(net, *network_size, compiled=False) for net in ("danet_r50_d8", "ccnet_r50_d8")]
    # Naive needs the 4 GiB N x N map (and ~17 GB to train): visattn only, memory and the time
    # of that single call (a training step here is ~1.2 TFLOP forward, too slow to repeat).
    out += [Case("pam", 128, 256, naive=False, reps=0), Case("pam", 128, 256, train=True, naive=False, reps=0)]
    return out


def cuda_cases() -> list[Case]:
    """The GPU table: PAM and Non-local at 64 x 128 in fp32, bf16 and fp16 (``torch.compile`` of
    the naive code in bf16 only: each compile costs tens of seconds), their training steps at
    128 x 256 (N = 32768; the naive code needs ~17 GB in fp32), and the networks."""
    out = []
    for dtype in ("float32", "bfloat16", "float16"):
        for name in ("pam", "nonlocal"):
            out += [Case(name, 64, 128, dtype=dtype, train=train, compiled=dtype == "bfloat16", device="cuda")
                    for train in (False, True)]
    out += [Case(name, 128, 256, dtype=dtype, train=True, compiled=False, device="cuda")
            for dtype in ("float32", "bfloat16") for name in ("pam", "nonlocal")]
    for net in ("danet_r50_d8", "ccnet_r50_d8", "nlnet_r50_d8"):
        out += [Case(net, 1024, 2048, compiled=False, device="cuda"),
                Case(net, 769, 769, train=True, compiled=False, device="cuda")]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--output", type=Path, help="default: benchmarks/results/DEVICE.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--network-size", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script")
    parser.add_argument("--show", type=Path, metavar="JSON", help="only print the table of a saved report")
    args = parser.parse_args()
    if args.show:
        report = json.loads(args.show.read_text())
        print(format_table(add_throughput(report)))
        return
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("benchmarks/run.py: --device cuda, but torch sees no CUDA device")
            raise SystemExit(2)
    args.output = args.output or Path(__file__).parent / "results" / f"{args.device}.json"
    selected = cuda_cases() if args.device == "cuda" else cases(tuple(args.network_size))
    if args.quick:
        selected = [Case(c.module, 16, 16, channels=64, batch=c.batch, train=c.train, dtype=c.dtype, naive=c.naive,
                         compiled=False, reps=c.reps, device=c.device, default_allocator=c.default_allocator)
                    for c in selected if c.module not in NETWORKS]
    command = "python benchmarks/run.py" + (" --quick" if args.quick else "")
    command += " --device cuda" if args.device == "cuda" else ""
    args.output.parent.mkdir(parents=True, exist_ok=True)

    def save(report: dict) -> None:  # after every case: partial results survive an interruption
        args.output.write_text(json.dumps(dict(report, command=command), indent=1))

    report = run_cases(selected, threads=args.threads, on_row=save)
    save(report)
    print(format_table(report))
    print(f"load average: start {report['load_avg_start']}, end {report['load_avg_end']}; written to {args.output}")


if __name__ == "__main__":
    main()
