"""CLI sub-commands ``demo``, ``train``, ``evaluate`` and ``plot``.

``register(subparsers)`` adds them to the ``evrtrl`` parser (``evrtrl/cli.py`` calls it);
each handler is ``handler(args) -> int`` via ``set_defaults(func=...)``.
``python -m evrtrl.training.cli ...`` runs them standalone (also under ``torchrun``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch

from evrtrl.api import METHODS
from evrtrl.cli_contract import (
    Parser, finite_float, fraction, nonneg_float, nonneg_int, positive_float, positive_int, run,
)
from evrtrl.errors import ConfigError, PeerFailedError
from evrtrl.models import registered_cells
from evrtrl.training import distributed as ddp
from evrtrl.training.demo import run as run_demo
from evrtrl.training.evaluate import evaluate
from evrtrl.training.loop import TrainConfig, load_run_config, train
from evrtrl.training.plan import register as register_plan
from evrtrl.training.plot import plot

__all__ = ["register", "main", "cmd_demo", "cmd_train", "cmd_evaluate", "cmd_plot", "DEFAULT_THREADS"]

#: torch CPU threads per process unless --threads says otherwise: one thread measured fastest for
#: the models these commands train (docs/training.md, "Threads")
DEFAULT_THREADS = 1

#: train options that are TrainConfig fields: argparse dest -> field
_CONFIG_OPTIONS = {
    "data": "data", "model": "model", "hidden": "hidden", "layers": "layers", "density": "density",
    "method": "method", "epochs": "epochs", "batch": "batch", "lr": "lr", "k": "k", "dt_us": "dt_us",
    "loss": "loss", "dtype": "dtype", "width": "pd_width", "gamma": "pd_gamma", "theta_init": "theta_init",
    "seed": "seed", "log": "log", "checkpoint_every": "checkpoint_every", "max_batches": "max_batches",
    "no_eval": "eval_each_epoch", "device": "device", "activity": "activity",
    "activity_target": "activity_target", "activity_warmup": "activity_warmup",
    "shard_columns": "shard_columns",
    "shard_partition": "shard_partition",
}


def cmd_demo(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    acc = run_demo(epochs=args.epochs, hidden=args.hidden, seed=args.seed, progress=not args.quiet,
                   early_stop=args.early_stop)
    return 0 if acc >= 0.99 else 1


def register(subparsers) -> None:
    """Add ``demo``, ``train``, ``evaluate`` and ``plot`` to an ``add_subparsers()`` object."""
    demo = subparsers.add_parser("demo", help="train an EGRU online with the event engine (embedded task)")
    demo.add_argument("--epochs", type=positive_int, default=30, help="epochs (default 30)")
    demo.add_argument("--hidden", type=positive_int, default=16, help="EGRU units (default 16)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=positive_int, default=DEFAULT_THREADS,
                      help=f"torch threads (default {DEFAULT_THREADS}: fastest for small models)")
    demo.add_argument("--early-stop", action="store_true",
                      help="stop once the accuracy on a validation split carved from the training set "
                           "reaches 99.5%% (off by default; the test set is never used to decide)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=cmd_demo)

    d = TrainConfig()
    p = subparsers.add_parser(
        "train", help="train a recurrent model with exact online RTRL",
        description="Train EGRU/LIF with exact RTRL (event engine by default). Writes "
                    "config.json, checkpoint.h5 (and checkpoint.prev.h5), model.h5, batches/epochs "
                    ".csv/.jsonl into --out, which must be new or empty unless --resume or --overwrite. "
                    "Options left out take their default on a new run and the stored value on --resume.")
    # defaults are applied in cmd_train, so that --resume can tell the options that were given
    p.add_argument("--data", default=None, help="KIND:PATH[,key=value...]; KIND in shd, nmnist, synthetic "
                   "(e.g. synthetic:rotation, synthetic:spikes, shd:/data/shd, nmnist:/data/N-MNIST); "
                   "required for a new run")
    p.add_argument("--model", choices=[c.lower() for c in registered_cells()], default=None,
                   help=f"a registered cell (default {d.model})")
    p.add_argument("--hidden", type=positive_int, default=None, help=f"units per layer (default {d.hidden})")
    p.add_argument("--layers", type=positive_int, default=None, help=f"(default {d.layers})")
    p.add_argument("--density", type=fraction, default=None,
                   help=f"fraction of live weights, random masks (default {d.density})")
    p.add_argument("--method", choices=METHODS, default=None, help=f"(default {d.method})")
    p.add_argument("--epochs", type=positive_int, default=None, help=f"(default {d.epochs})")
    p.add_argument("--batch", type=positive_int, default=None,
                   help=f"global batch size, all processes (default {d.batch})")
    p.add_argument("--lr", type=positive_float, default=None, help=f"Adam learning rate (default {d.lr})")
    p.add_argument("--k", type=nonneg_int, default=None,
                   help="steps between online updates; 0 = one update per sequence (default 0)")
    p.add_argument("--dt-us", type=positive_int, default=None,
                   help="step length in microseconds: binning of shd/nmnist data and the LIF dt")
    p.add_argument("--loss", choices=("mean", "last"), default=None, help=f"(default {d.loss})")
    p.add_argument("--dtype", choices=("float32", "float64"), default=None, help=f"(default {d.dtype})")
    p.add_argument("--width", type=positive_float, default=None,
                   help="pseudo-derivative (triangle) width (default: EGRU 0.01, LIF 0.5)")
    p.add_argument("--gamma", type=positive_float, default=None,
                   help=f"pseudo-derivative height (default {d.pd_gamma})")
    p.add_argument("--theta-init", type=finite_float, default=None,
                   help=f"EGRU initial threshold (default {d.theta_init})")
    p.add_argument("--activity", type=nonneg_float, default=None,
                   help="activity regulariser strength lambda on every layer's outputs "
                        "(lambda * mean |y|; 0 = off; default: EGRU 6.0, LIF 0)")
    p.add_argument("--activity-target", type=nonneg_float, default=None,
                   help="penalise only mean |y| above this rate, per sequence and step "
                        "(default: EGRU 0.03, LIF 0)")
    p.add_argument("--activity-warmup", type=nonneg_float, default=None, metavar="EPOCHS",
                   help="ramp the regulariser's strength linearly from 0 over this many epochs "
                        "(0: full strength from the first batch; default: EGRU 5, LIF 0)")
    p.add_argument("--device", default=None, help=f"torch device: cpu, cuda, cuda:1, ... (default {d.device})")
    p.add_argument("--out", default="runs/latest", help="run directory (default runs/latest)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out by a new one")
    p.add_argument("--seed", type=int, default=None, help=f"(default {d.seed})")
    p.add_argument("--log", choices=("csv", "json", "both"), default=None, help="(default both)")
    p.add_argument("--checkpoint-every", type=nonneg_int, default=None,
                   help="also checkpoint every N batches (default 0: at epoch ends only)")
    p.add_argument("--max-batches", type=positive_int, default=None, help="batches per epoch (quick runs)")
    p.add_argument("--no-eval", action="store_true", default=None,
                   help="skip the test accuracy at epoch ends")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (a line per epoch is printed either way)")
    p.add_argument("--threads", type=positive_int, default=DEFAULT_THREADS,
                   help=f"torch CPU threads per process (default {DEFAULT_THREADS}: measured fastest for "
                        "these models, docs/training.md)")
    p.add_argument("--shard-columns", type=positive_int, default=None, metavar="C",
                   help="split the influence columns over C processes (grid: WORLD_SIZE/C data x "
                        f"C columns; docs/training.md; default {d.shard_columns})")
    p.add_argument("--shard-partition", choices=("strided", "contiguous"), default=None,
                   help=f"how the influence columns are split (evrtrl/shards.py; default {d.shard_partition})")
    p.add_argument("--allow-memory", action="store_true",
                   help="run even if the planned influence memory exceeds the memory available")
    p.set_defaults(func=cmd_train)
    register_plan(subparsers)

    p = subparsers.add_parser("evaluate", help="accuracy of a run or model file on a data set")
    p.add_argument("target", help="run directory or model .h5 file")
    p.add_argument("--data", default=None, help="KIND:PATH (default: the run's data)")
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--batch", type=positive_int, default=64)
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser("plot", help="PNG figures of a run (RUN_DIR/figures)")
    p.add_argument("run_dir")
    p.add_argument("--sample", type=nonneg_int, default=0, help="test sample of the spike raster")
    p.set_defaults(func=cmd_plot)


def _given_options(args: argparse.Namespace) -> dict:
    """The TrainConfig fields set on the command line."""
    given = {}
    for dest, name in _CONFIG_OPTIONS.items():
        v = getattr(args, dest)
        if v is None:
            continue
        if dest == "no_eval":
            v = not v
        elif dest == "log":
            v = ("csv", "json") if v == "both" else (v,)
        given[name] = v
    return given


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's config: the stored one updated by the given options on ``--resume`` of an
    existing run (the loop refuses or states each change), else defaults plus the options."""
    given = _given_options(args)
    if args.resume and (Path(args.out) / "config.json").is_file():
        stored, _ = load_run_config(args.out)
        return replace(stored, **given)
    if "data" not in given:
        raise ConfigError("train: --data is required for a new run (only --resume of an existing run takes the "
                          "stored one)")
    return TrainConfig(**given)


def cmd_train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    ddp.init_from_env()
    try:
        res = train(cfg, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
                    allow_memory=args.allow_memory,
                    echo=lambda line: print(line, file=sys.stderr if line.startswith("note:") else sys.stdout,
                                            flush=True))
    except PeerFailedError as exc:
        # a collective left waiting for the failed process cannot be cancelled and would hold
        # the interpreter's exit (distributed.py): state the error and leave now
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(2)
    if ddp.rank_and_world()[0] == 0:
        last = res.epochs[-1] if res.epochs else {}
        print(json.dumps({"run_dir": str(res.run_dir), "run_id": res.run_id, "epochs": len(res.epochs),
                          "train_acc": last.get("acc"), "test_acc": last.get("test_acc"),
                          "saving": last.get("saving"), "beta": last.get("beta"),
                          "test_beta": last.get("test_beta"), "wall_s": round(res.wall_s, 2)}))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    acc = evaluate(args.target, args.data, split=args.split, batch=args.batch)
    print(json.dumps({"accuracy": acc, "split": args.split}) if args.json else f"accuracy {acc:.4f}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    for p in plot(args.run_dir, sample=args.sample):
        print(p)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m evrtrl.training.cli ...`` (also under torchrun), with the CLI error contract."""
    parser = Parser(prog="evrtrl", description="evrtrl training commands")
    register(parser.add_subparsers(dest="command", required=True))
    return run(parser, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
