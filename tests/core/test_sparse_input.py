"""A SparseSequence as ``x`` of every sequence entry point: the event engine reads each
SparseStep directly, dense RTRL and BPTT get one dense step at a time; every gradient
equals the one from the equivalent dense tensor (float64, <= 1e-12 relative)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from evrtrl.models import EGRU, LIF, Stack

import evrtrl
from evrtrl.engine import run_engine
from evrtrl.errors import NonFiniteError, ShapeError
from evrtrl.events import SparseSequence, SparseStep

from .helpers import ENGINES, egru, lif, per_step_loss, rel_err, spikes_in, values_in


def stack():
    g = torch.Generator().manual_seed(3)
    return Stack(EGRU(3, 5, theta_init=0.05, generator=g),
                 LIF(5, 4, tau_mem=0.01, tau_syn=0.005, dt=0.001, weight_scale=10.0,
                     generator=g)).double()


def sparse_values(T, B, d, seed=0):
    """Real values at ~40 % of the entries; steps 2 and 5 silent; sequence 1 ends 4 steps early."""
    g = torch.Generator().manual_seed(seed)
    x = values_in(T, B, d, seed=seed) * (torch.rand(T, B, d, generator=g, dtype=torch.float64) < 0.4)
    x[[2, 5]] = 0.0
    x[T - 4:, 1] = 0.0
    return x


def sparse_spikes(T, B, d, seed=0):
    x = spikes_in(T, B, d, seed=seed)
    x[[2, 5]] = 0.0
    x[T - 4:, 1] = 0.0
    return x


CASES = {
    "egru": lambda: (egru(), sparse_values(24, 3, 3)),
    "lif": lambda: (lif(), sparse_spikes(30, 3, 4)),
    "stack": lambda: (stack(), sparse_values(24, 2, 3, seed=1)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_from_sparse_equal_dense(case):
    model, x = CASES[case]()
    seq = SparseSequence.from_dense(x)
    assert seq.shape == tuple(x.shape) and torch.equal(seq.to_dense(), x)
    assert seq.indptr[3] == seq.indptr[2] and seq.indptr[6] == seq.indptr[5]  # silent steps
    ref = {m: evrtrl.gradients(model, x, per_step_loss, method=m) for m in ENGINES}
    assert sum(float(v.norm()) for v in ref["bptt"].values()) > 0
    for m in ENGINES:
        gs = evrtrl.gradients(model, seq, per_step_loss, method=m)
        assert set(gs) == set(ref[m])
        for k in ref[m]:
            assert rel_err(gs[k], ref[m][k]) <= 1e-12, (m, k)
            assert rel_err(gs[k], ref["dense"][k]) <= 1e-12 or m == "bptt", (m, k)
            assert rel_err(gs[k], ref["bptt"][k]) <= 1e-10, (m, k)


class Recorder:
    """An engine that records what run_engine hands to ``step``."""

    def __init__(self, name, B, n):
        self.name, self.B, self.n, self.seen = name, B, n, []

    def step(self, x):
        self.seen.append(x)
        return torch.zeros(self.B, self.n, dtype=torch.float64)

    def accumulate(self, dL_dy):
        pass


@pytest.mark.parametrize("name", ENGINES)
def test_run_engine_hands_sparse_steps_to_the_event_engine_only(name):
    x = sparse_spikes(9, 3, 4)
    seq = SparseSequence.from_dense(x)
    rec = Recorder(name, 3, 2)
    run_engine(rec, seq, per_step_loss)
    assert len(rec.seen) == 9
    for t, xt in enumerate(rec.seen):
        if name == "event":
            assert isinstance(xt, SparseStep)
            assert torch.equal(xt.to_dense(), x[t])
            assert list(xt.channels) == sorted(set(torch.nonzero(x[t])[:, 1].tolist()))
        else:  # one dense step, never the (T, B, d) tensor
            assert isinstance(xt, torch.Tensor) and xt.shape == (3, 4) and torch.equal(xt, x[t])


def test_simulate_sparse_equals_dense():
    model, x = CASES["stack"]()
    a, b = evrtrl.simulate(model, SparseSequence.from_dense(x)), evrtrl.simulate(model, x)
    assert torch.equal(a.outputs, b.outputs) and torch.equal(a.spikes, b.spikes)
    for la, lb in zip(a.layers, b.layers):
        assert all(torch.equal(la.states[k], lb.states[k]) for k in lb.states)


@pytest.mark.parametrize("method,k", [("event", 3), ("dense", 5), ("bptt", 4)])
def test_online_learner_sparse_equals_dense(method, k):
    weights = []
    for sparse in (False, True):
        model, x = CASES["lif"]()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        learner = evrtrl.OnlineLearner(model, opt, per_step_loss, k=k, method=method)
        losses = learner.run(SparseSequence.from_dense(x) if sparse else x)
        weights.append((losses, [p.detach().clone() for p in model.parameters()]))
    (l0, w0), (l1, w1) = weights
    assert np.allclose(l0, l1, rtol=1e-12, atol=0)
    for a, b in zip(w0, w1):
        assert rel_err(b, a) <= 1e-12


def test_bad_sparse_sequences_are_refused():
    model = lif(d=4)
    x = sparse_spikes(6, 2, 4)
    x[0] = 1.0
    good = SparseSequence.from_dense(x)
    with pytest.raises(ShapeError, match="d = 5"):
        evrtrl.gradients(model, SparseSequence.from_dense(torch.ones(3, 2, 5, dtype=torch.float64)),
                         per_step_loss)
    with pytest.raises(ShapeError, match="dtype"):
        evrtrl.simulate(model, SparseSequence.from_dense(x.float()))
    bad = good.values.clone()
    bad[3] = float("nan")
    with pytest.raises(NonFiniteError, match=r"\(t, b, channel\)"):
        evrtrl.gradients(model, SparseSequence(good.indptr, good.index, bad, 6, 2, 4), per_step_loss)
    idx = good.index.clone()
    idx[0] = 8
    with pytest.raises(ShapeError, match=r"\[0, 8\)"):
        evrtrl.gradients(model, SparseSequence(good.indptr, idx, good.values, 6, 2, 4), per_step_loss)
    a, b = int(good.indptr[0]), int(good.indptr[1])
    assert b - a == 8
    idx = good.index.clone()
    idx[a + 1] = idx[a]
    with pytest.raises(ShapeError, match="step 0"):
        evrtrl.OnlineLearner(model, torch.optim.SGD(model.parameters(), lr=0.1), per_step_loss).run(
            SparseSequence(good.indptr, idx, good.values, 6, 2, 4))
