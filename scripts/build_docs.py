"""Build the API reference from the docstrings with pdoc, offline: ``python scripts/build_docs.py OUT``.

Every module under ``evrtrl`` (the engine core, models, datasets, neuromorphic, training,
validation, benchmarks) gets a page; docstrings are reStructuredText with ``:math:``. Needs
the ``docs`` extra (``pip install 'evrtrl[docs]'``). CI builds it (tests/test_docs.py).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings
from pathlib import Path

import evrtrl
from evrtrl.errors import MissingExtraError
from evrtrl.extras import require

#: modules left out: the ``python -m evrtrl`` entry point runs the CLI on import
SKIP = {"evrtrl.__main__"}


def modules() -> list[str]:
    """Every importable module name under ``evrtrl``, sorted (the folders installed as
    ``evrtrl.models`` etc. live outside ``evrtrl/`` in a checkout, so each is walked too)."""
    names = {"evrtrl"}
    for pkg in ("evrtrl", "evrtrl.models", "evrtrl.datasets", "evrtrl.neuromorphic", "evrtrl.benchmarks"):
        mod = importlib.import_module(pkg)
        names.add(pkg)
        names.update(m.name for m in pkgutil.walk_packages(mod.__path__, pkg + "."))
    return sorted(n for n in names if n not in SKIP)


def build(out: Path) -> list[str]:
    pdoc = require("pdoc", "the API reference")
    pdoc.render.configure(docformat="restructuredtext", math=True, search=True,
                          footer_text=f"evrtrl {evrtrl.__version__}")
    mods = modules()
    with warnings.catch_warnings():
        # NamedTuple fields' forward references are shown as written; a package's submodules
        # are listed here and found again by pdoc's own walk: one page each either way
        warnings.filterwarnings("ignore", message="Error parsing type annotation")
        warnings.filterwarnings("ignore", message="The module specification")
        pdoc.pdoc(*mods, output_directory=out)
    return mods


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="output folder (index.html and one page per module)")
    args = ap.parse_args(argv)
    try:
        mods = build(args.out)
    except MissingExtraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"API reference: {len(mods)} modules in {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
