"""``visattn export``: a trained model as an ONNX file or a ``torch.export`` program (``.pt2``).

The source (``--run``) is a training run directory, a directory saved by ``visattn.save_pretrained``
or a Hub id (``hf-hub:user/repo``). The model is traced on CPU on a random image of ``--size`` (default: the
config's crop size); with ``--dynamic`` the batch and spatial sizes stay symbolic where the model
allows (:data:`torch.export.Dim.AUTO`: a size the model's code fixes is kept fixed, and reported).
The exported file is then run on random inputs (the traced size, and a larger one along every
dynamic axis) and compared with the eager model: ONNX with onnxruntime, ``.pt2`` after
:func:`torch.export.load`. The largest absolute difference is printed; exit status 1 if it exceeds
``1e-4`` of the logits' range (:mod:`visattn.cli`).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from visattn._extras import MissingExtraError, require
from visattn.cli import EXIT_SOME_FAILED
from visattn.commands.common import (add_output_file_argument, add_positional_run_alias, add_run_argument,
                                     add_set_argument, add_trust_code_argument, given_run)

TOLERANCE = 1e-4  # of the logits' range


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser, "a training run directory, a save_pretrained directory, or hf-hub:user/repo")
    add_positional_run_alias(parser)
    parser.add_argument("--format", choices=("onnx", "pt2"), default="onnx", help="default onnx")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                        help="size of the random input the model is traced on (default: the config's crop size)")
    parser.add_argument("--dynamic", action="store_true", help="batch and spatial sizes dynamic where the model allows")
    add_output_file_argument(parser, "the file to write (default ./<model name>.<format>)")
    add_set_argument(parser)
    add_trust_code_argument(parser)


def export(model, x, path: str | Path, fmt: str, dynamic: bool = False) -> list[int]:
    """Write ``model`` traced on ``x`` to ``path`` (``fmt``: ``"onnx"`` or ``"pt2"``); return the
    input axes that stayed dynamic (none unless ``dynamic``)."""
    import torch
    from torch.export import Dim

    shapes = ({0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO},) if dynamic else None
    with torch.no_grad():
        program = torch.export.export(model, (x,), dynamic_shapes=shapes)
    if fmt == "pt2":
        torch.export.save(program, str(path))
    else:
        torch.onnx.export(program, (x,), str(path), dynamo=True, external_data=False, verbose=False)
    user_inputs = set(program.graph_signature.user_inputs)
    (traced,) = [n.meta["val"] for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
    return [axis for axis, size in enumerate(traced.shape) if not isinstance(size, int)]


def max_abs_error(path: str | Path, fmt: str, model, x) -> tuple[float, float]:
    """``(largest |exported - eager| over the logits, range of the eager logits)`` on input ``x``."""
    import torch

    with torch.no_grad():
        expected = model(x)
        if fmt == "pt2":
            got = torch.export.load(str(path)).module()(x)
        else:
            session = _onnx_session(path)
            (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
            got = torch.from_numpy(out)
    return (got - expected).abs().max().item(), (expected.max() - expected.min()).item()


def _onnx_session(path: str | Path):

    return require("onnxruntime", extra="export").InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _input_size(cfg, size: list[int] | None) -> tuple[int, int]:
    if size:
        return size[0], size[1]
    crop = cfg.data.crop_size
    return (crop, crop) if isinstance(crop, int) else (crop[0], crop[1])


def run(args: argparse.Namespace) -> int:
    import torch

    from visattn.trained import load_trained

    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if args.format == "onnx" and missing:
        raise MissingExtraError(f"ONNX export needs {', '.join(missing)}: pip install 'visattn[export]'")
    cfg, model = load_trained(given_run(args), overrides=args.overrides, device="cpu", trust_code=args.trust_code)
    height, width = _input_size(cfg, args.size)
    batch = 2 if args.dynamic else 1  # export fixes axes of size 1
    output = Path(args.output or f"{cfg.model.name.split(':')[-1]}.{args.format}")
    output.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, height, width, generator=gen)
    dynamic = export(model, x, output, args.format, args.dynamic)
    names = {0: "batch", 2: "height", 3: "width"}
    print(f"wrote {output} (input {batch}x3x{height}x{width}; dynamic: "
          f"{', '.join(names[a] for a in dynamic) or 'none'})")
    if args.dynamic and len(dynamic) < 3:
        fixed = [names[a] for a in names if a not in dynamic]
        print(f"the model fixes its input {', '.join(fixed)}")
    grown = [batch + (0 in dynamic), 3, height + 32 * (2 in dynamic), width + 32 * (3 in dynamic)]
    checks = [x] + ([torch.randn(grown, generator=gen)] if dynamic else [])
    worst = 0.0
    for check in checks:
        error, span = max_abs_error(output, args.format, model, check)
        print(f"{'onnxruntime' if args.format == 'onnx' else 'torch.export.load'} vs eager on "
              f"{'x'.join(map(str, check.shape))}: max abs error {error:.3g} (logits range {span:.3g})")
        worst = max(worst, error / max(span, 1e-12))
    if worst > TOLERANCE:
        print(f"visattn export: the exported model differs from the eager one by more than {TOLERANCE:g} "
              "of the logits' range", file=sys.stderr)
        return EXIT_SOME_FAILED
    return 0
