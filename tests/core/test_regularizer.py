"""Per-layer loss terms (the activity regulariser): exact in every engine, float64.

event == dense (all and live columns) <= 1e-12 relative, event and dense == BPTT <= 1e-10,
for single EGRU and LIF layers and for stacks, where the regulariser reads every layer.
"""
from __future__ import annotations

import copy

import pytest
import torch

import evrtrl
from evrtrl.errors import ConfigError
from evrtrl.models import EGRU, LIF, Stack
from evrtrl.regularizers import ActivityRegularizer

from .helpers import egru, last_step_loss, lif, per_step_loss, rel_err, spikes_in, values_in

ENGINES = ("event", "dense", "dense-live", "bptt")


def assert_agree(model, x, loss_fn, reg):
    g = {m: evrtrl.gradients(model, x, loss_fn, method=m, layer_loss=reg) for m in ENGINES}
    total = sum(float(v.norm()) for v in g["bptt"].values())
    assert total > 0, "degenerate test case: the BPTT gradient is zero"
    for name in g["bptt"]:
        for m in ("dense", "dense-live"):
            e = rel_err(g["event"][name], g[m][name])
            assert e <= 1e-12, f"{name}: event vs {m} rel err {e:.2e}"
        for m in ("event", "dense"):
            e = rel_err(g[m][name], g["bptt"][name])
            assert e <= 1e-10, f"{name}: {m} vs bptt rel err {e:.2e}"
    return g


def assert_changes_gradient(model, x, loss_fn, reg):
    """The regulariser must contribute (else the agreement above proves nothing about it)."""
    with_reg = evrtrl.gradients(model, x, loss_fn, method="bptt", layer_loss=reg)
    without = evrtrl.gradients(model, x, loss_fn, method="bptt")
    diff = sum(float((with_reg[k] - without[k]).norm()) for k in with_reg)
    assert diff > 1e-6 * sum(float(v.norm()) for v in without.values())
    return with_reg, without


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("density", [None, 0.4])
@pytest.mark.parametrize("target", [0.0, 0.05])
def test_egru(B, density, target):
    model = egru(density=density, seed=B, width=0.3)
    x = values_in(25, B, 3, seed=B)
    reg = ActivityRegularizer(0.7, target=target)
    assert float(evrtrl.simulate(model, x).spikes.mean()) > 0.05, "test case must fire"
    assert_agree(model, x, per_step_loss, reg)
    assert_changes_gradient(model, x, per_step_loss, reg)


def test_egru_regularizer_alone_and_last_step_loss():
    """No task loss at most steps: the per-layer term is the only error signal there."""
    model = egru(seed=3)
    T = 20
    x = values_in(T, 2, 3, seed=3)
    assert_agree(model, x, last_step_loss(T), ActivityRegularizer(1.0))
    g = assert_agree(model, x, lambda y, t: None, ActivityRegularizer(1.0))
    assert sum(float(v.norm()) for v in g["event"].values()) > 0


@pytest.mark.parametrize("integration,reset", [("exact", "zero"), ("euler", "subtract")])
def test_lif(integration, reset):
    model = lif(integration=integration, reset=reset, density=0.6)
    x = spikes_in(40, 2, 4)
    reg = ActivityRegularizer(0.5)
    assert 0 < float(evrtrl.simulate(model, x).spikes.mean()) < 0.9
    assert_agree(model, x, per_step_loss, reg)
    assert_changes_gradient(model, x, per_step_loss, reg)


def _stack(kinds):
    def make(kind, d, n, seed):
        g = torch.Generator().manual_seed(seed)
        if kind == "egru":
            return EGRU(d, n, theta_init=0.05, generator=g)
        return LIF(d, n, tau_mem=0.01, tau_syn=0.005, dt=0.001, weight_scale=10.0, generator=g)
    return Stack(make(kinds[0], 3, 5, 1), make(kinds[1], 5, 4, 2)).double()


@pytest.mark.parametrize("kinds", [("egru", "egru"), ("lif", "egru"), ("egru", "lif")])
def test_stacks_every_layer(kinds):
    model = _stack(kinds)
    x = spikes_in(30, 2, 3, p=0.4) if kinds[0] == "lif" else values_in(30, 2, 3)
    reg = ActivityRegularizer(0.8)
    assert_agree(model, x, per_step_loss, reg)
    # the layer-0 term alone reaches layer 0's parameters and nothing above it
    only0 = lambda l, y, t: reg(l, y, t) if l == 0 else None  # noqa: E731
    g = assert_agree(model, x, lambda y, t: None, only0)
    assert sum(float(v.norm()) for k, v in g["event"].items() if k.startswith("0.")) > 0
    assert all(float(v.norm()) == 0 for k, v in g["event"].items() if k.startswith("1."))


def test_three_layer_stack():
    layers = [EGRU(2, 6, theta_init=0.05), LIF(6, 5, tau_mem=0.01, tau_syn=0.004, dt=0.001,
                                                weight_scale=12.0), EGRU(5, 3, theta_init=0.05)]
    model = Stack(*layers).double()
    assert_agree(model, values_in(20, 2, 2), per_step_loss, ActivityRegularizer(0.3, target=0.01))


@pytest.mark.parametrize("method", ["event", "dense", "bptt"])
def test_online_learner_one_update_equals_bptt(method):
    T = 20
    model = egru(density=0.5)
    ref = copy.deepcopy(model)
    x = values_in(T, 2, 3)
    reg = ActivityRegularizer(0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    learner = evrtrl.OnlineLearner(model, opt, per_step_loss, k=T, method=method, layer_loss=reg)
    learner.run(x)
    assert len(learner.layer_losses) == T and sum(learner.layer_losses) > 0
    g = evrtrl.gradients(ref, x, per_step_loss, method="bptt", layer_loss=reg)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p -= 0.1 * g[name]
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12, msg=name)


def test_carry_continues_the_stream():
    """Two chunks with carry=True equal one run over the whole stream (k = 1)."""
    x = values_in(16, 1, 3, seed=5)
    reg = ActivityRegularizer(0.2)
    outs = []
    for chunks in ((x,), (x[:7], x[7:])):
        model = egru(seed=1)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        learner = evrtrl.OnlineLearner(model, opt, per_step_loss, k=1, layer_loss=reg)
        losses = []
        for i, c in enumerate(chunks):
            losses += learner.run(c, carry=i > 0)
        outs.append((losses, [p.detach().clone() for p in model.parameters()]))
    assert outs[0][0] == pytest.approx(outs[1][0], rel=1e-12)
    for p, q in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_active_counts_per_sequence():
    """The event engine's per-sequence |K| averages to its beta statistic and is at least alpha."""
    model = egru(seed=2)
    x = values_in(15, 4, 3, seed=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    learner = evrtrl.OnlineLearner(model, opt, per_step_loss, k=15)
    learner.run(x)
    act = learner.active  # (T, L, B)
    assert act.shape == (15, 1, 4)
    mean_k = torch.tensor(learner.stats[-1].beta, dtype=torch.float64) * model.hidden_size
    torch.testing.assert_close(act[:, 0, :].double().mean(-1), mean_k)
    spikes = evrtrl.simulate(model, x).spikes.sum(-1)  # (T, B): firing units are active
    assert bool((act[:, 0, :] >= spikes).all())


def test_bad_regularizer_config():
    with pytest.raises(ConfigError, match="strength"):
        ActivityRegularizer(-1.0)
    with pytest.raises(ConfigError, match="target"):
        ActivityRegularizer(1.0, target=-0.1)
    assert ActivityRegularizer(0.0)(0, torch.ones(2, 3), 0) is None


def test_active_counts_match_the_engine():
    """The training metrics' forward-only active sets equal the event engine's, per sequence."""
    from evrtrl.training.metrics import active_counts
    model = Stack(EGRU(3, 6, theta_init=0.05), EGRU(6, 4, theta_init=0.05)).double()
    x = values_in(12, 3, 3, seed=4)
    learner = evrtrl.OnlineLearner(model, torch.optim.SGD(model.parameters(), lr=0.0),
                                   lambda y, t: None, k=12)
    learner.run(x)
    assert torch.equal(active_counts(model, x), learner.active)
    assert 0 < int(learner.active.sum()) < 12 * 3 * 10


@pytest.mark.parametrize("target", [0.0, 0.3])
def test_closed_form_equals_autograd(target):
    """value_and_grad (what the engines call) gives the penalty and autograd's gradient,
    including a sequence whose rate is exactly at the target."""
    g = torch.Generator().manual_seed(0)
    y = torch.randn(5, 8, generator=g, dtype=torch.float64) * (torch.rand(5, 8, generator=g) < 0.5)
    y[2] = 0.0  # silent
    if target:
        y[3] = torch.tensor([1.2, -1.2] + [0.0] * 6, dtype=torch.float64)
        assert float(y[3].abs().mean()) == target  # exactly at the target
    reg = ActivityRegularizer(0.7, target, scale=0.25)
    value, grad, by_param = reg.value_and_grad(1, y, 4)
    yl = y.clone().requires_grad_(True)
    want = reg(1, yl, 4)
    (auto,) = torch.autograd.grad(want, yl)
    assert by_param == {}
    assert float(value) == pytest.approx(float(want), rel=1e-15)
    assert rel_err(grad, auto) <= 1e-15
    assert ActivityRegularizer(0.0).value_and_grad(0, y, 0) == (None, None, {})
