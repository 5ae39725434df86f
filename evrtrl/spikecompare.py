r"""Spike-train and state-trace comparison (pure numpy/torch; no simulator imports).

Spike rasters are arrays of 0/1 of shape ``(T, B, n)`` (time steps, batch, neurons), the
layout of :func:`evrtrl.simulate`. Spike times are step indices; every distance below is
measured in steps (multiply by ``dt`` for seconds).

Measures, per neuron ``(b, k)``:

- **count difference** ``N_a - N_b``;
- **matched fraction within s steps** (s = 0, 1, 2): a greedy one-to-one matching of the two
  sorted spike lists of a neuron in which a pair may be matched when its times differ by at
  most ``s`` steps; for intervals on a line the two-pointer greedy used here is a maximum
  matching. The fraction is ``sum matched / sum max(N_a, N_b)`` over all neurons (1.0 when
  both rasters are empty), so extra and missing spikes both lower it;
- **van Rossum distance** (van Rossum 2001) with a causal exponential kernel of time
  constant ``tau`` steps, normalised so that one unmatched spike contributes
  :math:`\sqrt{1/2}`:

  .. math::

     D^2 = \frac{1}{\tau}\int (f - g)^2\,dt
         = \tfrac12\Big[\sum_{ij} e^{-|a_i-a_j|/\tau} + \sum_{ij} e^{-|b_i-b_j|/\tau}
           - 2\sum_{ij} e^{-|a_i-b_j|/\tau}\Big];

  two single spikes ``Delta`` steps apart give :math:`D^2 = 1 - e^{-\Delta/\tau}`;
- **Victor–Purpura distance** (Victor & Purpura 1996): minimal cost of turning one train into
  the other, 1 per insertion or deletion and ``q`` per step of shift;
- **state-trace RMS** and max-abs difference for every common state name (``v``, ``i``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "SpikeComparison", "compare_spikes", "spike_times", "match_count", "van_rossum",
    "victor_purpura", "state_rms",
]

#: default van Rossum time constant, in steps
VR_TAU_STEPS = 5.0
#: default Victor–Purpura cost per step of shift (a shift of 2 steps costs as much as
#: deleting the spike; farther apart, delete-and-insert is cheaper)
VP_Q_PER_STEP = 0.5
MATCH_WINDOWS = (0, 1, 2)


def _np(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _raster(a: Any, name: str) -> np.ndarray:
    r = _np(a)
    if r.ndim == 1:
        r = r[:, None, None]
    elif r.ndim == 2:
        r = r[:, None, :]
    if r.ndim != 3:
        raise ValueError(f"{name}: expected a spike raster (T, B, n), got shape {r.shape}")
    if not np.isin(r, (0, 1)).all():
        raise ValueError(f"{name}: a spike raster holds only 0 and 1")
    return r != 0


def spike_times(raster: Any) -> list[list[np.ndarray]]:
    """Per ``[b][k]`` the sorted step indices at which neuron ``k`` of batch ``b`` spikes."""
    r = _raster(raster, "raster")
    T, B, n = r.shape
    return [[np.flatnonzero(r[:, b, k]) for k in range(n)] for b in range(B)]


def match_count(a: Sequence[int], b: Sequence[int], window: int) -> int:
    """Size of a maximum one-to-one matching of sorted times with ``|a_i - b_j| <= window``."""
    i = j = m = 0
    while i < len(a) and j < len(b):
        d = int(a[i]) - int(b[j])
        if abs(d) <= window:
            m, i, j = m + 1, i + 1, j + 1
        elif d < 0:
            i += 1
        else:
            j += 1
    return m


def van_rossum(a: Sequence[float], b: Sequence[float], tau: float = VR_TAU_STEPS) -> float:
    """van Rossum distance of two spike-time lists (same unit as ``tau``), module docstring."""
    if tau <= 0:
        raise ValueError(f"van_rossum: tau must be positive, got {tau}")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)

    def k(x: np.ndarray, y: np.ndarray) -> float:
        if x.size == 0 or y.size == 0:
            return 0.0
        return float(np.exp(-np.abs(x[:, None] - y[None, :]) / tau).sum())

    d2 = 0.5 * (k(a, a) + k(b, b) - 2.0 * k(a, b))
    return float(np.sqrt(max(d2, 0.0)))


def victor_purpura(a: Sequence[float], b: Sequence[float], q: float = VP_Q_PER_STEP) -> float:
    """Victor–Purpura distance: 1 per insertion/deletion, ``q`` per unit of shift."""
    if q < 0:
        raise ValueError(f"victor_purpura: q must be >= 0, got {q}")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    na, nb = a.size, b.size
    prev = np.arange(nb + 1, dtype=np.float64)
    for i in range(1, na + 1):
        cur = np.empty(nb + 1)
        cur[0] = i
        for j in range(1, nb + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + q * abs(a[i - 1] - b[j - 1]))
        prev = cur
    return float(prev[nb])


def state_rms(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[dict, dict, dict]:
    """``(rms, max_abs, argmax)`` of ``a[k] - b[k]`` for every common key (argmax as (t, b, n))."""
    rms, mx, arg = {}, {}, {}
    for key in sorted(set(a) & set(b)):
        x, y = _np(a[key]).astype(np.float64), _np(b[key]).astype(np.float64)
        if x.shape != y.shape:
            raise ValueError(f"state '{key}': shapes differ, {x.shape} vs {y.shape}")
        d = np.abs(x - y)
        rms[key] = float(np.sqrt(np.mean(d**2))) if d.size else 0.0
        mx[key] = float(d.max()) if d.size else 0.0
        arg[key] = tuple(int(v) for v in np.unravel_index(int(np.argmax(d)), d.shape)) if d.size else None
    return rms, mx, arg


@dataclass
class SpikeComparison:
    """Agreement of two spike rasters ``a`` and ``b`` (and optionally their state traces).

    ``count_diff`` (B, n): ``N_a - N_b`` per neuron; ``matched`` {s: fraction matched within
    s steps}; ``van_rossum`` (B, n) with ``vr_tau`` steps; ``victor_purpura`` (B, n) with
    ``vp_q`` per step; ``first_mismatch``: earliest ``(t, b, k)`` where the rasters differ, or
    None; ``state_rms`` / ``state_max_abs`` / ``state_argmax`` per state name.
    """

    names: tuple[str, str]
    shape: tuple[int, int, int]
    count_a: np.ndarray
    count_b: np.ndarray
    count_diff: np.ndarray
    matched: dict[int, float]
    vr_tau: float
    van_rossum: np.ndarray
    vp_q: float
    victor_purpura: np.ndarray
    n_mismatch: int
    first_mismatch: tuple[int, int, int] | None
    state_rms: dict[str, float] = field(default_factory=dict)
    state_max_abs: dict[str, float] = field(default_factory=dict)
    state_argmax: dict[str, tuple[int, int, int] | None] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        """True when the two rasters are equal step for step."""
        return self.n_mismatch == 0

    @property
    def total_a(self) -> int:
        return int(self.count_a.sum())

    @property
    def total_b(self) -> int:
        return int(self.count_b.sum())

    def relative_count_error(self) -> float:
        """``sum |N_a - N_b| / max(sum N_a, sum N_b, 1)`` over all neurons."""
        return float(np.abs(self.count_diff).sum() / max(self.total_a, self.total_b, 1))

    def worst(self) -> dict[str, Any]:
        """The worst figure of every measure (max over neurons / states)."""
        w: dict[str, Any] = {
            "mismatched_steps": self.n_mismatch,
            "max_abs_count_diff": int(np.abs(self.count_diff).max()) if self.count_diff.size else 0,
            "relative_count_error": self.relative_count_error(),
            "min_matched_fraction": {s: f for s, f in self.matched.items()},
            f"max_van_rossum(tau={self.vr_tau:g} steps)":
                float(self.van_rossum.max()) if self.van_rossum.size else 0.0,
            f"max_victor_purpura(q={self.vp_q:g}/step)":
                float(self.victor_purpura.max()) if self.victor_purpura.size else 0.0,
        }
        if self.count_diff.size:
            b, k = np.unravel_index(int(np.argmax(np.abs(self.count_diff))), self.count_diff.shape)
            w["worst_count_neuron"] = (int(b), int(k))
        for key, v in self.state_max_abs.items():
            w[f"max_abs_{key}"] = v
        return w

    def summary(self) -> str:
        """A few human-readable lines."""
        a, b = self.names
        T, B, n = self.shape
        lines = [
            f"{a} vs {b}: T={T} steps, B={B}, n={n}; spikes {self.total_a} vs {self.total_b}",
            "  " + ("identical rasters" if self.identical else
                    f"{self.n_mismatch} (t, b, neuron) entries differ, first at {self.first_mismatch}"),
            f"  count |diff|: max {int(np.abs(self.count_diff).max()) if self.count_diff.size else 0}"
            f" per neuron, relative {self.relative_count_error():.3g} overall",
            "  matched within " + ", ".join(f"{s} step{'s' * (s != 1)}: {f:.4f}"
                                            for s, f in self.matched.items()),
            f"  van Rossum (tau={self.vr_tau:g} steps): max {self.van_rossum.max() if self.van_rossum.size else 0:.4g};"
            f" Victor-Purpura (q={self.vp_q:g}/step): max {self.victor_purpura.max() if self.victor_purpura.size else 0:.4g}",
        ]
        for key in self.state_rms:
            lines.append(f"  state {key}: rms {self.state_rms[key]:.3e}, max |diff| "
                         f"{self.state_max_abs[key]:.3e} at (t, b, neuron) {self.state_argmax[key]}")
        return "\n".join(lines)

    def __str__(self) -> str:  # pragma: no cover - convenience
        return self.summary()


def compare_spikes(
    a: Any,
    b: Any,
    *,
    states_a: Mapping[str, Any] | None = None,
    states_b: Mapping[str, Any] | None = None,
    windows: Sequence[int] = MATCH_WINDOWS,
    vr_tau: float = VR_TAU_STEPS,
    vp_q: float | None = VP_Q_PER_STEP,
    names: tuple[str, str] = ("a", "b"),
) -> SpikeComparison:
    """Compare two spike rasters ``(T, B, n)`` (tensors or arrays of 0/1); see the module doc.

    ``states_a`` / ``states_b``: optional dicts of ``(T, B, n)`` traces compared by name.
    ``vp_q=None`` skips the Victor–Purpura distance (O(N_a N_b) per neuron in Python; NaN).
    """
    ra, rb = _raster(a, names[0]), _raster(b, names[1])
    if ra.shape != rb.shape:
        raise ValueError(f"compare_spikes: shapes differ, {names[0]} {ra.shape} vs {names[1]} {rb.shape}")
    T, B, n = ra.shape
    ca, cb = ra.sum(0).astype(np.int64), rb.sum(0).astype(np.int64)
    diff = ra != rb
    n_mis = int(diff.sum())
    first = None
    if n_mis:
        first = tuple(int(v) for v in np.argwhere(diff)[0])
    ta, tb = spike_times(ra), spike_times(rb)
    matched = {}
    denom = int(np.maximum(ca, cb).sum())
    for s in windows:
        m = sum(match_count(ta[bb][k], tb[bb][k], int(s)) for bb in range(B) for k in range(n))
        matched[int(s)] = 1.0 if denom == 0 else m / denom
    vr = np.array([[van_rossum(ta[bb][k], tb[bb][k], vr_tau) for k in range(n)] for bb in range(B)])
    if vp_q is None:
        vp = np.full((B, n), np.nan)
    else:
        vp = np.array([[victor_purpura(ta[bb][k], tb[bb][k], vp_q) for k in range(n)]
                       for bb in range(B)])
    rms, mx, arg = state_rms(states_a or {}, states_b or {})
    return SpikeComparison(
        names=tuple(names), shape=(T, B, n), count_a=ca, count_b=cb, count_diff=ca - cb,
        matched=matched, vr_tau=float(vr_tau), van_rossum=vr.reshape(B, n), vp_q=float(vp_q) if vp_q is not None else float('nan'),
        victor_purpura=vp.reshape(B, n), n_mismatch=n_mis, first_mismatch=first,
        state_rms=rms, state_max_abs=mx, state_argmax=arg,
    )
