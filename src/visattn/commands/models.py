"""``visattn models``: list the registered models with their parameter counts and released weights
(``download``: ``pretrained=True`` fetches them; ``manual``: published, to download by hand).

Models are built on the ``meta`` device (shapes only, no memory, no weights), so counting is cheap.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="",
                        help="only names containing this, or matching a wildcard (danet*)")
    parser.add_argument("--num-classes", type=int, help="classes of the output layer (default: each builder's own)")


def run(args: argparse.Namespace) -> int:
    import torch

    from visattn.models.registry import create_model, list_models, released_weights

    names = list_models(args.pattern)
    print(f"{'model':<24} {'params':>14}  weights")
    for name in names:
        try:
            with torch.device("meta"):
                model = create_model(name, num_classes=args.num_classes)
            count = f"{sum(p.numel() for p in model.parameters()):,}"
        except Exception as err:  # a builder that cannot run on meta still gets listed
            count = f"? ({type(err).__name__})"
        weights = released_weights(name)
        released = "-" if weights is None else "download" if weights.url else "manual"
        print(f"{name:<24} {count:>14}  {released}")
    print(f"{len(names)} models")
    return 0
