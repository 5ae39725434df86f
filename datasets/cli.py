"""``evrtrl data ...`` sub-command: build the offline data sets.

``evrtrl.cli`` adds it with ``evrtrl.datasets.cli.register(subparsers)``::

    data build spoken   --out DIR [--per-class N] [--test-per-class N] [--seed S] [--channels C]
                        [--languages de,en] [--workers W]
    data build saccades --out DIR [--per-class N] [--test-per-class N] [--seed S] [--workers W]
"""
from __future__ import annotations

import argparse
import time

from evrtrl.cli_contract import Parser, positive_int, run

__all__ = ["main", "register"]


def register(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``data`` command to an ``add_subparsers()`` object; returns its parser."""
    data = subparsers.add_parser("data", help="data sets: build offline SHD/N-MNIST-format sets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    build = data_sub.add_parser("build", help="build an offline data set in its real on-disk format")
    build.add_argument("kind", choices=["spoken", "saccades"],
                       help="spoken: espeak-ng digits in SHD h5 format; saccades: load_digits in N-MNIST format")
    build.add_argument("--out", required=True, help="output folder")
    build.add_argument("--per-class", type=positive_int, default=None,
                       help="training samples per class (default: spoken 20, saccades 100)")
    build.add_argument("--test-per-class", type=positive_int, default=None, help="test samples per class")
    build.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    build.add_argument("--channels", type=positive_int, default=700, help="cochlear channels for spoken (default 700)")
    build.add_argument("--languages", default="de,en", help="spoken languages, comma separated (default de,en)")
    build.add_argument("--workers", type=positive_int, default=None, help="worker processes (default: all CPUs)")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(func=_build)
    return data


def _build(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if args.kind == "spoken":
        from .offline.spoken import build_spoken

        paths = build_spoken(args.out, per_class=args.per_class or 20, test_per_class=args.test_per_class,
                             channels=args.channels, seed=args.seed,
                             languages=tuple(s.strip() for s in args.languages.split(",") if s.strip()),
                             workers=args.workers, progress=not args.quiet)
    else:
        from .offline.saccades import build_saccades

        paths = build_saccades(args.out, per_class=args.per_class or 100, test_per_class=args.test_per_class,
                               seed=args.seed, workers=args.workers, progress=not args.quiet)
    for split, p in paths.items():
        print(f"{split}: {p}")
    print(f"built {args.kind} in {time.perf_counter() - t0:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m evrtrl.datasets.cli data build ...``)."""
    parser = Parser(prog="evrtrl")
    register(parser.add_subparsers(dest="command", required=True))
    return run(parser, argv)  # the CLI error contract


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
