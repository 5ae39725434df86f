"""One Engine protocol for event, dense, dense-live RTRL and BPTT; one time loop for all."""
from __future__ import annotations

import copy
import math

import pytest
import torch

import evrtrl
from evrtrl.engine import run_engine
from evrtrl.stats import EngineStats

from .helpers import egru, lif, per_step_loss, values_in


@pytest.mark.parametrize("method", evrtrl.METHODS)
def test_every_method_is_an_engine(method):
    model = egru(density=0.5)
    eng = evrtrl.make_engine(model, 2, method)
    assert isinstance(eng, evrtrl.Engine) and eng.name == method
    losses = run_engine(eng, values_in(8, 2, 3), per_step_loss)
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert eng.stats.steps == 8 and eng.stats.total_macs > 0
    dens = eng.influence_density()
    if method == "bptt":
        assert math.isnan(dens)
    else:
        assert 0 < dens <= 1
    g = eng.gradients()
    assert set(g) == {n for n, _ in model.named_parameters()}
    eng.zero_grad()
    assert all(float(v.abs().max()) == 0 for v in eng.gradients().values())


def test_run_engine_calls_the_update_hook_every_k_steps():
    eng = evrtrl.make_engine(egru(), 1, "event")
    seen = []
    run_engine(eng, values_in(7, 1, 3), per_step_loss, every=3, on_update=lambda: seen.append(eng.stats.steps))
    assert seen == [3, 6, 7]


def test_no_loss_steps_are_nan_and_bad_losses_are_named():
    eng = evrtrl.make_engine(egru(), 1, "bptt")
    losses = run_engine(eng, values_in(4, 1, 3), lambda y, t: y.sum() if t == 2 else None)
    assert [math.isnan(v) for v in losses] == [True, True, False, True]
    with pytest.raises(evrtrl.ShapeError, match="scalar tensor"):
        run_engine(eng, values_in(2, 1, 3), lambda y, t: y)


@pytest.mark.parametrize("model_fn", [lambda: egru(density=0.5), lambda: lif(density=0.6)])
def test_truncated_bptt_equals_autograd_through_forward_with_detached_windows(model_fn):
    """OnlineLearner(method="bptt", k) == SGD on each window's loss, the state cut between."""
    T, k, lr = 12, 5, 0.05
    model = model_fn()
    ref = copy.deepcopy(model)
    x = values_in(T, 2, model.input_size)
    evrtrl.OnlineLearner(model, torch.optim.SGD(model.parameters(), lr=lr), per_step_loss,
                         k=k, method="bptt").run(x)
    state = None
    for lo in range(0, T, k):
        out, state = ref(x[lo:lo + k], state)
        loss = sum(per_step_loss(out[t], lo + t) for t in range(out.shape[0]))
        grads = torch.autograd.grad(loss, list(ref.parameters()))
        with torch.no_grad():
            for p, g in zip(ref.parameters(), grads):
                p -= lr * g
        state = type(state)(*(v.detach() for v in state))
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14, msg=name)


def test_engine_stats_has_no_private_constructor_arguments():
    with pytest.raises(TypeError):
        EngineStats("event", _open=True)
    with pytest.raises(TypeError):
        EngineStats("event", _step_macs=3)
