"""Validation tests: small float64 networks (tests/conftest.py pins one torch thread)."""
from __future__ import annotations

import pytest
import torch

import evrtrl
from evrtrl.models import LIF


def _make_lif(d, n, *, seed, integration="exact", reset="zero", recurrent=True, scale=3.0,
             tau_mem=20e-3, tau_syn=10e-3, dt=1e-3, v_reset=0.0, v_leak=0.0,
             dtype=torch.float64, per_neuron=False, synapse=True, **kw):
    """Seeded LIF; ``per_neuron``: heterogeneous tau_mem, tau_syn, v_th, v_leak, v_reset, bias."""
    g = torch.Generator().manual_seed(seed)
    if per_neuron:
        h = torch.Generator().manual_seed(500 + seed)
        u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=h, dtype=torch.float64)  # noqa: E731
        kw = {**dict(tau_mem=u(8e-3, 30e-3), tau_syn=u(3e-3, 6e-3), v_th=u(0.7, 1.3), v_leak=u(-0.1, 0.2),
                     v_reset=u(-0.3, 0.1), bias=u(-0.05, 0.1)), **kw}
    else:
        kw = dict(tau_mem=tau_mem, tau_syn=tau_syn, v_reset=v_reset, v_leak=v_leak, **kw)
    if not synapse:
        kw.pop("tau_syn")
    return LIF(d, n, dt=dt, reset=reset, recurrent=recurrent, synapse=synapse,
               integration=integration, weight_scale=scale, dtype=dtype, generator=g, **kw)


def _spikes(T, B, d, rate, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(10_000 + seed)
    return (torch.rand(T, B, d, generator=g) < rate).to(dtype)


@pytest.fixture
def make_lif():
    """``make_lif(d, n, seed=..., **LIF options)``: a seeded float64 LIF layer."""
    return _make_lif


@pytest.fixture
def make_spikes():
    """``make_spikes(T, B, d, rate, seed)``: seeded Bernoulli 0/1 input spikes (float64)."""
    return _spikes


def _same_dynamics(model, x, res, atol):
    """Identical spike rasters in every layer and end-of-step v, i within ``atol``."""
    sim = evrtrl.simulate(model, x)
    for l, (a, b) in enumerate(zip(sim.layers, res.layers)):
        assert a.spikes.sum() > 0, "test network is silent; the check would be vacuous"
        mism = (a.spikes != b.spikes).nonzero()
        assert mism.numel() == 0, f"layer {l}: first mismatch (t, b, k) = {mism[0].tolist()}"
        assert set(a.states) == set(b.states), f"layer {l}: states {set(a.states)} vs {set(b.states)}"
        for key in a.states:
            err = (a.states[key] - b.states[key]).abs().max().item()
            assert err <= atol, f"layer {l} state {key}: max |diff| {err:.3e}"
    return sim


@pytest.fixture
def same_dynamics():
    """``same_dynamics(model, x, bridge_result, atol)``: the library reproduces a simulator."""
    return _same_dynamics
