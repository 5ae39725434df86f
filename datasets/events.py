"""Event arrays: the structured dtypes every reader returns, and their constructors.

Camera events carry ``t`` (int64, microseconds), ``x`` and ``y`` (int16 pixel
addresses) and ``p`` (int8, 0 = OFF, 1 = ON). Audio events carry ``t`` (int64,
microseconds) and ``unit`` (int32, the cochlear channel). Every constructor
returns the events sorted by time with a *stable* sort, so events sharing a
timestamp keep the order in which they appeared in the file.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from evrtrl.errors import FormatError, ShapeError

CAMERA_DTYPE = np.dtype([("t", np.int64), ("x", np.int16), ("y", np.int16), ("p", np.int8)])
"""Structured dtype of camera (DVS/ATIS) events."""

AUDIO_DTYPE = np.dtype([("t", np.int64), ("unit", np.int32)])
"""Structured dtype of audio (cochlea) events."""

__all__ = [
    "AUDIO_DTYPE",
    "CAMERA_DTYPE",
    "as_events",
    "audio_events",
    "camera_events",
    "from_tonic",
    "is_audio",
    "is_camera",
    "stable_time_sort",
    "to_tonic_dtype",
]


def stable_time_sort(events: np.ndarray) -> np.ndarray:
    """Return ``events`` sorted by ``t`` with a stable sort (ties keep their order).

    Already sorted input is returned as is (no copy).
    """
    t = events["t"]
    if t.size < 2 or bool(np.all(t[1:] >= t[:-1])):
        return events
    return events[np.argsort(t, kind="stable")]


def _column(name: str, value: Any, n: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim == 0:
        return np.full(n, arr)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ShapeError(f"event field {name!r} has shape {arr.shape}; expected ({n},) like 't'")
    return arr


def _fits(name: str, arr: np.ndarray, dtype: type) -> np.ndarray:
    """``arr`` unchanged if every value converts to ``dtype`` exactly (no wrap, no truncation), else FormatError."""
    if arr.size == 0 or arr.dtype == bool or arr.dtype == dtype:
        return arr
    info = np.iinfo(dtype)
    lo = info.min
    if arr.dtype.kind in "iu":
        ok = int(arr.min()) >= lo and int(arr.max()) <= info.max
    elif arr.dtype.kind == "f":
        ok = bool(np.all(np.isfinite(arr)) and np.all(arr == np.floor(arr))) and arr.min() >= lo and \
            arr.max() < float(info.max) + 1
    else:
        raise FormatError(f"event field {name!r} has dtype {arr.dtype}; expected integers")
    if not ok:
        raise FormatError(f"event field {name!r} spans [{arr.min()!r}, {arr.max()!r}]; expected whole numbers in "
                          f"[{lo}, {info.max}] ({np.dtype(dtype).name}): the value would wrap or truncate")
    return arr


def camera_events(t: Any, x: Any, y: Any, p: Any) -> np.ndarray:
    """Build a time-sorted camera event array from columns.

    Parameters
    ----------
    t : array_like of int
        Timestamps in microseconds.
    x, y : array_like of int, or scalar
        Pixel addresses (scalars broadcast).
    p : array_like of {0, 1}, or scalar
        Polarity, 1 = ON (brighter), 0 = OFF.

    Returns
    -------
    numpy.ndarray
        Structured array of :data:`CAMERA_DTYPE`, stably sorted by ``t``.

    Raises
    ------
    FormatError
        If a value does not fit its field exactly (e.g. x = 70000 in int16, a NaN
        or fractional time): nothing wraps or truncates silently.
    """
    t = np.asarray(t)
    if t.ndim != 1:
        raise ShapeError(f"event field 't' has shape {t.shape}; expected a 1-D array")
    n = t.shape[0]
    out = np.empty(n, dtype=CAMERA_DTYPE)
    out["t"] = _fits("t", t, np.int64)
    out["x"] = _fits("x", _column("x", x, n), np.int16)
    out["y"] = _fits("y", _column("y", y, n), np.int16)
    out["p"] = _fits("p", _column("p", p, n), np.int8).astype(np.int8)
    return stable_time_sort(out)


def audio_events(t: Any, unit: Any) -> np.ndarray:
    """Build a time-sorted audio event array from columns.

    Parameters
    ----------
    t : array_like of int
        Timestamps in microseconds.
    unit : array_like of int, or scalar
        Channel (cochlear unit) index.

    Returns
    -------
    numpy.ndarray
        Structured array of :data:`AUDIO_DTYPE`, stably sorted by ``t``.

    Raises
    ------
    FormatError
        If a value does not fit its field exactly (unit 2**32 + 5 in int32, NaN time).
    """
    t = np.asarray(t)
    if t.ndim != 1:
        raise ShapeError(f"event field 't' has shape {t.shape}; expected a 1-D array")
    out = np.empty(t.shape[0], dtype=AUDIO_DTYPE)
    out["t"] = _fits("t", t, np.int64)
    out["unit"] = _fits("unit", _column("unit", unit, t.shape[0]), np.int32)
    return stable_time_sort(out)


def is_camera(events: np.ndarray) -> bool:
    """True when ``events`` has the fields ``t``, ``x``, ``y`` and ``p``."""
    names = events.dtype.names or ()
    return all(f in names for f in ("t", "x", "y", "p"))


def is_audio(events: np.ndarray) -> bool:
    """True when ``events`` has the fields ``t`` and ``unit`` (or tonic's audio ``x``)."""
    names = events.dtype.names or ()
    return "t" in names and ("unit" in names or ("x" in names and "y" not in names))


def as_events(events: np.ndarray) -> np.ndarray:
    """Convert any structured array with the right fields to our dtypes.

    Accepts arrays of :data:`CAMERA_DTYPE` / :data:`AUDIO_DTYPE` themselves, tonic's
    camera arrays (fields ``x, y, t, p`` of any integer or bool type, any order)
    and tonic's audio arrays (fields ``t, x, p`` where ``x`` is the channel, as
    its SHD/SSC datasets return). Timestamps are taken to be microseconds, as in
    tonic; float timestamps are rounded to the nearest microsecond.

    Raises
    ------
    FormatError
        If the array is not structured or lacks the needed fields.
    """
    if not isinstance(events, np.ndarray) or events.dtype.names is None:
        raise FormatError(
            f"expected a numpy structured array with fields t,x,y,p or t,unit; got {type(events).__name__}"
            + (f" of dtype {events.dtype}" if isinstance(events, np.ndarray) else "")
        )
    if "t" not in events.dtype.names:
        raise FormatError(f"structured array has fields {events.dtype.names}; expected a 't' field (microseconds)")
    t = events["t"]
    if np.issubdtype(t.dtype, np.floating):
        t = np.rint(t)  # still float: the constructor refuses NaN / out-of-range values instead of casting them
    if is_camera(events):
        return camera_events(t, events["x"], events["y"], events["p"])
    if is_audio(events):
        unit = events["unit"] if "unit" in events.dtype.names else events["x"]
        return audio_events(t, unit)
    raise FormatError(
        f"structured array has fields {events.dtype.names}; expected (t, x, y, p) for camera "
        "events or (t, unit) / tonic's (t, x, p) for audio events"
    )


def from_tonic(sample: Any) -> tuple[np.ndarray, Any] | np.ndarray:
    """Convert a tonic sample to our event arrays; tonic itself is not needed.

    Parameters
    ----------
    sample : numpy.ndarray or tuple
        Either a tonic event array or the ``(events, target)`` tuple that tonic
        datasets return.

    Returns
    -------
    numpy.ndarray or tuple
        The converted events, or ``(events, target)`` when a tuple was given.
    """
    if isinstance(sample, tuple) and len(sample) == 2:
        return as_events(sample[0]), sample[1]
    return as_events(sample)


def to_tonic_dtype(events: np.ndarray) -> np.ndarray:
    """Return a copy with tonic's field names and types.

    Camera events become ``[("x", int16), ("y", int16), ("t", int64), ("p", bool)]``
    (tonic's ``tonic.io.events_struct``); audio events become tonic's SHD layout
    ``[("t", int64), ("x", int64), ("p", int64)]`` with ``p == 1``.
    """
    if is_camera(events):
        out = np.empty(events.shape[0], dtype=[("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", bool)])
        out["x"], out["y"], out["t"], out["p"] = events["x"], events["y"], events["t"], events["p"] != 0
        return out
    if is_audio(events):
        out = np.empty(events.shape[0], dtype=[("t", np.int64), ("x", np.int64), ("p", np.int64)])
        out["t"], out["x"], out["p"] = events["t"], events["unit"], 1
        return out
    raise FormatError(f"cannot convert fields {events.dtype.names} to a tonic dtype")
