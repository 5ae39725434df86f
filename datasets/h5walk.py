"""Child-process side of :func:`evrtrl.datasets.h5guard.probe_hdf5`: read every object of one HDF5 file.

Run as a script, ``python h5walk.py FILE``; it imports only h5py and numpy
(never evrtrl or torch, so it starts in a fraction of a second). It

1. opens the file read-only;
2. lists every link with libhdf5's own link iterator (``H5Lvisit``), recording
   soft and external links (external links are *not* followed);
3. visits every object reachable through hard links once (``H5Ovisit``), reads
   every attribute, and reads every dataset completely, in blocks of at most
   16 MiB (at most ``max(64 x file size, 256 MiB)`` bytes per dataset).

and prints a JSON report ``{"external_links": [name, ...],
"soft_links": [name, ...], "errors": [message, ...]}`` on stdout. An exception raised by
h5py while reading one object is recorded under ``errors`` and the walk goes
on (this process only has to show that libhdf5 *finishes*; the caller's reader
reports the error properly). Opening failures exit with status 1. A libhdf5
infinite loop or crash therefore shows as a time-out or a signal exit of this
process, never in the caller.
"""
from __future__ import annotations

import json
import os
import sys

BLOCK_BYTES = 1 << 24


def walk(path: str) -> dict:
    """Read every link, object, attribute and dataset element of ``path``; return the report."""
    import h5py
    import numpy as np

    report: dict[str, list] = {"external_links": [], "soft_links": [], "errors": []}
    cap = max(64 * os.path.getsize(path), 1 << 28)

    def record(what: str, exc: BaseException) -> None:
        report["errors"].append(f"{what}: {type(exc).__name__}: {exc}"[:500])

    # The walk must go on whatever h5py raises for one object: this process only shows that
    # libhdf5 finishes, so (unlike the library's readers) it records every exception and continues.
    def read_attrs(name: str, obj) -> None:
        try:
            keys = list(obj.attrs)
        except Exception as exc:  # noqa: BLE001 - recorded, see above
            record(f"{name} attribute names", exc)
            return
        for k in keys:
            try:
                obj.attrs[k]
            except Exception as exc:  # noqa: BLE001
                record(f"{name} attribute {k!r}", exc)

    def read_dataset(name: str, ds) -> None:
        shape = ds.shape
        if shape is None:  # null dataspace
            return
        if len(shape) == 0:
            ds[()]
            return
        row = max(1, int(np.prod(shape[1:], dtype=np.int64)) * max(1, ds.dtype.itemsize))
        step = max(1, BLOCK_BYTES // row)
        done = 0
        for start in range(0, shape[0], step):
            if done > cap:
                report["errors"].append(f"{name}: declares {shape} x {ds.dtype} (more than {cap} bytes "
                                        "for this file); read only its first part")
                ds[shape[0] - 1:shape[0]]
                return
            ds[start:start + step]
            done += step * row

    def visit(name: str, obj) -> None:
        read_attrs(name, obj)
        if isinstance(obj, h5py.Dataset):
            try:
                read_dataset(name, obj)
            except Exception as exc:  # noqa: BLE001
                record(f"{name} data", exc)

    def link(name: bytes, info) -> None:
        kind = info.type
        if kind == h5py.h5l.TYPE_EXTERNAL:
            report["external_links"].append(name.decode(errors="replace"))
        elif kind == h5py.h5l.TYPE_SOFT:
            report["soft_links"].append(name.decode(errors="replace"))
        return None

    with h5py.File(path, "r") as f:
        read_attrs("/", f)
        try:
            f.id.links.visit(link, info=True)
        except Exception as exc:  # noqa: BLE001
            record("link iteration", exc)
        try:
            f.visititems(visit)
        except Exception as exc:  # noqa: BLE001
            record("object iteration", exc)
    return report


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: h5walk.py FILE", file=sys.stderr)
        return 2
    try:
        report = walk(argv[0])
    except Exception as exc:  # noqa: BLE001 - could not open: the caller's reader raises the real error
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
