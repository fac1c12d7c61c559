"""``visattn train``: train from a YAML recipe with ``--set`` overrides; DDP under ``torchrun``.

With no arguments it trains the default small segmentor on the embedded digit scenes. With
``--print-config`` it prints the resolved config (defaults, the recipe with its ``_base_`` files,
``--set``) as YAML and stops there: nothing is trained or written.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

from visattn.commands.common import add_output_dir_argument, add_set_argument, add_trust_code_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe (see configs/); default: the digit-scenes demo")
    add_set_argument(parser, "override a config key, e.g. --set train.lr=0.02 (repeatable)")
    add_output_dir_argument(parser, "the run directory to create (default: run.dir, else a new one under run.root)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue training the run in RUN_DIR from its latest "
                        "checkpoint, with its config.yaml (unlike --run of the other commands, which only read a run)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (recipe, its bases and --set applied) as YAML and exit")
    add_trust_code_argument(parser)


def run(args: argparse.Namespace) -> int:
    from visattn.engine.config import ConfigError, dump_config, load_config
    from visattn.engine.run_dir import RunDir
    from visattn.engine.trainer import train

    start = time.perf_counter()
    main = int(os.environ.get("RANK", "0")) == 0
    resumed = saved = None
    if args.resume:
        if args.config or args.output_dir:
            raise ConfigError("--resume continues RUN_DIR with its own config.yaml; give overrides with --set")
        resumed = RunDir(args.resume)
        saved = resumed.load_config()
        cfg = load_config(overrides=args.overrides, base=saved)
    else:
        cfg = load_config(args.config, args.overrides)
    if args.output_dir:
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dir=args.output_dir))
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    if main and not args.quiet:
        t = cfg.train
        length = f"{t.epochs} epochs" if t.epochs else f"{t.iters} steps"
        print(f"model {cfg.model.name} {cfg.model.kwargs} | data {cfg.data.dataset} | {length} x batch {t.batch_size}",
              flush=True)
    result = train(cfg, resume=resumed, quiet=args.quiet, trust_code=args.trust_code, resume_config=saved)
    if result["interrupted"]:
        raise KeyboardInterrupt  # the trainer has said where it stopped and how to continue
    if not main:
        return 0
    key = "mIoU" if cfg.task == "segmentation" else "top1"
    print(result["table"])
    print(f"{key} {100 * result['metrics'][key]:.2f} after {result['step']} steps in "
          f"{time.perf_counter() - start:.0f} s; run directory: {result['run_dir']}")
    return 0
