"""The command line's one dialect: each meaning has one spelling in every command that takes it.

==========================  ==================================================================
``--run RUN_DIR``           a trained run to read (eval, predict, explain, plot, export): a run
                            directory, a ``save_pretrained`` directory or ``hf-hub:user/repo``
``train --resume RUN_DIR``  a run to continue training (it is read *and* written)
``--output FILE``           the one file a command writes (eval, plot, export, bench)
``--output-dir DIR``        the folder a command writes into (train, predict, explain, compare)
``--set KEY=VALUE``         one config override per flag, repeatable
``--batch-size N``          images (or random inputs) per forward pass
``--amp bf16|fp16``         run the model under ``torch.autocast`` (mixed precision)
``bench --dtype DTYPE``     cast the module and its input to that dtype (no autocast)
``--device DEVICE``         where the model runs
``--size H W``              the size of the random input a command builds (demo, bench, export)
``--crop-size H W``         the sliding window of test-time segmentation
``bench --modules NAME``    registered attention modules (or networks) to time
``explain --module-paths``  modules of the model, by their path in it (``head.sa``), to draw
==========================  ==================================================================

Other spellings of these meanings are hidden aliases (:func:`add_hidden_alias`): they parse, and
``--help`` does not list them; ``tests/commands/test_dialect.py`` keeps the visible ones to one each.
Only ``argparse`` is imported here: ``visattn CMD --help`` does not import torch.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "cpu, cuda, cuda:N, mps, or auto (default: CUDA when there is one, else CPU)"


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer no smaller than ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def add_hidden_alias(parser: argparse.ArgumentParser, spelling: str, dest: str, **kwargs) -> None:
    """``spelling`` as another name for the option stored in ``dest``: it parses, ``--help`` does not list it."""
    parser.add_argument(spelling, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def add_run_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--run RUN_DIR``: the trained run a command reads."""
    parser.add_argument("--run", metavar="RUN_DIR", help=help_text)


def add_positional_run_alias(parser: argparse.ArgumentParser) -> None:
    """The run directory also as an (unlisted) positional argument; :func:`given_run` reads both."""
    parser.add_argument("run_positional", nargs="?", metavar="RUN_DIR", help=argparse.SUPPRESS)


def given_run(args: argparse.Namespace) -> str:
    """The run of ``--run`` or of the positional alias; neither or both is a ``ValueError``."""
    if (args.run is None) == (args.run_positional is None):
        raise ValueError("give the run directory once: --run RUN_DIR")
    return args.run or args.run_positional


def add_output_file_argument(parser: argparse.ArgumentParser, help_text: str, **kwargs) -> None:
    """``--output FILE``: the one file the command writes."""
    parser.add_argument("--output", metavar="FILE", help=help_text, **kwargs)


def add_output_dir_argument(parser: argparse.ArgumentParser, help_text: str, default: str | None = None) -> None:
    """``--output-dir DIR``: the folder the command writes into (``--output`` a hidden alias)."""
    parser.add_argument("--output-dir", metavar="DIR", default=default, help=help_text)
    add_hidden_alias(parser, "--output", "output_dir")


def add_set_argument(parser: argparse.ArgumentParser, help_text: str = "override a config key (repeatable)") -> None:
    """``--set KEY=VALUE``, one override per flag, into ``args.overrides``."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help_text)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device``: where the model runs (:func:`resolve_inference_device` checks it)."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--run RUN_DIR`` (or ``--config`` + ``--weights``), ``--set``, ``--device`` and ``--trust-code``."""
    add_run_argument(parser, "a training run directory (its config.yaml and best weights), a save_pretrained "
                             "directory, or hf-hub:user/repo")
    parser.add_argument("--config", help="YAML recipe (with --weights, instead of --run)")
    parser.add_argument("--weights", help="weights file (.safetensors or torch.save); default: the run's best")
    add_set_argument(parser)
    add_device_argument(parser)
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
    """``--trust-code``: allow a config's ``module:builder`` model, which imports that module."""
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
