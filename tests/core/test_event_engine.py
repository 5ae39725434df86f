"""Event engine specifics: both influence layouts, per-sequence active sets, sparse input,
the once-per-update non-finite check. Exactness bounds as everywhere (float64)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from evrtrl.models import EGRU, LIF, Stack

import evrtrl
from evrtrl.engine import loss_gradient
from evrtrl.event_engine import EventRTRL
from evrtrl.events import SparseSequence
from evrtrl.influence import choose_layout

from .helpers import egru, lif, per_step_loss, rel_err, spikes_in, values_in


def run_event(model, x, loss_fn, **kw):
    """Gradients of the event engine driven by hand (x dense or a SparseSequence)."""
    eng = EventRTRL(model, x.shape[1], **kw)
    for t in range(x.shape[0]):
        y = eng.step(x[t])
        _, g, _ = loss_gradient(loss_fn, y, t)
        if g is not None:
            eng.accumulate(g)
    return eng.gradients(), eng


def stack():
    g = torch.Generator().manual_seed(3)
    return Stack(EGRU(3, 5, theta_init=0.05, generator=g),
                 LIF(5, 4, tau_mem=0.01, tau_syn=0.005, dt=0.001, weight_scale=10.0,
                     generator=g)).double()


CASES = {
    "egru": lambda: (egru(density=0.5, seed=2), values_in(30, 3, 3, seed=2)),
    "lif": lambda: (lif(), spikes_in(40, 3, 4)),
    "lif-euler-subtract": lambda: (lif(integration="euler", reset="subtract"), spikes_in(40, 2, 4)),
    "stack": lambda: (stack(), values_in(30, 2, 3)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("layout", ["rows", "cols"])
def test_layouts_equal_dense(case, layout):
    model, x = CASES[case]()
    ge, eng = run_event(model, x, per_step_loss, layout=layout)
    assert set(eng.layouts) == {layout}
    gd = evrtrl.gradients(model, x, per_step_loss, method="dense")
    gb = evrtrl.gradients(model, x, per_step_loss, method="bptt")
    for k in gb:
        assert rel_err(ge[k], gd[k]) <= 1e-12, k
        assert rel_err(ge[k], gb[k]) <= 1e-10, k
    # the materialised influence matrix is the same in both layouts
    other, _ = run_event(model, x, per_step_loss, layout="cols" if layout == "rows" else "rows")
    for k in gb:
        assert rel_err(ge[k], other[k]) <= 1e-12, k


def test_layout_rule():
    from evrtrl.influence import COLS_FROM_ENTRIES
    assert choose_layout(64, 3300) == "rows" and choose_layout(256, 45000) == "cols"
    assert choose_layout(1, COLS_FROM_ENTRIES) == "cols"
    assert choose_layout(1, COLS_FROM_ENTRIES - 1) == "rows"
    assert choose_layout(16, 10, "cols") == "cols"
    with pytest.raises(evrtrl.UnknownMethodError):
        choose_layout(16, 10, "diagonal")
    eng = EventRTRL(egru(n=6), 1)
    assert eng.layouts == ["rows"]


def test_per_sequence_active_sets_do_less_coupling_work_than_the_union():
    """B = 8 sequences with their own activity: the coupling is padded to max_b |K_b|, not
    the union over the batch, and beta is the per-sequence fraction."""
    model = egru(d=3, n=24, theta=0.3, width=0.1, seed=4)
    x = values_in(40, 8, 3, seed=5) * 2
    ge, eng = run_event(model, x, per_step_loss)
    gb = evrtrl.gradients(model, x, per_step_loss, method="bptt")
    for k in gb:
        assert rel_err(ge[k], gb[k]) <= 1e-10, k
    # replay the active sets: per-sequence sizes, their max and the union
    w, st, first = model.weights(), model.initial_state(8), True
    per_seq, padded, union = [], [], []
    with torch.no_grad():
        for t in range(x.shape[0]):
            new, aux = model.step(w, st, x[t])
            lj = model.local_jacobian(w, st, x[t], new, aux, first)
            act = (lj.gain != 0).any(-1) | (lj.gain_direct["theta"] != 0)
            per_seq.append(act.sum(1).double().mean().item() / 24)
            padded.append(int(act.sum(1).max()))
            union.append(int(act.any(0).sum()))
            st, first = new, False
    assert eng.stats.beta == pytest.approx(per_seq, abs=1e-12)
    assert sum(padded) < sum(union)
    # coupling MACs follow the padded sizes: B n (R + P_{t-1}) k_{t-1} summed over steps
    assert eng.stats.macs["coupling"] < 0.75 * sum(
        8 * 24 * u * (3 + eng.stats.p_live) for u in union[:-1])


def test_sparse_input_equals_dense_input():
    d = 5
    rng = np.random.default_rng(0)
    samples = []
    for T in (12, 9, 12):
        mask = rng.random((T, d)) < 0.3
        step, ch = np.nonzero(mask)
        indptr = np.zeros(T + 1, dtype=np.int64)
        np.cumsum(np.bincount(step, minlength=T), out=indptr[1:])
        samples.append(SimpleNamespace(indptr=indptr, channels=ch.astype(np.int64),
                                       counts=rng.integers(1, 4, ch.size).astype(np.float32),
                                       n_channels=d))
    seq = SparseSequence.from_samples(samples, dtype=torch.float64)
    x = seq.to_dense()
    assert x.shape == (12, 3, d) and seq.shape == (12, 3, d)
    assert float(x[9:, 1].abs().sum()) == 0.0  # the short sample ends early
    model = lif(d=d, n=6)
    gs, _ = run_event(model, seq, per_step_loss)
    gx, _ = run_event(model, x, per_step_loss)
    gb = evrtrl.gradients(model, x, per_step_loss, method="bptt")
    assert sum(float(v.norm()) for v in gb.values()) > 0
    for k in gb:
        assert rel_err(gs[k], gx[k]) <= 1e-12, k
        assert rel_err(gs[k], gb[k]) <= 1e-10, k
    assert torch.equal(seq[3].to_dense(), x[3])


def test_datasets_sparse_steps_feed_the_engine():
    from evrtrl.datasets import SparseSteps
    s = SparseSteps(np.array([0, 2, 2, 3]), np.array([0, 3, 1]), np.array([1, 2, 1], np.float32), 4, 1000)
    seq = SparseSequence.from_samples([s, s], dtype=torch.float64)
    assert torch.equal(seq.to_dense()[:, 0], torch.from_numpy(s.to_dense()).double())


def test_non_finite_gradient_is_reported_once_per_update():
    model = egru()
    eng = EventRTRL(model, 2)
    x = values_in(5, 2, 3)
    active = 0
    for t in range(5):
        y = eng.step(x[t])
        eng.accumulate(torch.full_like(y, float("nan")))
        active += eng.N[-1][1]
    assert active > 0, "test case must have active units"
    assert not all(bool(torch.isfinite(g).all()) for g in eng.gradients().values())  # the engine returns them
    # the callers check once per update (evrtrl.finite), naming the parameter
    with pytest.raises(evrtrl.NonFiniteError, match=r"gradient of parameter '\w+' holds \d+ NaN"):
        evrtrl.gradients(model, x, lambda y, t: (y * float("nan")).sum(), method="event")
