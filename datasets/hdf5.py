"""SHD / SSC HDF5 files (Cramer et al. 2020, "The Heidelberg spiking data sets").

Layout (as published at https://zenkelab.org/datasets/ and read by tonic's
``tonic/datasets/hsd.py``)::

    spikes/times   ragged (variable-length) float arrays, spike times in seconds
    spikes/units   ragged integer arrays, the channel (0..699) of each spike
    labels         (N,) integer class labels
    extra/keys     class names (bytes), index = label
    extra/speaker  (N,) speaker ids            (optional here)
    extra/meta_info/{gender,age,body_height}   (optional here)

:class:`SpikeH5` opens the file lazily, on first access *in each process*, so
that a ``torch.utils.data.DataLoader`` with worker processes gets one handle
per worker (h5py handles must not cross a fork).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from evrtrl.errors import FormatError
from evrtrl.h5file import H5_ERRORS, probe_file, refuse_links
from .events import audio_events

__all__ = ["SpikeH5", "read_shd", "write_shd"]


#: spike times are converted to int64 microseconds: seconds at or above this would overflow
MAX_TIME_S = float(2**63) / 1e6


class SpikeH5:
    """Lazy, fork-safe reader of one SHD/SSC-layout HDF5 file.

    Parameters
    ----------
    path : path-like
        The ``.h5`` file.
    n_units : int, optional
        When given, units outside ``0..n_units-1`` raise :class:`FormatError`
        (otherwise units must fit int32).
    probe_timeout_s : float, optional
        Time limit of the child process that reads the whole file once before
        this process opens it (:func:`evrtrl.h5file.probe_file`).

    Notes
    -----
    No file handle is opened by the constructor or kept across pickling; the
    handle is (re)opened on first access in whichever process uses the object.
    The file is probed in a child process once per object and file version
    (size, mtime, inode); the probe result travels with pickling, so DataLoader
    workers do not probe again.

    Every problem with the file's content raises :class:`FormatError` naming the
    file, the field (``spikes/times``, ``spikes/units``, ``labels``,
    ``extra/keys``) and the sample, with h5py's exception as ``__cause__``.
    """

    def __init__(self, path: str | os.PathLike, n_units: int | None = None,
                 probe_timeout_s: float | None = None) -> None:
        self.path = Path(path)
        self.n_units = n_units
        self.probe_timeout_s = probe_timeout_s
        self._file = None
        self._pid: int | None = None
        self._n_classes: int | None = None
        self._probed: tuple | None = None
        self._n = 0

    # -- lazy handle ------------------------------------------------------
    def _fail(self, field: str, what: str, exc: BaseException | None = None) -> FormatError:
        msg = f"{self.path}: field {field!r}: {what}"
        if exc is not None:
            msg += f" ({type(exc).__name__}: {exc})"
        return FormatError(msg)

    def _h5(self):
        if self._file is None or self._pid != os.getpid():
            import h5py

            st = self.path.stat()  # a missing file raises FileNotFoundError, as for every reader
            signature = (st.st_size, st.st_mtime_ns, st.st_ino)
            if self._probed != signature:
                probe_file(self.path, self.probe_timeout_s)
                self._probed = signature
            try:
                f = h5py.File(self.path, "r")
            except H5_ERRORS as exc:
                raise self._fail("/", "not a readable HDF5 file", exc) from exc
            try:
                refuse_links(f, self.path, soft=False)  # no external links, storage or virtual datasets
                self._n_classes = self._check_layout(f, h5py)
            except BaseException:
                f.close()
                raise
            self._file, self._pid = f, os.getpid()
        return self._file

    def _check_layout(self, f, h5py) -> int | None:
        """Check the SHD layout; set the sample count; return the class count (``extra/keys``) or None."""
        n = []
        field = "/"
        try:
            for key in ("spikes/times", "spikes/units", "labels"):
                field = key
                link = f.get(key, getlink=True)
                obj = f.get(key)
                if obj is None or not isinstance(obj, h5py.Dataset):
                    raise self._fail(key, f"is {'missing' if obj is None else type(obj).__name__}; expected a "
                                     "dataset (SHD layout: spikes/times, spikes/units, labels)")
                if not isinstance(link, h5py.HardLink):
                    raise self._fail(key, f"is a {type(link).__name__}; expected a dataset stored in this file")
                if obj.ndim != 1:
                    raise self._fail(key, f"has shape {obj.shape}; expected one entry per sample (N,)")
                base = h5py.check_vlen_dtype(obj.dtype) or obj.dtype
                if base.kind not in "iuf" or (key == "labels" and obj.dtype.kind not in "iuf"):
                    raise self._fail(key, f"has dtype {obj.dtype}; expected "
                                     f"{'integer' if key == 'labels' else 'ragged numeric'} values")
                n.append(obj.shape[0])
            if len(set(n)) != 1:
                raise FormatError(f"{self.path}: spikes/times, spikes/units and labels have lengths {tuple(n)}; "
                                  "expected equal lengths")
            self._n = int(n[0])
            field = "extra/keys"
            if "extra/keys" not in f:
                return None
            keys = f["extra/keys"]
            if not isinstance(keys, h5py.Dataset) or keys.ndim != 1:
                raise self._fail("extra/keys", f"is {type(keys).__name__} of shape {getattr(keys, 'shape', None)}; "
                                 "expected a 1-D dataset of class names")
            return int(keys.shape[0])
        except FormatError:
            raise
        except H5_ERRORS as exc:
            raise self._fail(field, "cannot be read", exc) from exc

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"], state["_pid"] = None, None
        return state

    def close(self) -> None:
        """Close the handle of this process, if open."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._pid = None, None

    # -- access -----------------------------------------------------------
    def __len__(self) -> int:
        self._h5()
        return self._n

    @property
    def keys(self) -> list[str]:
        """Class names from ``extra/keys`` (empty when absent)."""
        f = self._h5()
        if self._n_classes is None:
            return []
        try:
            raw = f["extra/keys"][()]
            return [k.decode() if isinstance(k, bytes) else str(k) for k in raw]
        except (*H5_ERRORS, UnicodeDecodeError) as exc:
            raise self._fail("extra/keys", "cannot be read as class names", exc) from exc

    def _read(self, field: str, index: int) -> np.ndarray:
        try:
            return np.asarray(self._h5()[field][index])
        except H5_ERRORS as exc:
            raise self._fail(field, f"sample {index} cannot be read", exc) from exc

    def label(self, index: int) -> int:
        """Label of sample ``index`` (validated against ``extra/keys``)."""
        self._check_index(index)
        raw = self._read("labels", index)
        if raw.dtype.kind == "f" and not (np.isfinite(raw) and raw == np.floor(raw)):
            raise self._fail("labels", f"labels[{index}] = {raw!r} is not a whole number; expected a class index")
        label = int(raw)
        if label < 0 or (self._n_classes is not None and label >= self._n_classes):
            raise self._fail("labels", f"labels[{index}] = {label}; expected 0 <= label < "
                             f"{self._n_classes if self._n_classes is not None else 'inf'} (len(extra/keys))")
        return label

    def _check_index(self, index: int) -> None:
        self._h5()
        n = self._n
        if not -n <= index < n:
            raise IndexError(f"sample index {index} out of range for {self.path} with {n} samples")

    def events(self, index: int) -> np.ndarray:
        """Audio events of sample ``index`` (t in microseconds, stably time-sorted).

        Range checks, after reading and before every conversion: times finite,
        ``0 <= t < 2**63 / 1e6`` seconds (int64 microseconds); units whole numbers
        with ``0 <= unit < n_units`` (or < 2**31 when ``n_units`` is not given).
        """
        self._check_index(index)
        times = self._read("spikes/times", index)
        units = self._read("spikes/units", index)
        if times.ndim != 1 or times.shape != units.shape:
            raise FormatError(f"{self.path}: sample {index} has {times.size} spike times but {units.size} units "
                              f"(shapes {times.shape}, {units.shape}); expected equal 1-D lengths (fields "
                              "'spikes/times', 'spikes/units')")
        if times.dtype.kind not in "iuf" or units.dtype.kind not in "iuf":
            raise FormatError(f"{self.path}: sample {index} has spike times of dtype {times.dtype} and units of "
                              f"dtype {units.dtype}; expected numbers")
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf are refused just below
            times = times.astype(np.float64)
        if times.size and not (np.all(np.isfinite(times)) and times.min() >= 0 and times.max() < MAX_TIME_S):
            raise self._fail("spikes/times", f"sample {index} has times in [{times.min()!r}, {times.max()!r}] s; "
                             f"expected finite seconds in [0, {MAX_TIME_S:.4g}) (int64 microseconds)")
        limit = self.n_units if self.n_units is not None else 2**31
        if units.size:
            if units.dtype.kind == "f" and not np.all(np.isfinite(units) & (units == np.floor(units))):
                raise self._fail("spikes/units", f"sample {index} has non-integer units; expected channel numbers")
            lo, hi = units.min(), units.max()
            if lo < 0 or hi >= limit:
                raise self._fail("spikes/units", f"sample {index} has units in [{lo}, {hi}]; expected "
                                 f"0 <= unit < {limit}" + (" (n_units)" if self.n_units is not None else " (int32)"))
        return audio_events(np.rint(times * 1e6).astype(np.int64), units.astype(np.int32))

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.events(index), self.label(index)


def read_shd(path: str | os.PathLike, index: int, n_units: int | None = None) -> tuple[np.ndarray, int]:
    """Read sample ``index`` of an SHD/SSC-layout file as ``(events, label)``.

    Probes, opens and closes the file; use :class:`SpikeH5` to read many samples.
    """
    r = SpikeH5(path, n_units=n_units)
    try:
        return r[index]
    finally:
        r.close()


def write_shd(
    path: str | os.PathLike,
    samples: Sequence[np.ndarray],
    labels: Sequence[int],
    keys: Sequence[str],
    speakers: Sequence[int] | None = None,
) -> None:
    """Write audio events in the SHD HDF5 layout.

    Parameters
    ----------
    path : path-like
        Destination ``.h5`` file (overwritten).
    samples : sequence of numpy.ndarray
        Audio event arrays (t in microseconds).
    labels : sequence of int
        One class index per sample, ``0 <= label < len(keys)``.
    keys : sequence of str
        Class names (``extra/keys``).
    speakers : sequence of int, optional
        Speaker (here: voice) id per sample (``extra/speaker``).
    """
    import h5py

    if len(samples) != len(labels):
        raise FormatError(f"{path}: {len(samples)} samples but {len(labels)} labels; expected equal lengths")
    bad = [i for i, lab in enumerate(labels) if not 0 <= int(lab) < len(keys)]
    if bad:
        raise FormatError(f"{path}: label of sample {bad[0]} is {labels[bad[0]]}; expected 0 <= label < {len(keys)}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        times = f.create_dataset("spikes/times", (len(samples),), dtype=h5py.vlen_dtype(np.float32))
        units = f.create_dataset("spikes/units", (len(samples),), dtype=h5py.vlen_dtype(np.uint16))
        for i, ev in enumerate(samples):
            times[i] = (ev["t"] / 1e6).astype(np.float32)
            units[i] = ev["unit"].astype(np.uint16)
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.uint8))
        f.create_dataset("extra/keys", data=np.array([k.encode() for k in keys]))
        if speakers is not None:
            f.create_dataset("extra/speaker", data=np.asarray(speakers, dtype=np.uint8))
