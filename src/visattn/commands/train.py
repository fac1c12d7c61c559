"""``visattn train``: train from a YAML recipe with ``--set`` overrides; DDP under ``torchrun``.

With no arguments it trains the default small segmentor on the embedded digit scenes.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe (see configs/); default: the digit-scenes demo")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.lr=0.02 (repeatable)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from visattn.engine.config import ConfigError, load_config
    from visattn.engine.trainer import train

    start = time.perf_counter()
    main = int(os.environ.get("RANK", "0")) == 0
    try:
        if args.resume:
            if args.config:
                raise ConfigError("--resume uses the run's own config.yaml; give overrides with --set")
            cfg = load_config(Path(args.resume) / "config.yaml", args.overrides)
        else:
            cfg = load_config(args.config, args.overrides)
        if main and not args.quiet:
            m = cfg["model"]
            print(f"model {m['name']} {m['kwargs']} | data {cfg['data']['dataset']} | "
                  f"{cfg['train']['epochs'] and str(cfg['train']['epochs']) + ' epochs' or str(cfg['train']['iters']) + ' steps'} "
                  f"x batch {cfg['train']['batch_size']}", flush=True)
        result = train(cfg, resume=args.resume, quiet=args.quiet)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"visattn train: error: {err}", file=sys.stderr)
        return 2
    if not main:
        return 130 if result["interrupted"] else 0
    if result["interrupted"]:
        return 130
    key = "mIoU" if cfg["task"] == "segmentation" else "top1"
    print(result["table"])
    print(f"{key} {100 * result['metrics'][key]:.2f} after {result['step']} steps in "
          f"{time.perf_counter() - start:.0f} s; run directory: {result['run_dir']}")
    return 0
