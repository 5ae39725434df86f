"""How far Brian2 ``method='exact'`` and Norse's forward Euler drift apart for the same network.

Both runs share the network (time constants, ``dt``, weights ``W``, ``U``) and the input: one
set of continuous-time Poisson input events, binned onto the ``dt`` grid (two events of one
channel in one step count once). The differences come from two sources, both shrinking with
``dt / tau_mem``:

1. the integration error of forward Euler (first order in ``dt / tau``);
2. the schedules: in the exact (Brian2) schedule the current jumps of step t act from step
   t+1 on and recurrent spikes act within the same step; in Norse's schedule the input of step
   t acts at step t and recurrent spikes one step later. Spike labels therefore differ by
   about one step even as ``dt -> 0``; in seconds the difference vanishes with ``dt``.

:func:`drift_study` returns one :class:`DriftRow` per ``dt / tau_mem``; docs/validation.md
quotes the figures and states the bound that tests/validation/test_validation_drift.py checks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from evrtrl.models import LIF

from evrtrl.spikecompare import compare_spikes
from evrtrl.validation.brian2_bridge import run_brian2
from evrtrl.validation.norse_bridge import run_norse

__all__ = ["DriftRow", "drift_pair", "drift_study", "poisson_events", "bin_events"]


@dataclass
class DriftRow:
    """Agreement of exact (Brian2) and euler (Norse) runs at one ``dt / tau_mem``."""

    dt_over_tau: float
    dt: float
    steps: int
    recurrent: bool
    seed: int
    spikes_exact: int
    spikes_euler: int
    relative_count_error: float   # sum |N_a - N_b| / max(sum N_a, sum N_b)
    max_count_diff: int           # max over neurons of |N_a - N_b|
    max_relative_neuron: float    # max over neurons of |N_a - N_b| / max(N_a, N_b, 1)
    matched: dict                 # {0, 1, 2 steps: fraction matched}
    matched_time: float           # fraction matched within 2 ms (in seconds, not steps)


def poisson_events(channels: int, rate_hz: float, duration: float, seed: int) -> list[np.ndarray]:
    """Per channel, sorted event times (s) of a Poisson process."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(channels):
        k = rng.poisson(rate_hz * duration)
        out.append(np.sort(rng.uniform(0.0, duration, size=k)))
    return out


def bin_events(events: list[np.ndarray], dt: float, steps: int, batch: int = 1) -> torch.Tensor:
    """0/1 raster (T, batch, channels) of the events on the ``dt`` grid (same for every batch)."""
    x = torch.zeros(steps, batch, len(events), dtype=torch.float64)
    for c, ts in enumerate(events):
        idx = np.floor(ts / dt + 1e-9).astype(np.int64)
        idx = idx[idx < steps]
        x[idx, :, c] = 1.0
    return x


def _models(d, n, dt, tau_mem, tau_syn, recurrent, scale, seed):

    g = torch.Generator().manual_seed(seed)
    kw = dict(tau_mem=tau_mem, tau_syn=tau_syn, dt=dt, recurrent=recurrent, dtype=torch.float64)
    exact = LIF(d, n, integration="exact", weight_scale=scale, generator=g, **kw)
    euler = LIF(d, n, integration="euler", **kw)
    if recurrent:  # recurrent weights at 1/4 of the input scale: no runaway excitation
        with torch.no_grad():
            exact.U.mul_(0.25)
    euler.load_state_dict(exact.state_dict())
    return exact, euler


def drift_pair(dt_over_tau: float, *, recurrent: bool = True, seed: int = 0, n: int = 20,
               d: int = 20, duration: float = 0.5, tau_mem: float = 20e-3,
               tau_syn: float = 10e-3, rate_hz: float = 40.0, scale: float = None,
               use_simulators: bool = True) -> DriftRow:
    """One configuration: Brian2 (exact) vs Norse (euler); ``use_simulators=False`` uses the
    library's own exact and euler LIF instead (validated equal to them elsewhere).

    ``scale`` (weight scale) defaults to ``2.5 / sqrt(rate * tau_mem)``-ish drive that keeps
    the neurons firing at a few to a few tens of Hz independently of ``dt``.
    """
    import evrtrl

    dt = dt_over_tau * tau_mem
    steps = int(round(duration / dt))
    if scale is None:
        scale = 6.0
    exact, euler = _models(d, n, dt, tau_mem, tau_syn, recurrent, scale, seed)
    x = bin_events(poisson_events(d, rate_hz, duration, seed), dt, steps)
    if use_simulators:

        a, b = run_brian2(exact, x).spikes, run_norse(euler, x).spikes
    else:
        a, b = evrtrl.simulate(exact, x).spikes, evrtrl.simulate(euler, x).spikes
    c = compare_spikes(a, b, windows=(0, 1, 2), vp_q=None, names=("exact", "euler"))
    w = max(0, int(np.floor(2e-3 / dt + 1e-9)))
    ct = compare_spikes(a, b, windows=(w,), vp_q=None) if w not in c.matched else c
    ca, cb = c.count_a.astype(float), c.count_b.astype(float)
    rel_neuron = float((np.abs(ca - cb) / np.maximum(np.maximum(ca, cb), 1)).max())
    return DriftRow(
        dt_over_tau=dt_over_tau, dt=dt, steps=steps, recurrent=recurrent, seed=seed,
        spikes_exact=c.total_a, spikes_euler=c.total_b,
        relative_count_error=c.relative_count_error(),
        max_count_diff=int(np.abs(c.count_diff).max()), max_relative_neuron=rel_neuron,
        matched=dict(c.matched), matched_time=ct.matched[w],
    )


def drift_study(ratios: Sequence[float] = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2),
                seeds: Sequence[int] = (0, 1, 2), recurrent: Sequence[bool] = (False, True),
                **kw) -> list[DriftRow]:
    """:func:`drift_pair` over ``ratios`` x ``seeds`` x ``recurrent``."""
    return [drift_pair(r, recurrent=rec, seed=s, **kw)
            for rec in recurrent for r in ratios for s in seeds]
