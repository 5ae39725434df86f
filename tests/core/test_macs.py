"""Counted multiply-adds: the event engine's count equals the analytic count of the work
it does, falls strictly below dense whenever beta < 1, and the coupled term is zero
when no unit is inside its window."""
from __future__ import annotations

import torch

import evrtrl
from evrtrl.models import EGRU, Triangle

from .helpers import egru, per_step_loss, values_in


def test_event_macs_equal_analytic_count_hand_built():
    """Two EGRU units, one input, T = 3; every term of the count computed by hand."""
    model = EGRU(1, 2, theta_init=0.5, pseudo_derivative=Triangle(0.7, 0.5)).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.zero_()
        model.W_z.fill_(2.0)      # candidate follows the input
        model.b_u.fill_(3.0)      # u ~ 1: c ~ z
        model.theta.copy_(torch.tensor([0.5, 5.0]))  # unit 1 can never enter its window
    x = torch.tensor([[[1.0]], [[1.0]], [[0.0]]], dtype=torch.float64)
    eng = evrtrl.make_engine(model, 1, "event")
    n, m, d = 2, 1, 1
    G = 3 + 3 + 4  # local factors: recurrent, input projections, per-unit parameters
    expected = []
    p_born = 4 * n  # b_u, b_r, b_z, theta born at step 0
    entries = 4 * n  # immediate-table entries (born weight entries x m components)
    K_prev, prev_width = 0, 0
    born_sources: set[int] = set()
    y_prev = torch.zeros(1, 2, dtype=torch.float64)
    # the columns worked on: the born prefix (pure torch), every live column (compiled: the
    # columns are grouped by unit, evrtrl.influence)
    p_live = 4 * n + 3 * n * d + 3 * n * n
    unit_order = eng.kernel == "compiled"
    for t in range(3):
        y = eng.step(x[t])
        eng.accumulate(torch.ones_like(y))
        k = eng.N[0][1]
        # births at step t: input channel fires (3 weights x n rows each), rec sources fire
        if t == 0:
            p_born += 3 * n * d                             # W_u, W_r, W_z columns born
            entries += 3 * n * d * m
        new = {int(j) for j in y_prev[0].nonzero()} - born_sources
        born_sources |= new
        p_born += 3 * n * len(new)                          # U_u, U_r, U_z[:, j] born
        entries += 3 * n * len(new) * m
        macs = n * 1 if t > 0 else 0                        # lazy diagonal pass: T <- D T (M is 0 at t=0)
        # (no unit is materialised: its decay stays within [2^-40, 2^40] over 3 steps)
        macs += n * G * 1                                   # T^{-1} phi for all G groups
        if t > 0 and K_prev:
            macs += 3 * n * m * K_prev                      # building A[:, K]
            macs += n * m * K_prev * prev_width             # A[:, K] @ N[K]
        macs += entries                                     # immediate: every born entry
        width = p_live if unit_order else p_born
        if k:
            macs += k * m * width + n * m * m + k           # emission rows K, G T, theta direct
        macs += k * width                                   # gradient rows K
        expected.append(macs)
        K_prev, prev_width = k, width
        y_prev = y.clone()
        assert int((y != 0).sum()) == 0 or t < 2
    counted = eng.stats.macs_per_step
    assert counted == expected, (counted, expected)
    assert eng.runs[0].entries == entries
    # unit 1 is never active: beta <= 1/2 at every step
    assert max(eng.stats.beta) <= 0.5


def test_event_strictly_below_dense_when_beta_below_one():
    model = egru(d=3, n=12, theta=0.3, width=0.2, density=0.5)
    x = values_in(30, 2, 3)
    ge = evrtrl.gradients(model, x, per_step_loss, method="event")
    gd = evrtrl.gradients(model, x, per_step_loss, method="dense")
    assert max(ge.stats.beta) < 1.0
    assert ge.stats.total_macs < gd.stats.total_macs
    for me, md in zip(ge.stats.macs_per_step, gd.stats.macs_per_step):
        assert me < md


def test_coupled_term_zero_when_no_unit_in_window():
    """Thresholds far above any reachable c: no events, no window, no coupling work."""
    model = egru(d=3, n=8, theta=5.0, width=0.5)
    x = values_in(20, 2, 3)
    g = evrtrl.gradients(model, x, per_step_loss, method="event")
    assert g.stats.macs.get("coupling", 0) == 0
    assert max(g.stats.beta) == 0.0
    # and the gradient still equals BPTT (only biases and input weights learn nothing
    # through outputs: the gradient is exactly zero everywhere)
    gb = evrtrl.gradients(model, x, per_step_loss, method="bptt")
    for k in gb:
        assert torch.equal(g[k], gb[k])


def test_influence_bytes_and_live_columns():
    model = egru(d=3, n=10, density=0.3)
    eng = evrtrl.make_engine(model, 1, "event")
    p_live = sum(int(m.sum()) for m in model.masks.values()) + 4 * 10
    assert eng.stats.p_live == p_live
    assert eng.stats.influence_bytes == 10 * p_live * 8
