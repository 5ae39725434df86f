"""Validation tests: small float64 networks; one torch thread (the CI machine has 2 cores,
and thread oversubscription makes the step-by-step loops 50x slower)."""
from __future__ import annotations

import pytest
import torch

from models import LIF


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _make_lif(d, n, *, seed, integration="exact", reset="zero", recurrent=True, scale=3.0,
             tau_mem=20e-3, tau_syn=10e-3, dt=1e-3, v_reset=0.0, v_leak=0.0,
             dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return LIF(d, n, tau_mem=tau_mem, tau_syn=tau_syn, dt=dt, reset=reset, recurrent=recurrent,
               integration=integration, weight_scale=scale, v_reset=v_reset, v_leak=v_leak,
               dtype=dtype, generator=g)


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
