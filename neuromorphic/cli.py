"""CLI: ``evrtrl export MODEL --target NAME --format nir|bundle -o PATH`` and ``evrtrl targets``.

MODEL is a model file written by ``evrtrl.models.save_model`` (``evrtrl train``
writes ``RUN/model.h5``), a ``.nir`` graph, or an evrtrl bundle. Errors follow the CLI
contract (:mod:`evrtrl.cli_contract`): one ``error: ...`` line, exit status 2.
"""
from __future__ import annotations

import sys

from evrtrl.cli_contract import Parser, positive_float, run


def _load(path: str, dt: float | None):
    from pathlib import Path

    p = Path(path)
    from evrtrl.errors import FormatError
    from evrtrl.h5file import H5_ERRORS, read_h5
    from evrtrl.models.modelfile import load_model

    if p.suffix == ".nir":
        from .nir_io import import_nir
        return import_nir(p, dt=dt)
    with read_h5(p) as f:  # seal checked, links refused; FormatError / FileNotFoundError
        try:
            is_bundle = f.attrs.get("format") == "evrtrl-bundle"
        except H5_ERRORS as exc:
            raise FormatError(f"{p}: the root attributes are unreadable ({exc})") from exc
    if is_bundle:
        from .bundle import read_bundle
        from .netspec import model_from_network
        return model_from_network(read_bundle(p).network)
    return load_model(p).model


def _export(args) -> int:
    from pathlib import Path

    from .mapping import map_to_hardware
    from evrtrl.errors import ConfigError

    if Path(args.output).is_dir():
        raise ConfigError(f"-o {args.output}: is a directory; give the path of the file to write")
    model = _load(args.model, args.dt)
    report = map_to_hardware(model, args.target) if args.target else None
    if report is not None:
        print(report.summary())
    if args.format == "nir":
        from .nir_io import export_nir
        export_nir(model, args.output)
    else:
        from .bundle import export_bundle
        export_bundle(model, args.output, mapping=report)
    print(f"wrote {args.output}")
    return 0 if report is None or report.ok else 1


def _targets(args) -> int:
    from .profiles import list_profiles, load_profile

    for name in list_profiles():
        p = load_profile(name)
        print(f"{name:14s} {p.display_name:45s} cores={p.cores_per_chip} neurons/core={p.neurons_per_core} "
              f"weight_bits={p.weight_bits} recurrence={p.recurrence}")
    return 0


def register(subparsers) -> None:
    """Add ``export`` and ``targets`` to an argparse subparsers object."""
    e = subparsers.add_parser("export", help="map a model onto a chip and write NIR or a bundle")
    e.add_argument("model", help="checkpoint path (.nir and evrtrl bundles accepted too)")
    e.add_argument("--target", default=None, help="hardware profile name or .json path (see 'targets')")
    e.add_argument("--format", choices=("nir", "bundle"), default="bundle")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--dt", type=positive_float, default=None, help="time step in seconds (needed for .nir input)")
    e.set_defaults(func=_export)
    t = subparsers.add_parser("targets", help="list hardware profiles")
    t.set_defaults(func=_targets)


def main(argv=None) -> int:  # standalone use: python -m evrtrl.neuromorphic.cli
    ap = Parser(prog="neuromorphic")
    register(ap.add_subparsers(dest="cmd", required=True))
    return run(ap, argv)


if __name__ == "__main__":
    sys.exit(main())
