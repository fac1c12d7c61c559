"""The ``visattn`` command: one subcommand per workflow step.

Each subcommand lives in ``visattn.commands.<name>`` with ``add_arguments(parser)`` and
``run(args) -> int``; it is imported only when used, so ``visattn --help`` stays fast. The options
speak one dialect (:mod:`visattn.commands.common`).

Exit status, decided here for every command:

- 0: done;
- 1: some inputs failed (``predict`` skipped a file, ``export`` differs from the eager model,
  ``compare`` has runs that failed): what ``run`` returns;
- 2: a bad input, as for a bad command line: ``run`` raised a ``ValueError`` (a config, weights,
  option or input that cannot be used; :class:`~visattn.engine.config.ConfigError` and
  :class:`~visattn.weights.WeightsError` among them), a ``FileNotFoundError`` or ``FileExistsError``,
  or a :class:`~visattn._extras.MissingExtraError` (the message names the ``pip install`` that brings
  the module); the message is one line on stderr;
- 2 also when the file system refuses (an ``OSError``: a name too long, a full disk, no permission);
- 130: interrupted (``KeyboardInterrupt``; its message, if any, says how to continue);
- 1: any other exception, as one line naming its type.

A non-zero exit prints one line, never a traceback; ``visattn --debug COMMAND`` (or ``COMMAND
--debug``) prints the traceback too.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from visattn._extras import MissingExtraError

EXIT_OK, EXIT_SOME_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_FAILED = 1  # an error visattn did not foresee
DEBUG_HELP = "on an error, print the Python traceback too"
# the errors whose message is all the user needs: exit 2
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, MissingExtraError)

# name -> one-line help; the module visattn.commands.<name> implements it
COMMANDS: dict[str, str] = {
    "demo": "build every attention module, run it once and print a table",
    "train": "train a model from a YAML recipe (no arguments: a small segmentor on digit scenes)",
    "eval": "evaluate trained weights: mIoU, mAcc, mDice, per-class scores, confusion matrix (or top-1/top-5)",
    "predict": "segment images, videos, folders, globs or @lists into colour masks and overlays",
    "models": "list registered models with their parameter counts",
    "explain": "draw a segmentor's attention maps (bam, cam, cbam, cca, dnl, dual, ema, external, fla, gc, isa, "
               "nonlocal, pam, psa, rcca, se, sge) over an image",
    "plot": "draw a run's training curves (loss, mIoU, learning rate) as a PNG",
    "compare": "train models and attention heads under one recipe and several seeds; mIoU with confidence intervals and cost",
    "bench": "time and peak memory of attention modules: naive published code vs visattn",
    "export": "export trained weights as ONNX (checked against onnxruntime) or a torch.export program (.pt2)",
}


def _parser(selected: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visattn", description="Attention mechanisms for CNNs.")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        if name == selected:
            importlib.import_module(f"visattn.commands.{name}").add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    args = _parser(selected if selected in COMMANDS else None).parse_args(argv)
    if args.command is None:
        _parser(None).print_help()
        return EXIT_BAD_INPUT
    try:
        return importlib.import_module(f"visattn.commands.{args.command}").run(args) or EXIT_OK
    except KeyboardInterrupt as err:
        _report(args, "interrupted" + (f"; {err}" if str(err) else ""))
        return EXIT_INTERRUPTED
    except (*USER_ERRORS, OSError) as err:
        _report(args, f"error: {_one_line(err)}")
        return EXIT_BAD_INPUT
    except Exception as err:
        _report(args, f"error: {type(err).__name__}: {_one_line(err)} (visattn --debug {args.command} ... shows "
                      "where)")
        return EXIT_FAILED


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    return text or type(err).__name__


def _report(args: argparse.Namespace, message: str) -> None:
    """The one line of a failed command on stderr; under ``--debug`` the traceback before it."""
    if args.debug:
        traceback.print_exc()
    print(f"visattn {args.command}: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
