"""``visattn demo``: build every registered attention module, run it once, print a table."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--channels", type=int, default=512, help="channels C of the random input (default 512)")
    parser.add_argument("--size", type=int, nargs=2, default=(33, 47), metavar=("H", "W"),
                        help="size of the random input: the feature map (default 33 47)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random numbers: here, the random input")


def run(args: argparse.Namespace) -> int:
    import torch

    from visattn.attention import create_attention, list_attentions
    from visattn.benchmark import non_trivial_

    torch.manual_seed(args.seed)
    x = torch.randn(1, args.channels, *args.size)
    modules = {name: create_attention(name, args.channels).eval() for name in list_attentions()}
    name_width = max(len("name"), *map(len, modules))  # columns as wide as their longest entry
    class_width = max(len("class"), *(len(type(m).__name__) for m in modules.values()))
    print(f"{'name':<{name_width}} {'class':<{class_width}} {'params':>10}  {'output shape':<22} {'max |y - x|':>11}")
    for name, module in modules.items():
        with torch.no_grad():
            # residual modules start as the identity (a zero gamma or zero output weights): show them
            # with those parameters made non-zero, as the benchmark does
            y = non_trivial_(module)(x)
        params = sum(p.numel() for p in module.parameters())
        print(f"{name:<{name_width}} {type(module).__name__:<{class_width}} {params:>10,}  "
              f"{str(tuple(y.shape)):<22} {(y - x).abs().max().item():>11.4f}")
    return 0
