"""N-MNIST / N-Caltech101 ``.bin`` files (the 40-bit ATIS format of Orchard et al. 2015).

Each event takes 5 bytes:

====== =========================================================
byte 0 x address (8 bits)
byte 1 y address (8 bits)
byte 2 bit 7: polarity (1 = ON, 0 = OFF); bits 6..0: timestamp bits 22..16
byte 3 timestamp bits 15..8
byte 4 timestamp bits 7..0
====== =========================================================

A record whose y byte is 240 is a *timestamp overflow marker*, not an event.
The overflow semantics are those of Garrick Orchard's reference reader
(``event-Python/eventvision.py``), reproduced by tonic's
``tonic.io.read_mnist_file``: every marker adds ``2**13`` microseconds to the
timestamps of itself and *all later records*; markers are then dropped. (The
constant 2**13 is what the reference code uses, although the timestamp field
has 23 bits; we follow the reference so that files decode identically.)
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from evrtrl.errors import FormatError
from .events import camera_events

__all__ = ["OVERFLOW_Y", "OVERFLOW_INCREMENT_US", "read_nmnist", "write_nmnist"]

RECORD_BYTES = 5
OVERFLOW_Y = 240
OVERFLOW_INCREMENT_US = 2**13
_TS_MAX = 2**23 - 1


def read_nmnist(path: str | os.PathLike) -> np.ndarray:
    """Read an N-MNIST or N-Caltech101 ``.bin`` file.

    Parameters
    ----------
    path : path-like
        The ``.bin`` file.

    Returns
    -------
    numpy.ndarray
        Camera events (:data:`evrtrl.datasets.events.CAMERA_DTYPE`), stably sorted by time.

    Raises
    ------
    FormatError
        If the file length is not a multiple of 5 bytes (truncated or not this format).
    """
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % RECORD_BYTES:
        whole = raw.size - raw.size % RECORD_BYTES
        raise FormatError(
            f"{path}: {raw.size} bytes is not a multiple of the {RECORD_BYTES}-byte event record; "
            f"the last record starting at byte offset {whole} is truncated "
            f"({raw.size % RECORD_BYTES} of {RECORD_BYTES} bytes)"
        )
    rec = raw.reshape(-1, RECORD_BYTES).astype(np.int64)
    x, y = rec[:, 0], rec[:, 1]
    p = (rec[:, 2] >> 7) & 1
    ts = ((rec[:, 2] & 0x7F) << 16) | (rec[:, 3] << 8) | rec[:, 4]
    overflow = y == OVERFLOW_Y
    if overflow.any():
        ts = ts + OVERFLOW_INCREMENT_US * np.cumsum(overflow)
    keep = ~overflow
    return camera_events(ts[keep], x[keep], y[keep], p[keep])


def write_nmnist(path: str | os.PathLike, events: np.ndarray) -> None:
    """Write camera events as an N-MNIST ``.bin`` file that :func:`read_nmnist` reads back.

    Timestamps past ``2**23 - 1`` are encoded with overflow markers (y = 240),
    each adding :data:`OVERFLOW_INCREMENT_US` to all later records.

    Parameters
    ----------
    path : path-like
        Destination file (overwritten).
    events : numpy.ndarray
        Camera events with ``0 <= x, y < 240`` (y = 240 is reserved), ``t >= 0``.

    Raises
    ------
    FormatError
        If an address or timestamp cannot be represented.
    """
    ev = np.sort(events, order="t", kind="stable") if events.size else events
    t = ev["t"].astype(np.int64)
    x = ev["x"].astype(np.int64)
    y = ev["y"].astype(np.int64)
    if ev.size and (t.min() < 0 or x.min() < 0 or y.min() < 0 or x.max() > 255 or y.max() >= OVERFLOW_Y):
        raise FormatError(
            f"{path}: events out of range for the N-MNIST format; expected t >= 0, 0 <= x <= 255, "
            f"0 <= y < {OVERFLOW_Y}"
        )
    # number of overflow markers needed before each event (non-decreasing in t)
    k = np.maximum(0, -(-(t - _TS_MAX) // OVERFLOW_INCREMENT_US))
    low = t - k * OVERFLOW_INCREMENT_US
    n_markers = int(k[-1]) if ev.size else 0
    rows = np.zeros((ev.size + n_markers, RECORD_BYTES), dtype=np.uint8)
    # event i lands after k[i] markers: row index = i + k[i]; markers fill the gaps
    ev_rows = np.arange(ev.size) + k
    is_marker = np.ones(rows.shape[0], dtype=bool)
    is_marker[ev_rows] = False
    rows[is_marker, 1] = OVERFLOW_Y
    p = (ev["p"].astype(np.int64) != 0).astype(np.int64)
    rows[ev_rows, 0] = x
    rows[ev_rows, 1] = y
    rows[ev_rows, 2] = (p << 7) | ((low >> 16) & 0x7F)
    rows[ev_rows, 3] = (low >> 8) & 0xFF
    rows[ev_rows, 4] = low & 0xFF
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    rows.tofile(path)
