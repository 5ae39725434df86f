"""Deferred steps of the compiled path (``EventRTRL(defer=L)``, ``chunk_update`` in
evrtrl/kernels/engine_kernel.cpp): up to L steps' influence updates run together, sequence
by sequence and column panel by column panel. They must give what the step-by-step path
(``defer=1``) gives, in float64 to 1e-12, for every cell configuration, stacks, shards and
sparse input, whatever reads the engine in between; and ``reset`` must restart an engine
exactly as a new one."""
from __future__ import annotations

import pytest
import torch

import evrtrl
from evrtrl.events import SparseSequence
from evrtrl.models import EGRU, LIF, Stack, random_masks
from evrtrl.online import OnlineLearner
from evrtrl.shards import ColumnShard

from . import test_compiled as TC
from . import test_jacobians as TJ
from .helpers import egru, per_step_loss, rel_err, spikes_in, values_in

KERNEL_PATHS = ("compiled",)
T, B = 23, 3  # T not a multiple of the deferrals below: the last flush is a partial one


def _stack() -> Stack:
    g = torch.Generator().manual_seed(4)
    return Stack(
        EGRU(2, 6, theta_init=0.05, masks=random_masks(EGRU.weight_shapes(2, 6), 0.5, seed=1),
             generator=g),
        LIF(6, 5, tau_mem=0.01, tau_syn=0.004, dt=0.001, weight_scale=12.0, reset="subtract",
            masks=random_masks(LIF.weight_shapes(6, 5), 0.6, seed=2), generator=g),
        EGRU(5, 4, theta_init=0.05, generator=g)).double()


def _run(model, x, defer, **kw):
    eng = evrtrl.EventRTRL(model, x.shape[1], kernel="compiled", defer=defer, **kw)
    losses = evrtrl.run_engine(eng, x, per_step_loss)
    return eng, losses


def _assert_same(a, b, tol=1e-12):
    ga, gb = a.gradients(), b.gradients()
    assert sum(float(v.norm()) for v in ga.values()) > 0
    for k in ga:
        assert rel_err(gb[k], ga[k]) <= tol, k
    for l, run in enumerate(a.runs):
        for j in range(l + 1):
            assert rel_err(b.influence(l, j), a.influence(l, j)) <= tol, (l, j)
        assert torch.equal(a.seq_active[l], b.seq_active[l])
        Na, Nb = a.N[l], b.N[l]
        assert Na[1] == Nb[1] and Na[4] == Nb[4]  # k, active count
        assert torch.equal(Na[6], Nb[6]) and torch.equal(Na[0], Nb[0])
        for x, y in zip(Na[2], Nb[2]):
            assert rel_err(y, x) <= tol
    sa, sb = a.stats, b.stats
    assert sa.steps == sb.steps and sa.alpha == sb.alpha and sa.beta == sb.beta
    assert len(sb.macs_per_step) == sb.steps and all(v > 0 for v in sb.macs_per_step)


@pytest.mark.parametrize("name,kw", TC.COVERED, ids=[c[0] for c in TC.COVERED])
def test_deferred_equals_step_by_step_for_every_cell(name, kw):
    layer = TJ._layer(name, kw)
    x = values_in(T, B, 3, seed=5) * 2
    ref, losses = _run(layer, x, 1)
    for defer in (4, 32):
        eng, got = _run(layer, x, defer)
        assert eng.compiled.defer == defer
        assert got == losses  # the forward pass is never deferred
        _assert_same(ref, eng)


@pytest.mark.parametrize("defer", [2, 7, 32])
def test_deferred_stack_matches_step_by_step_and_bptt(defer):
    model = _stack()
    x = values_in(30, B, 2, seed=3)
    ref, _ = _run(model, x, 1)
    eng, _ = _run(model, x, defer)
    _assert_same(ref, eng)
    bptt = evrtrl.gradients(model, x, per_step_loss, method="bptt")
    got = eng.gradients()
    for k in bptt:
        assert rel_err(got[k], bptt[k]) <= 1e-10, k


def test_deferred_shard_and_sparse_input():
    model = egru(d=4, n=7, density=0.6, theta=0.05, width=1.0)
    x = spikes_in(T, B, 4, p=0.3, seed=2)
    for shard in (None, ColumnShard(1, 3)):
        ref, _ = _run(model, x, 1, shard=shard)
        eng, _ = _run(model, SparseSequence.from_dense(x), 8, shard=shard)
        _assert_same(ref, eng)


def test_readers_settle_and_macs_match_per_step_at_batch_one():
    """Reading N, stats or the gradient mid-run finishes the queued steps; with B = 1 the
    per-step multiply-add counts of a deferred run equal the step-by-step ones."""
    model = egru(d=3, n=6, theta=0.05, width=1.0)
    x = values_in(T, 1, 3, seed=1)
    ref, _ = _run(model, x, 1)
    eng = evrtrl.EventRTRL(model, 1, kernel="compiled", defer=32)
    for t in range(T):
        y = eng.step(x[t])
        eng.accumulate(per_step_loss_grad(y, t))
        if t == 10:
            assert len(eng.compiled.queue) == 11
            _ = eng.N  # a reader: the queue is run
            assert not eng.compiled.queue
    assert len(eng.compiled.queue) == T - 11
    assert eng.stats.macs_per_step == ref.stats.macs_per_step
    assert not eng.compiled.queue
    _assert_same(ref, eng)


def per_step_loss_grad(y, t):
    y = y.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(per_step_loss(y, t), y)
    return g


def test_refresh_finishes_queued_steps_with_the_old_weights():
    """Steps queued before a weight change are finished with the weights they started with."""
    def run(defer):
        model = egru(d=3, n=6, theta=0.05, width=1.0)
        x = values_in(16, B, 3, seed=7)
        eng = evrtrl.EventRTRL(model, B, kernel="compiled", defer=defer)
        evrtrl.run_engine(eng, x[:9], per_step_loss)
        with torch.no_grad():
            model.U_u.add_(0.05)
            model.b_z.sub_(0.1)
        eng.refresh()
        evrtrl.run_engine(eng, x[9:], per_step_loss, t0=9)
        return eng
    _assert_same(run(1), run(32))


def test_reset_restarts_like_a_new_engine_and_keeps_the_influence_tensors():
    model = _stack()
    x1, x2 = values_in(12, B, 2, seed=8), values_in(17, B, 2, seed=9)
    eng, _ = _run(model, x1, 5)
    ptrs = [M.data_ptr() for row in eng.M for M in row]
    scratch = eng.compiled.scratch
    assert any(buf.numel() for buf in scratch)  # grown by the flushes
    eng.reset()
    assert eng.compiled.scratch is scratch  # the kernel's buffers go to the next compiled step
    evrtrl.run_engine(eng, x2, per_step_loss)
    assert [M.data_ptr() for row in eng.M for M in row] == ptrs
    new, _ = _run(model, x2, 5)
    _assert_same(new, eng, tol=0.0)  # the same arithmetic from the same zeros: bit for bit


def test_reset_zeroes_the_influence_after_partial_reach_sets():
    """After a run whose reach sets stayed small (chunk_update wrote only their segments, back
    from its scratch copies), reset leaves every influence tensor exactly zero and the next run
    equals a new engine's bit for bit."""
    model = egru(d=5, n=70, density=0.1, theta=0.4, width=0.3, seed=3)
    x = spikes_in(12, 2, 5, p=0.5, seed=4) * 3
    eng, _ = _run(model, x, 32)
    eng.settle()
    assert 0 < float(_reach_bits(eng, 0, 0).float().mean()) < 0.5
    assert bool(eng.M[0][0].any())
    eng.reset()
    assert not any(bool(M.any()) for row in eng.M for M in row)
    evrtrl.run_engine(eng, x, per_step_loss)
    new, _ = _run(model, x, 32)
    _assert_same(new, eng, tol=0.0)


def test_online_learner_reuses_an_earlier_engine():
    def learn(reuse_from_first):
        model = egru(d=3, n=6, theta=0.05, width=1.0)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        first = OnlineLearner(model, opt, per_step_loss, k=5)
        first.run(values_in(10, B, 3, seed=1))
        second = OnlineLearner(model, opt, per_step_loss, k=5,
                               reuse=first.engine if reuse_from_first else None)
        second.run(values_in(10, B, 3, seed=2))
        second.run(values_in(10, B, 3, seed=3))  # a fresh run restarts its own engine
        return first.engine, second.engine, model
    e1, e2, m_reused = learn(True)
    assert e2 is e1
    _, e3, m_new = learn(False)
    assert e3 is not e1
    for (name, p), q in zip(m_reused.named_parameters(), m_new.parameters()):
        assert torch.equal(p, q), name
    # a different batch size is not reused
    model = egru(d=3, n=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    a = OnlineLearner(model, opt, per_step_loss)
    a.run(values_in(4, 2, 3))
    b = OnlineLearner(model, opt, per_step_loss, reuse=a.engine)
    b.run(values_in(4, 3, 3))
    assert b.engine is not a.engine


def test_cleared_statistics_lists_do_not_break_a_later_flush():
    """A long stream folds the per-step lists into running sums and clears them
    (examples/long_stream.py); steps queued after that still land at their positions."""
    model = egru(d=3, n=6, theta=0.05, width=1.0)
    x = values_in(20, 1, 3, seed=4)
    eng = evrtrl.EventRTRL(model, 1, kernel="compiled", defer=32)
    evrtrl.run_engine(eng, x[:7], per_step_loss)
    st = eng.stats  # settles
    for lst in (st.alpha, st.beta, st.gamma, st.macs_per_step):
        lst.clear()
    evrtrl.run_engine(eng, x[7:], per_step_loss, t0=7)
    assert len(eng.compiled.queue) == 13
    assert len(eng.stats.macs_per_step) == 13 and all(v > 0 for v in eng.stats.macs_per_step)


def _reach_bits(eng, l, j):
    """The reach sets of M^{l,j} as bools (B, R, n_j)."""
    r = eng.compiled.reach[l][j]
    n = eng.blocks[j].layer.hidden_size
    bits = (r[..., :, None] >> torch.arange(64)) & 1
    return bits.reshape(*r.shape[:2], -1)[..., :n].bool()


def _assert_zero_outside_reach(eng):
    """M^{l,j}[b, r] is exactly zero outside the segments of the units in r's reach set."""
    for l in range(len(eng.runs)):
        for j in range(l + 1):
            seg = eng.blocks[j].seg_ptr
            unit = torch.repeat_interleave(torch.arange(seg.numel() - 1), seg.diff())  # per column
            inside = _reach_bits(eng, l, j)[:, :, unit]  # (B, R, C)
            assert not bool((eng.M[l][j] * ~inside).any()), (l, j)


@pytest.mark.parametrize("n", [70, 130])  # reach sets of two and three 64-bit words
def test_deferred_reach_sets_across_words_and_sparse_activity(n):
    """Sparse activity: the reach sets stay small (the kernel skips their complement) and
    hold M's support; results equal the step-by-step path and BPTT."""
    model = egru(d=5, n=n, density=0.1, theta=0.4, width=0.3, seed=3)
    x = spikes_in(12, 2, 5, p=0.5, seed=4) * 3
    ref, _ = _run(model, x, 1)
    eng, _ = _run(model, x, 32)
    _assert_same(ref, eng)
    filled = float(_reach_bits(eng, 0, 0).float().mean())
    assert 0 < filled < 0.5, filled  # the mechanism is at work: most segments skipped
    _assert_zero_outside_reach(eng)
    bptt = evrtrl.gradients(model, x, per_step_loss, method="bptt")
    for k, v in eng.gradients().items():
        assert rel_err(v, bptt[k]) <= 1e-10, k


def test_reach_sets_hold_the_support_of_m_in_a_stack():
    eng, _ = _run(_stack(), values_in(30, B, 2, seed=3), 7)
    eng.settle()
    _assert_zero_outside_reach(eng)


def test_a_single_step_flush_widens_the_reach_sets_to_every_unit():
    """layer_update keeps no reach sets: after it every row reaches every unit, and a later
    chunk of steps is still exact."""
    model = egru(d=3, n=9, density=0.5, theta=0.3, width=0.5)
    x = values_in(20, B, 3, seed=6)
    ref, _ = _run(model, x, 1)
    eng = evrtrl.EventRTRL(model, B, kernel="compiled", defer=32)
    evrtrl.run_engine(eng, x[:1], per_step_loss)
    eng.settle()  # one queued step: layer_update
    assert bool(_reach_bits(eng, 0, 0).all())
    evrtrl.run_engine(eng, x[1:], per_step_loss, t0=1)
    _assert_same(ref, eng)


def test_reset_rebuilds_the_columns_after_a_mask_change():
    model = egru(d=3, n=8, density=0.5, theta=0.05, width=1.0)
    x = values_in(15, B, 3, seed=2)
    for kernel in ("compiled", "torch"):
        eng = evrtrl.EventRTRL(model, B, kernel=kernel)
        evrtrl.run_engine(eng, x, per_step_loss)
        blocks = list(eng.blocks)
        eng.reset()
        assert eng.blocks[0] is blocks[0]  # same masks: the columns are kept
        with torch.no_grad():
            model.mask_U_u.copy_(~model.mask_U_u)  # prune and regrow recurrent weights
        eng.reset()
        assert eng.blocks[0] is not blocks[0]
        evrtrl.run_engine(eng, x, per_step_loss)
        new = evrtrl.EventRTRL(model, B, kernel=kernel)
        evrtrl.run_engine(new, x, per_step_loss)
        got, want = eng.gradients(), new.gradients()
        for k in want:
            assert torch.equal(got[k], want[k]), (kernel, k)
        with torch.no_grad():
            model.mask_U_u.copy_(~model.mask_U_u)


@pytest.mark.parametrize("built_under", [True, False])
def test_inference_mode_on_either_side_of_the_engine(built_under):
    """The kernel's scratch buffers (``CompiledStep.scratch``, grown in place by
    ``chunk_update``) work whether the engine was built under ``torch.inference_mode`` and run
    outside it, or the reverse; the gradient is the plain engine's."""
    model = _stack()
    x = spikes_in(T, B, 2, seed=9)

    def feed(eng):  # upstream gradients given (a loss's autograd would not run in inference mode)
        for t in range(T):
            y = eng.step(x[t])
            eng.accumulate(torch.cos(torch.arange(y.numel(), dtype=y.dtype) + t).view_as(y))

    ref = evrtrl.EventRTRL(model, B, kernel="compiled", defer=8)
    feed(ref)
    with torch.inference_mode(built_under):
        eng = evrtrl.EventRTRL(model, B, kernel="compiled", defer=8)
    with torch.inference_mode(not built_under):
        feed(eng)
    _assert_same(ref, eng)
