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

    torch.manual_seed(args.seed)
    x = torch.randn(1, args.channels, *args.size)
    print(f"{'name':<6} {'class':<32} {'params':>10}  {'output shape':<22} {'max |y - x|':>11}")
    for name in list_attentions():
        module = create_attention(name, args.channels).eval()
        with torch.no_grad():
            # residual modules start as the identity (gamma = 0): show them with gamma = 1
            for pname, p in module.named_parameters():
                if pname.endswith("gamma"):
                    p.fill_(1.0)
            y = module(x)
        params = sum(p.numel() for p in module.parameters())
        print(f"{name:<6} {type(module).__name__:<32} {params:>10,}  {str(tuple(y.shape)):<22} {(y - x).abs().max().item():>11.4f}")
    return 0
