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
from .events import audio_events

__all__ = ["SpikeH5", "read_shd", "write_shd"]


class SpikeH5:
    """Lazy, fork-safe reader of one SHD/SSC-layout HDF5 file.

    Parameters
    ----------
    path : path-like
        The ``.h5`` file.
    n_units : int, optional
        When given, units outside ``0..n_units-1`` raise :class:`FormatError`.

    Notes
    -----
    No file handle is opened by the constructor or kept across pickling; the
    handle is (re)opened on first access in whichever process uses the object.
    """

    def __init__(self, path: str | os.PathLike, n_units: int | None = None) -> None:
        self.path = Path(path)
        self.n_units = n_units
        self._file = None
        self._pid: int | None = None
        self._n_classes: int | None = None

    # -- lazy handle ------------------------------------------------------
    def _h5(self):
        if self._file is None or self._pid != os.getpid():
            import h5py

            try:
                f = h5py.File(self.path, "r")
            except OSError as exc:
                raise FormatError(f"{self.path}: not a readable HDF5 file ({exc})") from exc
            for key in ("spikes/times", "spikes/units", "labels"):
                if key not in f:
                    f.close()
                    raise FormatError(f"{self.path}: missing dataset {key!r}; expected the SHD layout "
                                      "spikes/times, spikes/units, labels")
            n = (f["spikes/times"].shape[0], f["spikes/units"].shape[0], f["labels"].shape[0])
            if len(set(n)) != 1:
                f.close()
                raise FormatError(f"{self.path}: spikes/times, spikes/units and labels have lengths {n}; "
                                  "expected equal lengths")
            self._n_classes = len(f["extra/keys"]) if "extra/keys" in f else None
            self._file, self._pid = f, os.getpid()
        return self._file

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
        return int(self._h5()["labels"].shape[0])

    @property
    def keys(self) -> list[str]:
        """Class names from ``extra/keys`` (empty when absent)."""
        f = self._h5()
        if "extra/keys" not in f:
            return []
        return [k.decode() if isinstance(k, bytes) else str(k) for k in f["extra/keys"][()]]

    def label(self, index: int) -> int:
        """Label of sample ``index`` (validated against ``extra/keys``)."""
        f = self._h5()
        label = int(f["labels"][index])
        if label < 0 or (self._n_classes is not None and label >= self._n_classes):
            raise FormatError(f"{self.path}: labels[{index}] = {label}; expected 0 <= label < "
                              f"{self._n_classes if self._n_classes is not None else 'inf'} (len(extra/keys))")
        return label

    def events(self, index: int) -> np.ndarray:
        """Audio events of sample ``index`` (t in microseconds, stably time-sorted)."""
        f = self._h5()
        n = f["labels"].shape[0]
        if not -n <= index < n:
            raise IndexError(f"sample index {index} out of range for {self.path} with {n} samples")
        times = np.asarray(f["spikes/times"][index], dtype=np.float64)
        units = np.asarray(f["spikes/units"][index])
        if times.shape != units.shape:
            raise FormatError(f"{self.path}: sample {index} has {times.size} spike times but {units.size} "
                              "units; expected equal lengths")
        if not np.all(np.isfinite(times)) or (times.size and times.min() < 0):
            raise FormatError(f"{self.path}: sample {index} has negative or non-finite spike times; "
                              "expected seconds >= 0")
        if units.size and (units.min() < 0 or (self.n_units is not None and units.max() >= self.n_units)):
            raise FormatError(f"{self.path}: sample {index} has units in [{units.min()}, {units.max()}]; "
                              f"expected 0 <= unit < {self.n_units}")
        return audio_events(np.rint(times * 1e6).astype(np.int64), units.astype(np.int32))

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.events(index), self.label(index)


def read_shd(path: str | os.PathLike, index: int) -> tuple[np.ndarray, int]:
    """Read sample ``index`` of an SHD/SSC-layout file as ``(events, label)``.

    Opens and closes the file; use :class:`SpikeH5` to read many samples.
    """
    r = SpikeH5(path)
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
