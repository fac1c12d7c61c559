"""Options shared by the commands that read a trained run (``eval``, ``predict``, ``explain``), and
``--trust-code``, which ``train`` takes too."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--run RUN_DIR`` (or ``--config`` + ``--weights``), ``--set``, ``--device`` and ``--trust-code``."""
    parser.add_argument("--run", metavar="RUN_DIR", help="a training run directory (its config.yaml and best weights), "
                        "a save_pretrained directory, or hf-hub:user/repo")
    parser.add_argument("--config", help="YAML recipe (with --weights, instead of --run)")
    parser.add_argument("--weights", help="weights file (.safetensors or torch.save); default: the run's best")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps, or auto (default: CUDA when "
                        "there is one, else CPU)")
    add_trust_code_argument(parser)


def add_amp_argument(parser: argparse.ArgumentParser) -> None:
    """``--amp bf16|fp16``: the model runs under ``torch.autocast`` in that precision."""
    parser.add_argument("--amp", choices=("bf16", "fp16"), help="run the model in mixed precision: bf16 (CUDA or CPU) "
                        "or fp16 (CUDA only); probabilities are averaged in fp32")


def resolve_inference_device(args: argparse.Namespace) -> tuple[torch.device, torch.dtype | None]:
    """``(torch.device, autocast dtype or None)`` of ``--device`` and ``--amp`` (``args.amp`` may be
    absent); a device that does not exist here, or fp16 off CUDA, is a ``ValueError``."""
    import torch

    from visattn.engine.distributed import resolve_device
    from visattn.engine.precision import amp_dtype

    try:
        device = resolve_device(args.device)
    except RuntimeError as err:
        raise ValueError(f"--device {args.device!r} is not a device (cpu, cuda, cuda:N, mps or auto): {err}") from None
    if device.type == "cuda" and device.index >= torch.cuda.device_count():
        found = torch.cuda.device_count()
        raise ValueError(f"--device {args.device}: " + (f"there is no CUDA device {device.index} ({found} found)"
                                                        if found else "CUDA is not available here"))
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {args.device}: MPS is not available here")
    return device, amp_dtype(getattr(args, "amp", None), device, option="--amp")


def add_trust_code_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-code", action="store_true",
                        help="build a model the config names as 'module:builder' by importing that module, "
                             "which runs its code: only for configs and run directories you trust")


def add_segment_arguments(parser: argparse.ArgumentParser) -> None:
    """Test-time options of :func:`visattn.engine.inference.segment`; unset ones come from the config."""
    parser.add_argument("--scales", type=float, nargs="+", help="test scales, e.g. 0.75 1 1.25 1.5 (default eval.scales)")
    parser.add_argument("--flip", action="store_true", help="average with horizontally flipped predictions")
    parser.add_argument("--mode", choices=("whole", "slide"), help="whole image or sliding window (default eval.mode)")
    parser.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"), help="sliding-window size")
    parser.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), help="sliding-window stride")


def segment_kwargs(cfg, args: argparse.Namespace) -> dict:
    """:func:`visattn.engine.inference.segment_options` of ``cfg`` with the command line's on top."""
    from visattn.engine.inference import segment_options

    given = {"scales": args.scales, "flip": args.flip or None, "mode": args.mode, "crop": args.crop_size,
             "stride": args.stride}
    return {**segment_options(cfg), **{k: v for k, v in given.items() if v is not None}}
