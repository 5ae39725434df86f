"""jAER / iniVation AEDAT files: version 2.0 (DAVIS346) and version 3.1 (polarity packets).

AEDAT 2.0 (jAER; iniVation "AEDAT file formats" documentation)
    An ASCII header of lines starting with ``#`` (the first is ``#!AER-DAT2.0``),
    then records of a big-endian int32 *address* and a big-endian 32-bit
    *timestamp* (1 us ticks), read as **unsigned** (after 2**31 us = 35.8 min it
    does not turn negative); a drop of more than 2**31 us between consecutive
    records is a 32-bit wrap (every 71.6 min) and adds 2**32 us to every later record. For the DAVIS cameras (DAVIS240/346) the address
    bits are::

        bit 31      1 = APS (frame) sample, 0 = DVS event
        bits 30..22 y address (9 bits)
        bits 21..12 x address (10 bits)
        bit 11      polarity (1 = ON)
        bit 10      1 = special/IMU event
        bits 9..0   APS readout data

    Only records with bits 31 and 10 both zero are polarity events. jAER's DAVIS
    extractor mirrors x (``sizeX - 1 - x``); tonic's ``read_davis_346`` does the
    same; pass ``flip_x=True`` for that convention (default: raw addresses).

AEDAT 3.1 (cAER / libcaer ``include/libcaer/events/common.h`` and ``polarity.h``)
    Header lines ``#!AER-DAT3.1`` ... ``#!END-HEADER`` (CRLF-terminated), then
    packets. Each packet has a 28-byte little-endian header::

        int16 eventType, int16 eventSource, int32 eventSize, int32 eventTSOffset,
        int32 eventTSOverflow, int32 eventCapacity, int32 eventNumber, int32 eventValid

    followed by ``eventCapacity * eventSize`` bytes. Polarity events (type 1) are
    8 bytes: ``uint32 data`` (bit 0 valid, bit 1 polarity, bits 2..16 y,
    bits 17..31 x) and ``int32 timestamp``; the 64-bit time is
    ``eventTSOverflow << 31 | timestamp``. Other event types are skipped.
"""
from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evrtrl.errors import FormatError
from .events import camera_events

__all__ = [
    "AedatHeader",
    "GestureSegment",
    "cut_segments",
    "read_aedat2",
    "read_aedat2_header",
    "read_aedat31",
    "read_gesture_labels",
    "write_aedat2",
    "write_aedat31",
]

POLARITY_EVENT = 1
PACKET_HEADER_BYTES = 28
_PACKET_HEADER = np.dtype([
    ("eventType", "<i2"), ("eventSource", "<i2"), ("eventSize", "<i4"), ("eventTSOffset", "<i4"),
    ("eventTSOverflow", "<i4"), ("eventCapacity", "<i4"), ("eventNumber", "<i4"), ("eventValid", "<i4"),
])
_AEDAT2_RECORD = np.dtype([("address", ">u4"), ("timestamp", ">u4")])
TS_WRAP = 2**32
_POLARITY_RECORD = np.dtype([("data", "<u4"), ("timestamp", "<i4")])


@dataclass(frozen=True)
class AedatHeader:
    """Parsed AEDAT header.

    Attributes
    ----------
    version : str
        ``"2.0"``, ``"3.1"``...
    data_start : int
        Byte offset of the first byte after the header.
    lines : tuple of str
        Header lines without the leading ``#`` and line terminator.
    fields : dict
        ``key: value`` pairs found in the header (e.g. ``AEChip``, ``Creation time``).
    """

    version: str
    data_start: int
    lines: tuple[str, ...]
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def chip(self) -> str | None:
        """The ``AEChip`` (2.0) or ``Source ...`` (3.1) entry, when present."""
        if "AEChip" in self.fields:
            return self.fields["AEChip"]
        for k, v in self.fields.items():
            if k.startswith("Source"):
                return v
        return None


def _read_header(path: Path, data: bytes, expect_major: str) -> AedatHeader:
    if not data.startswith(b"#!AER-DAT"):
        raise FormatError(f"{path}: byte offset 0 starts with {data[:12]!r}; expected '#!AER-DAT' (AEDAT header)")
    pos, lines = 0, []
    version = None
    end_marker = False
    while pos < len(data) and data[pos:pos + 1] == b"#":
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise FormatError(f"{path}: header line at byte offset {pos} has no line terminator; "
                              "expected '\\n'-terminated '#' lines")
        line = data[pos + 1:nl].rstrip(b"\r").decode("latin-1")
        lines.append(line)
        pos = nl + 1
        if version is None:
            m = re.match(r"!AER-DAT(\d+\.\d+)", line)
            if not m:
                raise FormatError(f"{path}: first header line {line!r}; expected '#!AER-DAT<major>.<minor>'")
            version = m.group(1)
        if line.startswith("!END-HEADER"):
            end_marker = True
            break
    assert version is not None
    if not version.startswith(expect_major):
        raise FormatError(f"{path}: AEDAT version {version}; expected {expect_major}.x")
    if version.startswith("3") and not end_marker:
        raise FormatError(f"{path}: header has no '#!END-HEADER' line (scanned to byte offset {pos}); "
                          "expected one in AEDAT 3.x")
    fields = {}
    for line in lines[1:]:
        m = re.match(r"\s*([^:<]+?)\s*:\s*(.*)$", line)
        if m and not line.startswith("<"):
            fields[m.group(1)] = m.group(2).strip()
    return AedatHeader(version=version, data_start=pos, lines=tuple(lines), fields=fields)


def read_aedat2_header(path: str | os.PathLike) -> AedatHeader:
    """Parse the ASCII header of an AEDAT 2.0 file.

    Raises
    ------
    FormatError
        If the file does not start with ``#!AER-DAT2.x``.
    """
    path = Path(path)
    return _read_header(path, path.read_bytes(), "2")


def read_aedat2(path: str | os.PathLike, flip_x: bool = False, width: int = 346) -> tuple[AedatHeader, np.ndarray]:
    """Read a DAVIS AEDAT 2.0 file (header and polarity events).

    Parameters
    ----------
    path : path-like
        The ``.aedat`` file.
    flip_x : bool
        Mirror x as jAER displays DAVIS data (``width - 1 - x``).
    width : int
        Sensor width used by ``flip_x`` (346 for DAVIS346).

    Returns
    -------
    header : AedatHeader
    events : numpy.ndarray
        Camera events (APS and special/IMU records dropped), stably time-sorted.

    Raises
    ------
    FormatError
        If the header is bad or the data is not a whole number of 8-byte records.
    """
    path = Path(path)
    data = path.read_bytes()
    header = _read_header(path, data, "2")
    body = len(data) - header.data_start
    if body % _AEDAT2_RECORD.itemsize:
        last = header.data_start + body - body % _AEDAT2_RECORD.itemsize
        raise FormatError(f"{path}: {body} data bytes after the header is not a multiple of 8; the record at "
                          f"byte offset {last} is truncated (expected int32 address + int32 timestamp)")
    rec = np.frombuffer(data, dtype=_AEDAT2_RECORD, offset=header.data_start)
    addr = rec["address"].astype(np.int64)
    ts = rec["timestamp"].astype(np.int64)  # unsigned 32-bit microseconds: never negative
    if ts.size > 1:  # a drop of more than half the range is a 32-bit wrap (every 71.6 min): unfold it
        wraps = np.cumsum(np.diff(ts) < -(TS_WRAP // 2))
        ts[1:] += TS_WRAP * wraps
    dvs = ((addr >> 31) & 1 == 0) & ((addr >> 10) & 1 == 0)
    addr = addr[dvs]
    x = (addr >> 12) & 0x3FF
    y = (addr >> 22) & 0x1FF
    p = (addr >> 11) & 1
    if flip_x:
        if x.size and x.max() >= width:
            raise FormatError(f"{path}: field 'x' reaches {x.max()} but flip_x uses width={width}; "
                              f"expected x < {width}")
        x = width - 1 - x
    return header, camera_events(ts[dvs], x, y, p)


def write_aedat2(path: str | os.PathLike, events: np.ndarray, header_lines: list[str] | None = None,
                 header_bytes: bytes | None = None) -> None:
    """Write DAVIS polarity events as AEDAT 2.0 (inverse of :func:`read_aedat2` with ``flip_x=False``).

    ``header_bytes`` (a whole existing header) takes precedence over ``header_lines``.
    """
    if header_bytes is None:
        lines = header_lines or ["!AER-DAT2.0", " This is a raw AE data file - do not edit",
                                 " Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event",
                                 " Timestamps tick: 1 us", " AEChip: eu.seebetter.ini.chips.davis.Davis346red"]
        header_bytes = b"".join(b"#" + ln.encode("latin-1") + b"\r\n" for ln in lines)
    rec = np.empty(events.size, dtype=_AEDAT2_RECORD)
    rec["address"] = ((events["y"].astype(np.uint32) & 0x1FF) << 22) | ((events["x"].astype(np.uint32) & 0x3FF) << 12) \
        | ((events["p"].astype(np.uint32) & 1) << 11)
    t = events["t"].astype(np.int64)
    if t.size and t.min() < 0:
        raise FormatError(f"{path}: event times start at {t.min()} us; AEDAT 2.0 stores t >= 0")
    rec["timestamp"] = t & (TS_WRAP - 1)  # 32-bit field; the reader unfolds the wrap
    Path(path).write_bytes(header_bytes + rec.tobytes())


def read_aedat31(path: str | os.PathLike) -> tuple[AedatHeader, np.ndarray]:
    """Read polarity events from an AEDAT 3.1 file (e.g. the raw DVS Gesture recordings).

    Returns
    -------
    header : AedatHeader
    events : numpy.ndarray
        Valid polarity events of all packets, stably time-sorted (file order kept on ties).

    Raises
    ------
    FormatError
        On a bad header, a truncated packet header, a packet whose events run past
        the end of the file, or a polarity packet whose eventSize is not 8.
    """
    path = Path(path)
    data = path.read_bytes()
    header = _read_header(path, data, "3")
    pos = header.data_start
    ts_parts, data_parts = [], []
    while pos < len(data):
        if len(data) - pos < PACKET_HEADER_BYTES:
            raise FormatError(f"{path}: packet header at byte offset {pos} is truncated "
                              f"({len(data) - pos} of {PACKET_HEADER_BYTES} bytes)")
        ph = np.frombuffer(data, dtype=_PACKET_HEADER, count=1, offset=pos)[0]
        size, cap = int(ph["eventSize"]), int(ph["eventCapacity"])
        if size <= 0 or cap < 0:
            raise FormatError(f"{path}: packet at byte offset {pos} has eventSize={size}, eventCapacity={cap}; "
                              "expected eventSize > 0 and eventCapacity >= 0")
        start = pos + PACKET_HEADER_BYTES
        end = start + size * cap
        if end > len(data):
            raise FormatError(f"{path}: packet at byte offset {pos} declares {cap} events of {size} bytes "
                              f"(to byte {end}) but the file ends at byte {len(data)} (truncated)")
        if int(ph["eventType"]) == POLARITY_EVENT:
            if size != _POLARITY_RECORD.itemsize:
                raise FormatError(f"{path}: polarity packet at byte offset {pos} has eventSize={size}; expected 8")
            n = int(ph["eventNumber"])
            if not 0 <= n <= cap:
                raise FormatError(f"{path}: packet at byte offset {pos} has eventNumber={n} > eventCapacity={cap}")
            ev = np.frombuffer(data, dtype=_POLARITY_RECORD, count=n, offset=start)
            valid = (ev["data"] & 1) == 1
            ev = ev[valid]
            overflow = int(ph["eventTSOverflow"])
            if overflow < 0 or (ev.size and int(ev["timestamp"].min()) < 0):
                raise FormatError(f"{path}: polarity packet at byte offset {pos} has eventTSOverflow={overflow} and "
                                  f"timestamps from {int(ev['timestamp'].min()) if ev.size else 0}; expected both >= 0 "
                                  "(fields 'eventTSOverflow', 'timestamp')")
            ts_parts.append((np.int64(ph["eventTSOverflow"]) << 31) | ev["timestamp"].astype(np.int64))
            data_parts.append(ev["data"].astype(np.int64))
        pos = end
    d = np.concatenate(data_parts) if data_parts else np.zeros(0, np.int64)
    t = np.concatenate(ts_parts) if ts_parts else np.zeros(0, np.int64)
    return header, camera_events(t, (d >> 17) & 0x7FFF, (d >> 2) & 0x7FFF, (d >> 1) & 1)


def write_aedat31(path: str | os.PathLike, events: np.ndarray, packet_size: int = 4096,
                  source: str = "DVS128") -> None:
    """Write camera events as AEDAT 3.1 polarity packets (inverse of :func:`read_aedat31`)."""
    head = (b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: " + source.encode() +
            b"\r\n#Start-Time: 2017-01-01 00:00:00 (TZ+0000)\r\n#!END-HEADER\r\n")
    chunks = [head]
    for s in range(0, events.size, packet_size):
        ev = events[s:s + packet_size]
        t = ev["t"].astype(np.int64)
        overflow = t >> 31
        # a packet carries one eventTSOverflow; split where it changes
        for ov in np.unique(overflow):
            sel = ev[overflow == ov]
            ph = np.zeros(1, dtype=_PACKET_HEADER)
            ph["eventType"], ph["eventSource"], ph["eventSize"] = POLARITY_EVENT, 1, 8
            ph["eventTSOffset"], ph["eventTSOverflow"] = 4, ov
            ph["eventCapacity"] = ph["eventNumber"] = ph["eventValid"] = sel.size
            rec = np.empty(sel.size, dtype=_POLARITY_RECORD)
            rec["data"] = (sel["x"].astype(np.uint32) << 17) | (sel["y"].astype(np.uint32) << 2) \
                | ((sel["p"].astype(np.uint32) & 1) << 1) | 1
            rec["timestamp"] = (sel["t"].astype(np.int64) & 0x7FFFFFFF).astype(np.int32)
            chunks += [ph.tobytes(), rec.tobytes()]
    Path(path).write_bytes(b"".join(chunks))


# ---------------------------------------------------------------- DVS Gesture labels
@dataclass(frozen=True)
class GestureSegment:
    """One labelled interval of a DVS Gesture recording (``label`` is 0-based)."""

    label: int
    start_us: int
    end_us: int


_INT = re.compile(r"[+-]?[0-9]+")
MAX_US = 2**63 - 1


def read_gesture_labels(path: str | os.PathLike, n_classes: int = 11) -> list[GestureSegment]:
    """Read a DVS Gesture ``*_labels.csv`` file.

    The file has the header ``class,startTime_usec,endTime_usec`` and one row per
    gesture, with 1-based classes ``1..n_classes``. Returned labels are 0-based
    (``class - 1``), as in tonic's preprocessed DVSGesture.

    Raises
    ------
    FormatError
        On bytes that are not UTF-8 text, a missing/odd header, a field that is
        not a plain decimal integer, a class out of range, a time outside
        ``0 <= start < end < 2**63`` us; the message names the file, the row
        (1-based line number) and the field.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{path}: byte offset {exc.start} is not UTF-8 text; expected a csv file") from exc
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise FormatError(f"{path}: not a readable csv file ({exc})") from exc
    if not rows or [c.strip() for c in rows[0]] != ["class", "startTime_usec", "endTime_usec"]:
        raise FormatError(f"{path}: line 1 is {rows[0] if rows else 'missing'}; expected header "
                          "'class,startTime_usec,endTime_usec'")
    out = []
    names = ("class", "startTime_usec", "endTime_usec")
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 3:
            raise FormatError(f"{path}: line {lineno} has {len(row)} fields; expected 3 (class,start,end)")
        for name, c in zip(names, row):
            if not _INT.fullmatch(c.strip()):
                raise FormatError(f"{path}: line {lineno} field {name!r} is {c!r}; expected a decimal integer")
        cls, start, end = (int(c) for c in row)
        if not 1 <= cls <= n_classes:
            raise FormatError(f"{path}: line {lineno} has class {cls}; expected 1 <= class <= {n_classes}")
        if start >= end:
            raise FormatError(f"{path}: line {lineno} has start {start} >= end {end} us; expected start < end")
        if start < 0 or end > MAX_US:
            raise FormatError(f"{path}: line {lineno} has start {start}, end {end} us (fields 'startTime_usec', "
                              f"'endTime_usec'); expected 0 <= start < end <= 2**63 - 1")
        out.append(GestureSegment(cls - 1, start, end))
    return out


def cut_segments(events: np.ndarray, segments: list[GestureSegment],
                 rebase: bool = True) -> list[tuple[np.ndarray, int]]:
    """Cut a recording into ``(events, label)`` samples, one per segment.

    Each sample holds the events with ``start_us <= t < end_us``; with ``rebase``
    its times are shifted so the segment starts at 0.
    """
    t = events["t"]
    out = []
    for seg in segments:
        lo, hi = np.searchsorted(t, seg.start_us, "left"), np.searchsorted(t, seg.end_us, "left")
        ev = events[lo:hi].copy()
        if rebase:
            ev["t"] -= seg.start_us
        out.append((ev, seg.label))
    return out
