"""Atomic file writes: a failed write never leaves a half-written file.

The data go to a temporary file in the target's directory, are flushed and fsync'ed,
then ``os.replace`` moves them onto the target (atomic on one file system) and the
directory is fsync'ed. On any exception the temporary file is removed and the target
is left as it was. The new file gets the usual permissions (0666 minus the umask).

Temporary files are named ``.<target name>.<random>.tmp``. Only a SIGKILL (or a power cut)
during a write can leave one behind; :func:`remove_orphans` deletes them from a directory
that no writer is using (the training loop calls it while it holds the run's lock).
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "atomic_write_text", "remove_orphans", "TEMP_NAME"]

#: names of the temporary files of :func:`atomic_write` (and of other ``.<name>...tmp`` helpers)
TEMP_NAME = re.compile(r"^\..+\.tmp$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` to fill a temporary file, then move it onto ``path``."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - some file systems refuse directory fsync
        pass
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    return atomic_write(path, write)


def remove_orphans(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (:data:`TEMP_NAME`) that interrupted writes left in
    ``directory`` (not recursive); returns what was removed. Call it only while no other
    process writes there (e.g. under a run's lock)."""
    directory = Path(directory)
    removed = []
    for p in sorted(directory.iterdir()) if directory.is_dir() else ():
        if TEMP_NAME.match(p.name) and p.is_file() and not p.is_symlink():
            p.unlink()
            removed.append(p)
    return removed
