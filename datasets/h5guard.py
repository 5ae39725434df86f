"""Reading HDF5 files the library did not write (SHD, NIR) without risking a hang.

A corrupt HDF5 file can make libhdf5 loop forever (at 100 % CPU) or abort
inside a C call, where no Python time-out can interrupt it. Files the library
writes itself carry a content hash (see ``docs/reliability.md``); files it only
reads (SHD/SSC, NIR graphs) have none, so :func:`probe_hdf5` first reads the
whole file in a *child process* (:mod:`evrtrl.datasets.h5walk`: every link,
object, attribute and dataset element) under a time limit. Only when that
child finishes is the file opened in the caller's process. libhdf5 is
deterministic on the same bytes, and the child reads a superset of what the
readers read, so a file that would hang or crash the reader is refused with
:class:`HDF5GuardError` instead.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from evrtrl.errors import FormatError

__all__ = ["HDF5GuardError", "probe_hdf5", "probe_time_limit"]

_WALKER = Path(__file__).with_name("h5walk.py")
# run the walker with the caller's packages, but without the working or script folder on sys.path
# (this folder holds modules such as events.py that must not shadow anything h5py imports)
_LAUNCH = ("import runpy, sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
           "walker = sys.argv.pop(1); runpy.run_path(walker, run_name='__main__')")

#: seconds the probe may take for any file, plus one second per this many bytes
PROBE_BASE_S = 30.0
PROBE_BYTES_PER_S = 20e6


class HDF5GuardError(FormatError):
    """libhdf5 looped past the time limit or crashed while a child process read the file."""


def probe_time_limit(path: str | os.PathLike) -> float:
    """Default time limit of :func:`probe_hdf5`: 30 s plus 1 s per 20 MB of file."""
    return PROBE_BASE_S + os.path.getsize(path) / PROBE_BYTES_PER_S


def probe_hdf5(path: str | os.PathLike, timeout_s: float | None = None, allow_external_links: bool = False) -> dict:
    """Read all of ``path`` in a child process under a time limit; return the child's report.

    Parameters
    ----------
    path : path-like
        An existing HDF5 file.
    timeout_s : float, optional
        Time limit of the child (default :func:`probe_time_limit`).
    allow_external_links : bool
        By default a file holding an external link (a reference into another
        file) is refused: reading it would open a file nobody asked for.

    Returns
    -------
    dict
        ``{"opened": bool, "external_links": [...], "soft_links": [...], "errors": [...]}``;
        ``opened`` is False when h5py could not open the file at all (the caller's
        own open then raises the real error, as a :class:`FormatError`).

    Raises
    ------
    HDF5GuardError
        If the child ran past the time limit (killed) or died from a signal.
    FormatError
        If the file holds an external link and ``allow_external_links`` is False.
    """
    path = Path(path)
    limit = probe_time_limit(path) if timeout_s is None else float(timeout_s)
    try:
        out = subprocess.run([sys.executable, "-c", _LAUNCH, str(_WALKER), str(path)], capture_output=True,
                             text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired as exc:
        raise HDF5GuardError(f"{path}: libhdf5 did not finish reading the file within {limit:.0f} s (read in a "
                             "child process, which was killed); a corrupt HDF5 file can loop forever: refused. "
                             "Pass a longer time limit if the file is very large") from exc
    rc = out.returncode
    if rc < 0 or rc not in (0, 1):
        why = f"signal {signal.Signals(-rc).name}" if rc < 0 and -rc in signal.valid_signals() else f"exit {rc}"
        raise HDF5GuardError(f"{path}: the HDF5 library crashed reading this file in a child process ({why}); "
                             "the file is corrupt: refused")
    if rc == 1:
        return {"opened": False, "external_links": [], "soft_links": [], "errors": [out.stderr.strip()[-500:]]}
    report = json.loads(out.stdout)
    report["opened"] = True
    if report["external_links"] and not allow_external_links:
        raise FormatError(f"{path}: holds external link(s) {report['external_links'][:3]} (field "
                          f"{report['external_links'][0]!r}) into other files; refused: a data file may not make "
                          "the reader open other files")
    return report
