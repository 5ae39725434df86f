"""A small cochlear front end in numpy/scipy: gammatone filterbank -> hair cell -> LIF spikes.

Stages (per channel ``k`` with centre frequency ``cf[k]``):

1. **Basilar membrane**: 4th-order gammatone band-pass (``scipy.signal.gammatone``,
   IIR, Slaney's design, rescaled to unit gain at its centre frequency), centre frequencies equally spaced on the ERB-rate
   scale of Glasberg & Moore (1990), ``ERB(f) = 21.4 log10(1 + 0.00437 f)``.
   Channel 0 has the *highest* frequency, as in SHD/lauscher (channel 0 is the
   basal end of the cochlea).
2. **Inner hair cell**: half-wave rectification, power-law compression
   ``r = max(y, 0) ** compression``, and a first-order low-pass at
   ``hair_cutoff_hz`` (loss of phase locking at high frequencies).
3. **Spiking**: a leaky integrate-and-fire neuron per channel,
   ``tau dv/dt = -v + gain * r``; a spike when ``v >= 1``, then ``v = 0`` and
   a refractory period of ``refractory_s``. Optional Gaussian membrane noise
   (seeded) makes the spiking probabilistic.

The input is resampled to ``fs`` and normalised to unit RMS before stage 1,
so loudness does not matter.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from evrtrl.errors import ConfigError
from evrtrl.extras import require
from ..events import audio_events

__all__ = ["Cochlea", "erb_space", "sieroka_space"]


def erb_space(n: int, fmin: float, fmax: float) -> np.ndarray:
    """``n`` centre frequencies (Hz) equally spaced in ERB-rate, from ``fmax`` (index 0) down to ``fmin``."""
    if n < 1 or not 0 < fmin < fmax:
        raise ConfigError(f"erb_space(n={n}, fmin={fmin}, fmax={fmax}); expected n >= 1 and 0 < fmin < fmax")
    e = np.linspace(21.4 * np.log10(1 + 0.00437 * fmax), 21.4 * np.log10(1 + 0.00437 * fmin), n)
    return (10 ** (e / 21.4) - 1) / 0.00437


def sieroka_space(n: int, fmin: float = 20.0) -> np.ndarray:
    """Place-frequency map of the Sieroka et al. (2006) basilar membrane used by lauscher/SHD.

    Channel ``k`` sits at cochlear place ``c_k = 3.5 k / (n - 1)``; its resonance is
    ``f = sqrt((c0 exp(-alpha c) - a) / m) / (2 pi)`` with lauscher's defaults
    ``c0 = 1e8, alpha = 3, a = 3500, m = 0.05`` (about 7.1 kHz at channel 0,
    1 kHz at place 1.27, 150 Hz at place 2.54). Frequencies are clipped below at ``fmin``.
    """
    if n < 1:
        raise ConfigError(f"sieroka_space(n={n}); expected n >= 1")
    c = np.linspace(0.0, 3.5, n)
    s = 1e8 * np.exp(-3.0 * c) - 3500.0
    return np.maximum(np.sqrt(np.maximum(s, 0.0) / 0.05) / (2 * np.pi), fmin)


@lru_cache(maxsize=8)
def _filterbank(cfs: tuple[float, ...], fs: int) -> tuple[np.ndarray, np.ndarray]:
    """Gammatone IIR coefficients per channel, scaled to unit gain at the centre frequency."""
    signal = require("scipy.signal", "the cochlea model")
    freqz, gammatone = signal.freqz, signal.gammatone

    bs, as_ = [], []
    for cf in cfs:
        b, a = gammatone(cf, "iir", fs=fs)
        bs.append(b / np.abs(freqz(b, a, worN=[cf], fs=fs)[1][0]))
        as_.append(a)
    return np.array(bs), np.array(as_)


@dataclass(frozen=True)
class Cochlea:
    """Gammatone/hair-cell/LIF front end (see the module docstring).

    Parameters
    ----------
    n_channels : int
        Number of channels (700 as in SHD).
    fmin, fmax : float
        Lowest and highest centre frequency in Hz.
    fs : int
        Internal sample rate in Hz.
    compression : float
        Hair-cell power-law exponent.
    hair_cutoff_hz : float
        Hair-cell low-pass cut-off.
    tau_s : float
        LIF membrane time constant in seconds.
    gain : float
        Input gain of the LIF neurons (sets the spike rate).
    refractory_s : float
        Absolute refractory period in seconds.
    noise : float
        Standard deviation of the membrane noise per sqrt(second); 0 = deterministic.
    spike_fs : int
        Rate (Hz) at which the LIF neurons are integrated (a divisor of ``fs``).
    spacing : {"erb", "sieroka"}
        Centre frequencies equally spaced in ERB-rate between ``fmin`` and ``fmax``
        (default), or lauscher's place map (:func:`sieroka_space`, ignores ``fmax``).
    """

    n_channels: int = 700
    fmin: float = 50.0
    fmax: float = 7000.0
    fs: int = 16000
    compression: float = 0.6
    hair_cutoff_hz: float = 1000.0
    tau_s: float = 0.005
    gain: float = 5.0
    refractory_s: float = 0.002
    noise: float = 0.0
    spacing: str = "erb"
    spike_fs: int = 4000

    def __post_init__(self) -> None:
        if self.fmax >= self.fs / 2:
            raise ConfigError(f"Cochlea.fmax = {self.fmax} Hz; expected below fs/2 = {self.fs / 2} Hz")
        if self.n_channels < 1 or self.tau_s <= 0 or self.refractory_s < 0:
            raise ConfigError("Cochlea needs n_channels >= 1, tau_s > 0, refractory_s >= 0")

    @property
    def centre_frequencies(self) -> np.ndarray:
        """Centre frequency of every channel in Hz (descending)."""
        if self.spacing == "sieroka":
            return np.minimum(sieroka_space(self.n_channels, fmin=min(self.fmin, 20.0)), self.fs / 2 * 0.95)
        if self.spacing != "erb":
            raise ConfigError(f"Cochlea.spacing = {self.spacing!r}; expected 'erb' or 'sieroka'")
        return erb_space(self.n_channels, self.fmin, self.fmax)

    def _prepare(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        resample_poly = require("scipy.signal", "the cochlea model").resample_poly

        x = np.asarray(audio, dtype=np.float64)
        if x.ndim == 2:
            x = x.mean(axis=1)
        if sample_rate != self.fs:
            g = np.gcd(int(sample_rate), int(self.fs))
            x = resample_poly(x, self.fs // g, int(sample_rate) // g)
        rms = np.sqrt(np.mean(x**2)) if x.size else 0.0
        return x / rms if rms > 0 else x

    def hair_cell_drive(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Hair-cell output ``r``, shape ``(n_samples, n_channels)`` at :attr:`fs` (float32)."""
        lfilter = require("scipy.signal", "the cochlea model").lfilter

        x = self._prepare(audio, sample_rate)
        bs, as_ = _filterbank(tuple(self.centre_frequencies.tolist()), self.fs)
        out = np.empty((x.size, self.n_channels), dtype=np.float32)
        for k in range(self.n_channels):
            out[:, k] = lfilter(bs[k], as_[k], x)
        np.maximum(out, 0.0, out=out)
        np.power(out, np.float32(self.compression), out=out)
        alpha = np.exp(-2 * np.pi * self.hair_cutoff_hz / self.fs)
        return lfilter(np.array([1 - alpha], np.float32), np.array([1, -alpha], np.float32), out, axis=0)

    def spikes(self, audio: np.ndarray, sample_rate: int, seed: int | None = 0) -> np.ndarray:
        """Audio events (t in microseconds, unit = channel) for one recording.

        The LIF neurons are integrated (exact exponential Euler) at
        :attr:`spike_fs`, on the hair-cell output taken every ``fs // spike_fs`` samples.
        """
        step = max(1, self.fs // self.spike_fs)
        r = self.hair_cell_drive(audio, sample_rate)[::step]
        dt = step / self.fs
        decay = np.exp(-dt / self.tau_s)
        drive = (1 - decay) * self.gain * r
        if self.noise > 0:
            drive = drive + self.noise * np.sqrt(dt) * np.random.default_rng(seed).standard_normal(drive.shape)
        refr = int(round(self.refractory_s / dt))
        v = np.zeros(self.n_channels)
        free_at = np.zeros(self.n_channels, dtype=np.int64)  # first step a channel may integrate again
        spikes = np.zeros(drive.shape, dtype=bool)
        for i in range(drive.shape[0]):
            v = np.where(free_at <= i, v * decay + drive[i], 0.0)
            fired = v >= 1.0
            spikes[i] = fired
            v[fired] = 0.0
            free_at[fired] = i + 1 + refr
        k, unit = np.nonzero(spikes)
        return audio_events((k * step * 1_000_000) // self.fs, unit.astype(np.int32))
