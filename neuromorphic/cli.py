"""CLI: ``evrtrl export MODEL --target NAME --format nir|bundle|xylo|netx -o PATH`` and ``evrtrl targets``.

MODEL is a model file written by ``evrtrl.models.save_model``, a training run
directory (``evrtrl train`` writes ``RUN/model.h5``; its trained readout is exported
too where the format holds one), a ``.nir`` graph, or an evrtrl bundle. Errors follow the
CLI contract (:mod:`evrtrl.cli_contract`): one ``error: ...`` line, exit status 2.
"""
from __future__ import annotations

import sys

from evrtrl.cli_contract import Parser, positive_float, run


def _load(path: str, dt: float | None, reset: str | None = None):
    """``(model, readout or None)`` from a model file, a training run directory, a .nir graph or a bundle."""
    from pathlib import Path

    from evrtrl.errors import ConfigError, FormatError
    from evrtrl.h5file import H5_ERRORS, read_h5
    from evrtrl.models.modelfile import load_model

    p = Path(path)
    if p.is_dir():
        if not (p / "model.h5").is_file():
            raise ConfigError(f"{str(p)!r} is a directory without model.h5: expected a training run directory "
                              "(written by 'evrtrl train' after its first epoch) or a model file")
        p = p / "model.h5"
    elif not p.exists():
        raise ConfigError(f"model {str(p)!r} does not exist")
    if p.suffix == ".nir":
        from .nir_io import import_nir
        return import_nir(p, dt=dt, reset=reset), None
    with read_h5(p) as f:  # seal checked, links refused; FormatError / FileNotFoundError
        try:
            is_bundle = f.attrs.get("format") == "evrtrl-bundle"
        except H5_ERRORS as exc:
            raise FormatError(f"{p}: the root attributes are unreadable ({exc})") from exc
    if is_bundle:
        import torch

        from .bundle import read_bundle
        from .netspec import model_from_network
        b = read_bundle(p)
        readout = None
        if b.readout is not None:
            from evrtrl.models import Readout
            w = b.readout["weight"]
            readout = Readout(w.shape[1], w.shape[0], dtype=torch.float64)
            with torch.no_grad():
                readout.weight.copy_(torch.as_tensor(w))
                readout.bias.copy_(torch.as_tensor(b.readout["bias"]))
        return model_from_network(b.network, dtype=torch.float64), readout
    loaded = load_model(p)
    return loaded.model, loaded.readout


def _calibration(path: str | None):
    if path is None:
        return None
    import pickle

    import numpy as np

    from evrtrl.errors import FormatError

    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, pickle.UnpicklingError) as e:  # a missing file stays an OSError (contract)
        raise FormatError(f"--calibration {path}: not a .npy array ({type(e).__name__}: {e})") from e
    if not isinstance(x, np.ndarray) or x.ndim != 3 or not np.issubdtype(x.dtype, np.number):
        raise FormatError(f"--calibration {path}: expected a numeric .npy array (T, B, d), got "
                          f"{getattr(x, 'shape', type(x).__name__)}")
    return x


def _export(args) -> int:
    from pathlib import Path

    from evrtrl.errors import ConfigError

    from .mapping import map_to_hardware

    if Path(args.output).is_dir():
        raise ConfigError(f"-o {args.output}: is a directory; give the path of the file to write")
    model, readout = _load(args.model, args.dt, args.reset)
    target = args.target or {"xylo": "xylo_audio2", "netx": "loihi2"}.get(args.format)
    x = _calibration(args.calibration)
    report = map_to_hardware(model, target, x=x) if target else None
    if report is not None:
        print(report.summary())
    if args.format == "nir":
        from .nir_io import export_nir
        export_nir(model, args.output, nir_convention=args.nir_convention, readout=readout)
    elif args.format == "bundle":
        from .bundle import export_bundle
        export_bundle(model, args.output, mapping=report, readout=readout)
    elif args.format == "xylo":
        from .vendor_export import export_xylo
        export_xylo(model, args.output, target=target, x=x)
    else:
        from .vendor_export import export_netx
        export_netx(model, args.output, target=target)
    if readout is not None and args.format in ("xylo", "netx"):
        print("note: the trained readout runs on the host; it is not part of the chip file "
              "(use --format bundle or nir to keep it)")
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
    e = subparsers.add_parser("export", help="map a model onto a chip and write NIR, a bundle, Xylo or netx")
    e.add_argument("model", help="model file, training run directory (RUN_DIR/model.h5), .nir graph or bundle")
    e.add_argument("--target", default=None, help="hardware profile name or .json path (see 'targets'); "
                   "default for --format xylo: xylo_audio2, netx: loihi2")
    e.add_argument("--format", choices=("nir", "bundle", "xylo", "netx"), default="bundle",
                   help="xylo: Rockpool XyloSim.from_specification arguments (.npz); netx: lava-dl HDF5")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--dt", type=positive_float, default=None, help="time step in seconds (needed for .nir input)")
    e.add_argument("--reset", choices=("zero", "subtract"), default=None,
                   help="reset mode of a .nir input (NIR has none; default: the file's metadata, else zero)")
    e.add_argument("--nir-convention", choices=("evrtrl", "rockpool", "snntorch"), default="evrtrl",
                   help="CubaLIF r / w_in convention of the written NIR (see docs/neuromorphic.md)")
    e.add_argument("--calibration", default=None, help=".npy input (T, B, d) of spike counts: simulated on "
                   "the chip model for the report and used to pick Xylo's weight shift")
    e.set_defaults(func=_export)
    t = subparsers.add_parser("targets", help="list hardware profiles")
    t.set_defaults(func=_targets)


def main(argv=None) -> int:  # standalone use: python -m evrtrl.neuromorphic.cli
    ap = Parser(prog="neuromorphic")
    register(ap.add_subparsers(dest="cmd", required=True))
    return run(ap, argv)


if __name__ == "__main__":
    sys.exit(main())
