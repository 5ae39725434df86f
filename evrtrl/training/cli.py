"""CLI sub-commands ``demo``, ``train``, ``evaluate`` and ``plot``.

``register(subparsers)`` adds them to the ``evrtrl`` parser (``evrtrl/cli.py`` calls it);
each handler is ``handler(args) -> int`` via ``set_defaults(func=...)``.
``python -m evrtrl.training.cli ...`` runs them standalone (also under ``torchrun``).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import torch

from evrtrl.api import METHODS
from evrtrl.errors import EvrtrlError
from evrtrl.models import registered_cells
from evrtrl.training import distributed as ddp
from evrtrl.training.demo import run as run_demo
from evrtrl.training.evaluate import evaluate
from evrtrl.training.loop import TrainConfig, train
from evrtrl.training.plan import register as register_plan
from evrtrl.training.plot import plot

__all__ = ["register", "main", "cmd_demo", "cmd_train", "cmd_evaluate", "cmd_plot"]


def cmd_demo(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    acc = run_demo(epochs=args.epochs, hidden=args.hidden, seed=args.seed, progress=not args.quiet)
    return 0 if acc >= 0.99 else 1


def register(subparsers) -> None:
    """Add ``demo``, ``train``, ``evaluate`` and ``plot`` to an ``add_subparsers()`` object."""
    demo = subparsers.add_parser("demo", help="train an EGRU online with the event engine (embedded task)")
    demo.add_argument("--epochs", type=int, default=30, help="maximum epochs (default 30)")
    demo.add_argument("--hidden", type=int, default=16, help="EGRU units (default 16)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, default=1,
                      help="torch threads (default 1: fastest for small models)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=cmd_demo)

    d = TrainConfig()
    p = subparsers.add_parser(
        "train", help="train a recurrent model with exact online RTRL",
        description="Train EGRU/LIF with exact RTRL (event engine by default). Writes "
                    "config.json, checkpoint.h5, model.h5, batches/epochs .csv/.jsonl into --out.")
    p.add_argument("--data", required=True, help="KIND:PATH[,key=value...]; KIND in shd, nmnist, synthetic "
                   "(e.g. synthetic:rotation, synthetic:spikes, shd:/data/shd, nmnist:/data/N-MNIST)")
    p.add_argument("--model", choices=[c.lower() for c in registered_cells()], default=d.model)
    p.add_argument("--hidden", type=int, default=d.hidden, help="units per layer")
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--density", type=float, default=d.density, help="fraction of live weights (random masks)")
    p.add_argument("--method", choices=METHODS, default=d.method)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch", type=int, default=d.batch, help="global batch size (all processes)")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    p.add_argument("--k", type=int, default=d.k,
                   help="steps between online updates; 0 = one update per sequence (default)")
    p.add_argument("--dt-us", type=int, default=None, help="step length in microseconds (shd, nmnist; "
                   "LIF dt)")
    p.add_argument("--loss", choices=("mean", "last"), default=d.loss)
    p.add_argument("--dtype", choices=("float32", "float64"), default=d.dtype)
    p.add_argument("--width", type=float, default=None,
                   help="pseudo-derivative (triangle) width (default: EGRU 0.01, LIF 0.5)")
    p.add_argument("--gamma", type=float, default=d.pd_gamma, help="pseudo-derivative height")
    p.add_argument("--theta-init", type=float, default=d.theta_init, help="EGRU initial threshold")
    p.add_argument("--activity", type=float, default=None,
                   help="activity regulariser strength lambda on every layer's outputs "
                        "(lambda * mean |y|; 0 = off; default: EGRU 6.0, LIF 0)")
    p.add_argument("--activity-target", type=float, default=None,
                   help="penalise only mean |y| above this rate, per sequence and step "
                        "(default: EGRU 0.03, LIF 0)")
    p.add_argument("--activity-warmup", type=float, default=None, metavar="EPOCHS",
                   help="ramp the regulariser's strength linearly from 0 over this many epochs "
                        "(0: full strength from the first batch; default: EGRU 5, LIF 0)")
    p.add_argument("--out", default="runs/latest", help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.h5")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--log", choices=("csv", "json", "both"), default="both")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="also checkpoint every N batches (0: at epoch ends only)")
    p.add_argument("--max-batches", type=int, default=None, help="batches per epoch (quick runs)")
    p.add_argument("--no-eval", action="store_true", help="skip the test accuracy at epoch ends")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per process (1 is fastest for small models)")
    p.add_argument("--shard-columns", type=int, default=d.shard_columns, metavar="C",
                   help="split the influence columns over C processes (grid: WORLD_SIZE/C data x "
                        "C columns; docs/training.md)")
    p.add_argument("--shard-partition", choices=("strided", "contiguous"), default=d.shard_partition,
                   help="how the influence columns are split (evrtrl/shards.py; default strided)")
    p.add_argument("--allow-memory", action="store_true",
                   help="run even if the planned influence memory exceeds the memory available")
    p.set_defaults(func=cmd_train)
    register_plan(subparsers)

    p = subparsers.add_parser("evaluate", help="accuracy of a run or model file on a data set")
    p.add_argument("target", help="run directory or model .h5 file")
    p.add_argument("--data", default=None, help="KIND:PATH (default: the run's data)")
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser("plot", help="PNG figures of a run (RUN_DIR/figures)")
    p.add_argument("run_dir")
    p.add_argument("--sample", type=int, default=0, help="test sample of the spike raster")
    p.set_defaults(func=cmd_plot)


def _error(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


def cmd_train(args: argparse.Namespace) -> int:

    cfg = TrainConfig(
        data=args.data, model=args.model, hidden=args.hidden, layers=args.layers,
        density=args.density, method=args.method, epochs=args.epochs, batch=args.batch,
        lr=args.lr, k=args.k, dt_us=args.dt_us, seed=args.seed, loss=args.loss, dtype=args.dtype,
        theta_init=args.theta_init, pd_gamma=args.gamma, pd_width=args.width,
        activity=args.activity, activity_target=args.activity_target,
        activity_warmup=args.activity_warmup,
        checkpoint_every=args.checkpoint_every,
        log=("csv", "json") if args.log == "both" else (args.log,),
        eval_each_epoch=not args.no_eval, max_batches=args.max_batches,
        shard_columns=args.shard_columns, shard_partition=args.shard_partition,
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        ddp.init_from_env()
        res = train(cfg, args.out, resume=args.resume, progress=not args.no_progress,
                    allow_memory=args.allow_memory)
    except (EvrtrlError, FileNotFoundError) as exc:
        return _error(exc)
    if ddp.rank_and_world()[0] == 0:
        last = res.epochs[-1] if res.epochs else {}
        print(json.dumps({"run_dir": str(res.run_dir), "epochs": len(res.epochs),
                          "train_acc": last.get("acc"), "test_acc": last.get("test_acc"),
                          "saving": last.get("saving"), "beta": last.get("beta"),
                          "test_beta": last.get("test_beta"), "wall_s": round(res.wall_s, 2)}))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:

    try:
        acc = evaluate(args.target, args.data, split=args.split, batch=args.batch)
    except (EvrtrlError, FileNotFoundError) as exc:
        return _error(exc)
    print(json.dumps({"accuracy": acc, "split": args.split}) if args.json else f"accuracy {acc:.4f}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:

    try:
        paths = plot(args.run_dir, sample=args.sample)
    except FileNotFoundError as exc:
        return _error(exc)
    for p in paths:
        print(p)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="evrtrl", description="evrtrl training commands")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
