"""The ``evrtrl`` command line.

The commands come from the packages that own them and are imported only when the command
line is built: ``validate`` (evrtrl.validation.validate), ``bench`` (evrtrl.benchmarks),
``demo``/``train``/``evaluate``/``plot`` (evrtrl.training), ``data build`` (evrtrl.datasets),
``export``/``targets`` (evrtrl.neuromorphic).

Errors follow one contract (:mod:`evrtrl.cli_contract`): one ``error: ...`` line on stderr
and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from evrtrl import __version__
from evrtrl.cli_contract import Parser, run

#: (module, attribute) of each ``register(subparsers)`` that adds commands
REGISTRARS = (
    ("evrtrl.validation.validate", "register"),
    ("evrtrl.training.cli", "register"),
    ("evrtrl.benchmarks.bench", "register"),
    ("evrtrl.datasets.cli", "register"),
    ("evrtrl.neuromorphic.cli", "register"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="evrtrl",
        description="Exact, event-driven RTRL for activity-sparse recurrent and spiking networks.",
    )
    parser.add_argument("--version", action="version", version=f"evrtrl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
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
    return run(build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
