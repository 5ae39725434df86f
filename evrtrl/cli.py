"""The ``evrtrl`` command line.

``evrtrl demo`` trains on the embedded task; the other commands come from the packages
that own them and are imported only when the command line is built:
``validate`` (evrtrl.validate), ``bench`` (benchmarks), ``train``/``evaluate``/``plot``
(evrtrl.training), ``data build`` (datasets), ``export``/``targets`` (neuromorphic).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from evrtrl import __version__

#: (module, attribute) of each ``register(subparsers)`` that adds commands
REGISTRARS = (
    ("evrtrl.validate", "register"),
    ("evrtrl.training.cli", "register"),
    ("evrtrl.benchmarks.bench", "register"),
    ("evrtrl.datasets.cli", "register"),
    ("evrtrl.neuromorphic.cli", "register"),
)


def _demo(args: argparse.Namespace) -> int:
    import torch

    from evrtrl.demo import run

    torch.set_num_threads(args.threads)
    acc = run(epochs=args.epochs, hidden=args.hidden, seed=args.seed, progress=not args.quiet)
    return 0 if acc >= 0.99 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evrtrl",
        description="Exact, event-driven RTRL for activity-sparse recurrent and spiking networks.",
    )
    parser.add_argument("--version", action="version", version=f"evrtrl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="train an EGRU online with the event engine (embedded task)")
    demo.add_argument("--epochs", type=int, default=30, help="maximum epochs (default 30)")
    demo.add_argument("--hidden", type=int, default=16, help="EGRU units (default 16)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, default=1,
                      help="torch threads (default 1: fastest for small models)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=_demo)
    for module, attr in REGISTRARS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:  # an optional part is not installed
            if exc.name and module.startswith(exc.name):
                continue
            raise
        getattr(mod, attr)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
