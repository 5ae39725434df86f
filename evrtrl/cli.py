"""The ``evrtrl`` command line.

``doctor`` (here): which path the event engine runs (compiled CPU kernels or pure torch),
the compiler, the kernel cache and what the compiled path covers.

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

import evrtrl.models  # noqa: F401  (registers the cells' compiled steps, for doctor)
from evrtrl import __version__
from evrtrl import kernels
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
    doc = sub.add_parser("doctor", help="which event-engine path is active (compiled or torch) and why",
                         description=doctor.__doc__)
    doc.add_argument("--no-build", action="store_true",
                     help="do not build the kernels (report the cache only)")
    doc.set_defaults(func=doctor)
    for module, attr in REGISTRARS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:  # an optional part is not installed
            if exc.name and module.startswith(exc.name):
                continue
            raise
        getattr(mod, attr)(sub)
    return parser


def doctor(args: argparse.Namespace) -> int:
    """Print the active event-engine path, the compiler, the build cache and the coverage.

    Builds the compiled kernels if they are not cached yet (a minute or more the first
    time), unless --no-build or EVRTRL_KERNEL=torch.
    """
    import torch

    mode = kernels.kernel_mode()
    cc = kernels.compiler()
    print(f"evrtrl {__version__}, torch {torch.__version__}")
    print(f"requested path: {mode} (${kernels.KERNEL_ENV})")
    print(f"C++ compiler: {cc or 'not found'}")
    print(f"kernel cache: {kernels.cache_dir()}")
    active = "torch"
    if mode != "torch" and not args.no_build:
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mod = kernels.engine_module()
        for w in caught:
            print(f"build: {w.message}")
        if mod is not None:
            active = "compiled"
    print(f"active path (CPU, float32/float64): {active}")
    print("compiled coverage: the engine step of every cell on CPU in float32/float64; "
          "other devices and dtypes run pure torch")
    for cell, covers in kernels.registered_cell_kernels().items():
        print(f"  cell step {cell}: {covers} (else its pure step)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
