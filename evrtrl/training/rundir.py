"""The run directory: one run per directory, held by one job at a time.

* **Lock.** :class:`RunLock` holds an exclusive ``flock`` on ``RUN/.lock`` for the whole
  run (in a distributed job: rank 0, for all ranks). A second training into the same
  directory is refused with :class:`~evrtrl.errors.RunError` naming the holder (pid and
  host written into the lock file). The kernel drops the lock when the holder dies, so a
  killed run never leaves a stale lock. (``flock`` works across hosts on NFSv4 and
  Lustre/GPFS mounted with locking; on a file system without locks the run says so.)
* **No silent reuse.** A fresh run refuses a directory that holds anything but the lock
  file, unless ``overwrite`` (then the files a run writes, :data:`RUN_FILES`, are removed
  first) or ``resume``.
* **Orphans.** Temporary files that a SIGKILL during an atomic write left behind are
  removed once the lock is held (:func:`evrtrl.atomic.remove_orphans`).
* **Run id.** A fresh run draws a random id (:func:`new_run_id`) that ``config.json``,
  every checkpoint and ``model.h5`` carry; resuming checks that config and checkpoint
  agree, so files of two runs are never mixed.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import socket
import uuid
from pathlib import Path

from evrtrl.atomic import remove_orphans
from evrtrl.errors import ConfigError, RunError

__all__ = ["RunLock", "prepare_run_dir", "new_run_id", "RUN_FILES", "LOCK_NAME"]

LOCK_NAME = ".lock"
#: what a run writes into its directory (``--overwrite`` removes exactly these)
RUN_FILES = ("config.json", "checkpoint.h5", "checkpoint.prev.h5", "model.h5", "batches.csv", "batches.jsonl",
             "epochs.csv", "epochs.jsonl", "summary.json", "figures")


def new_run_id() -> str:
    """A fresh random run id (32 hex digits)."""
    return uuid.uuid4().hex


class RunLock:
    """Exclusive lock on ``run_dir/.lock`` (module docstring); a context manager."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            finally:
                os.close(fd)
            raise RunError(f"{self.path.parent}: the run directory is in use by {holder} (lock file "
                           f"{self.path}); wait for that run to end or choose another --out") from None
        except OSError as exc:
            os.close(fd)
            raise RunError(f"{self.path}: cannot lock the run directory ({exc}); the file system may not "
                           "support flock") from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()


def prepare_run_dir(run_dir: str | os.PathLike, *, resume: bool, overwrite: bool) -> RunLock:
    """Create and lock ``run_dir``, remove orphaned temporary files, and refuse to start a
    fresh run over another one (module docstring). Returns the held lock."""
    run = Path(run_dir)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run or replace it")
    if run.exists() and not run.is_dir():
        raise ConfigError(f"--out {run}: is a file, expected a run directory")
    run.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run).acquire()
    try:
        remove_orphans(run)
        if not resume:
            present = sorted(p.name for p in run.iterdir() if p.name != LOCK_NAME)
            if present and not overwrite:
                shown = ", ".join(present[:4]) + (", ..." if len(present) > 4 else "")
                raise RunError(f"--out {run}: the directory is not empty ({shown}); pass --resume to continue "
                               "the run there, --overwrite to replace it, or choose another --out")
            for name in RUN_FILES if overwrite else ():
                p = run / name
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                elif p.exists() or p.is_symlink():
                    p.unlink()
    except BaseException:
        lock.release()
        raise
    return lock
