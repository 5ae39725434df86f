"""Binning events into per-step sparse buckets, and small event transforms.

:class:`SparseSteps` is the CSR-like record the engine consumes: for step
``k`` (covering ``[t0_us + k*dt_us, t0_us + (k+1)*dt_us)``) the active channels
are ``channels[indptr[k]:indptr[k+1]]`` (sorted ascending, unique) with
``counts`` events each. Dense frames exist only on request (:meth:`SparseSteps.to_dense`).

Channel index of camera events
    ``channel = (p * height + y) * width + x``, i.e. the flattening of a
    ``(p, y, x)`` array in C order (polarity slowest, x fastest), with
    ``n_channels = n_polarities * height * width``. Audio events use ``unit``.

Transforms are frozen dataclasses called on an event array and returning a
new one; they are deterministic and never densify.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from evrtrl.errors import ConfigError, ShapeError
from .events import is_audio, is_camera, stable_time_sort

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "MAX_STEPS",
    "CropTime",
    "DownsampleChannels",
    "MergePolarity",
    "SparseSteps",
    "SpatialPool",
    "ToSparseSteps",
    "bin_events",
    "camera_channels",
    "collate",
]


MAX_STEPS = 2**24
"""Default bound on the number of steps :func:`bin_events` creates (16,777,216: 128 MiB of ``indptr``).

Raise it per call with ``max_steps=``; a corrupt timestamp (e.g. an AEDAT 3.1
overflow field) would otherwise size the output from a time 10**18 us away."""


@dataclass(frozen=True)
class SparseSteps:
    """Events of one sample binned at ``dt_us``, stored CSR-like by step.

    Attributes
    ----------
    indptr : numpy.ndarray, int64, shape (T + 1,)
        Step ``k`` owns entries ``indptr[k]:indptr[k+1]``.
    channels : numpy.ndarray, int64, shape (nnz,)
        Active channels, ascending within each step.
    counts : numpy.ndarray, float32, shape (nnz,)
        Number of events of that channel in that step.
    n_channels : int
        Input dimension ``d``.
    dt_us : int
        Step length in microseconds.
    t0_us : int
        Start time of step 0.
    """

    indptr: np.ndarray
    channels: np.ndarray
    counts: np.ndarray
    n_channels: int
    dt_us: int
    t0_us: int = 0

    def __post_init__(self) -> None:
        if self.indptr.ndim != 1 or self.indptr.size < 1 or self.indptr[0] != 0:
            raise ShapeError(f"SparseSteps.indptr has shape {self.indptr.shape}; expected (T+1,) starting at 0")
        nnz = int(self.indptr[-1])
        if self.channels.shape != (nnz,) or self.counts.shape != (nnz,):
            raise ShapeError(f"SparseSteps.channels {self.channels.shape} / counts {self.counts.shape}; "
                             f"expected ({nnz},) = (indptr[-1],)")
        if np.any(np.diff(self.indptr) < 0):
            raise ShapeError("SparseSteps.indptr must be non-decreasing")
        if nnz and (self.channels.min() < 0 or self.channels.max() >= self.n_channels):
            raise ShapeError(f"SparseSteps.channels span [{self.channels.min()}, {self.channels.max()}]; "
                             f"expected 0 <= channel < n_channels = {self.n_channels}")
        if self.dt_us <= 0:
            raise ConfigError(f"SparseSteps.dt_us = {self.dt_us}; expected > 0 microseconds")

    @property
    def T(self) -> int:
        """Number of steps."""
        return int(self.indptr.size - 1)

    @property
    def nnz(self) -> int:
        """Number of (step, channel) entries."""
        return int(self.indptr[-1])

    def step(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(channels, counts)`` active in step ``k``."""
        a, b = self.indptr[k], self.indptr[k + 1]
        return self.channels[a:b], self.counts[a:b]

    def step_index(self) -> np.ndarray:
        """Step of every entry (shape ``(nnz,)``)."""
        return np.repeat(np.arange(self.T), np.diff(self.indptr))

    def to_dense(self) -> np.ndarray:
        """Dense ``(T, n_channels)`` float32 array."""
        out = np.zeros((self.T, self.n_channels), dtype=np.float32)
        out[self.step_index(), self.channels] = self.counts
        return out

    def to_torch(self, dtype: "torch.dtype | None" = None) -> "torch.Tensor":
        """Dense ``(T, n_channels)`` torch tensor (default dtype float32)."""
        import torch

        return torch.from_numpy(self.to_dense()).to(dtype or torch.float32)


def camera_channels(events: np.ndarray, width: int, height: int, n_polarities: int = 2) -> np.ndarray:
    """Flat channel index ``(p * height + y) * width + x`` of camera events.

    Raises
    ------
    ShapeError
        If an address lies outside the given sensor size.
    """
    x, y, p = events["x"].astype(np.int64), events["y"].astype(np.int64), events["p"].astype(np.int64)
    if events.size and (x.min() < 0 or x.max() >= width or y.min() < 0 or y.max() >= height
                        or p.min() < 0 or p.max() >= n_polarities):
        raise ShapeError(f"camera events span x in [{x.min()}, {x.max()}], y in [{y.min()}, {y.max()}], p in "
                         f"[{p.min()}, {p.max()}]; expected x < {width}, y < {height}, p < {n_polarities}")
    return (p * height + y) * width + x


def bin_events(
    events: np.ndarray,
    dt_us: int,
    n_channels: int | None = None,
    sensor_size: tuple[int, int, int] | None = None,
    t0_us: int = 0,
    T: int | None = None,
    max_steps: int = MAX_STEPS,
) -> SparseSteps:
    """Bin events into steps of ``dt_us`` microseconds.

    Parameters
    ----------
    events : numpy.ndarray
        Audio events (channel = ``unit``) or camera events (channel from
        :func:`camera_channels`, needs ``sensor_size``).
    dt_us : int
        Step length in microseconds (> 0).
    n_channels : int, optional
        Input dimension for audio events (default ``max(unit) + 1``).
    sensor_size : (width, height, n_polarities), optional
        Required for camera events.
    t0_us : int
        Start of step 0; events before it are dropped.
    T : int, optional
        Number of steps; events at or after ``t0_us + T*dt_us`` are dropped.
        Default: just enough steps for the last event (0 steps when empty).
    max_steps : int
        Upper bound on the number of steps (default :data:`MAX_STEPS` = 2**24).

    Returns
    -------
    SparseSteps

    Raises
    ------
    ConfigError
        If ``T`` or the last event's step exceeds ``max_steps`` (the message names
        the limit and how to raise it).
    """
    if dt_us <= 0:
        raise ConfigError(f"dt_us = {dt_us}; expected a positive number of microseconds")
    if is_camera(events):
        if sensor_size is None:
            raise ConfigError("camera events need sensor_size=(width, height, n_polarities) to be binned")
        w, h, npol = sensor_size
        ch = camera_channels(events, w, h, npol)
        d = w * h * npol
    elif is_audio(events):
        ch = events["unit"].astype(np.int64)
        d = int(n_channels) if n_channels is not None else (int(ch.max()) + 1 if ch.size else 0)
        if ch.size and (ch.min() < 0 or ch.max() >= d):
            raise ShapeError(f"audio units span [{ch.min()}, {ch.max()}]; expected 0 <= unit < n_channels = {d}")
    else:
        raise ConfigError(f"cannot bin events with fields {events.dtype.names}")
    step = (events["t"].astype(np.int64) - int(t0_us)) // int(dt_us)
    keep = step >= 0
    if T is not None:
        keep &= step < T
    step, ch = step[keep], ch[keep]
    n_steps = int(T) if T is not None else (int(step.max()) + 1 if step.size else 0)
    if n_steps > max_steps:
        cause = f"T = {n_steps}" if T is not None else \
            f"the last event at t = {int(events['t'].max())} us needs T = {n_steps} steps of {int(dt_us)} us"
        raise ConfigError(f"bin_events: {cause}, more than max_steps = {max_steps} (evrtrl.datasets.MAX_STEPS); "
                          "a corrupt timestamp often causes this. Pass max_steps= to raise the limit, or T= / "
                          "CropTime to cut the recording")
    key = step * max(d, 1) + ch
    uniq, cnt = np.unique(key, return_counts=True)
    st = uniq // max(d, 1)
    indptr = np.zeros(n_steps + 1, dtype=np.int64)
    np.cumsum(np.bincount(st, minlength=n_steps), out=indptr[1:])
    return SparseSteps(indptr, (uniq % max(d, 1)).astype(np.int64), cnt.astype(np.float32), d, int(dt_us), int(t0_us))


def collate(samples: Sequence[SparseSteps], T: int | None = None, dtype: "torch.dtype | None" = None) -> "torch.Tensor":
    """Stack samples into a dense ``(T, B, d)`` tensor for the engine.

    Shorter samples are padded with zeros at the end; longer ones are cut at ``T``
    (default: the longest sample). All samples must share ``n_channels`` and ``dt_us``.
    """
    import torch

    if not samples:
        raise ShapeError("collate needs at least one SparseSteps sample")
    d, dt = samples[0].n_channels, samples[0].dt_us
    for i, s in enumerate(samples):
        if s.n_channels != d or s.dt_us != dt:
            raise ShapeError(f"sample {i} has n_channels={s.n_channels}, dt_us={s.dt_us}; expected {d}, {dt} "
                             "like sample 0")
    T = max(s.T for s in samples) if T is None else int(T)
    out = np.zeros((T, len(samples), d), dtype=np.float32)
    for b, s in enumerate(samples):
        k = s.step_index()
        m = k < T
        out[k[m], b, s.channels[m]] = s.counts[m]
    return torch.from_numpy(out).to(dtype or torch.float32)


# ------------------------------------------------------------------ transforms
@dataclass(frozen=True)
class DownsampleChannels:
    """Audio channel down-sampling: ``unit -> unit // factor`` (e.g. SHD 700 -> 140 with factor 5)."""

    factor: int

    def __post_init__(self) -> None:
        if self.factor < 1:
            raise ConfigError(f"DownsampleChannels.factor = {self.factor}; expected an integer >= 1")

    def __call__(self, events: np.ndarray) -> np.ndarray:
        out = events.copy()
        out["unit"] //= self.factor
        return out


@dataclass(frozen=True)
class MergePolarity:
    """Set every polarity to 0 (one polarity channel; bin with ``n_polarities=1``)."""

    def __call__(self, events: np.ndarray) -> np.ndarray:
        out = events.copy()
        out["p"] = 0
        return out


@dataclass(frozen=True)
class SpatialPool:
    """Spatial pooling of camera events: ``x -> x // kx``, ``y -> y // ky``.

    The pooled sensor size is ``(ceil(width / kx), ceil(height / ky))``.
    """

    kx: int
    ky: int | None = None

    def __post_init__(self) -> None:
        if self.kx < 1 or (self.ky is not None and self.ky < 1):
            raise ConfigError(f"SpatialPool kernel ({self.kx}, {self.ky}); expected integers >= 1")

    def pooled_size(self, width: int, height: int) -> tuple[int, int]:
        """Sensor size after pooling."""
        ky = self.ky or self.kx
        return -(-width // self.kx), -(-height // ky)

    def __call__(self, events: np.ndarray) -> np.ndarray:
        out = events.copy()
        out["x"] //= self.kx
        out["y"] //= self.ky or self.kx
        return out


@dataclass(frozen=True)
class CropTime:
    """Keep events with ``start_us <= t < end_us``; with ``rebase`` shift ``t`` by ``-start_us``."""

    start_us: int = 0
    end_us: int | None = None
    rebase: bool = False

    def __post_init__(self) -> None:
        if self.end_us is not None and self.end_us <= self.start_us:
            raise ConfigError(f"CropTime({self.start_us}, {self.end_us}); expected start_us < end_us")

    def __call__(self, events: np.ndarray) -> np.ndarray:
        ev = stable_time_sort(events)
        t = ev["t"]
        lo = np.searchsorted(t, self.start_us, "left")
        hi = t.size if self.end_us is None else np.searchsorted(t, self.end_us, "left")
        out = ev[lo:hi].copy()
        if self.rebase:
            out["t"] -= self.start_us
        return out


@dataclass(frozen=True)
class ToSparseSteps:
    """Transform wrapper around :func:`bin_events`."""

    dt_us: int
    n_channels: int | None = None
    sensor_size: tuple[int, int, int] | None = None
    T: int | None = None
    max_steps: int = MAX_STEPS

    def __call__(self, events: np.ndarray) -> SparseSteps:
        return bin_events(events, self.dt_us, n_channels=self.n_channels, sensor_size=self.sensor_size, T=self.T,
                          max_steps=self.max_steps)
