"""Finite numbers or a named error (issue 12): gradients, the online learner, the training loop;
float16 refused by the event engine."""
from __future__ import annotations

import pytest
import torch

import evrtrl
from evrtrl.errors import ConfigError, NonFiniteError, UnsupportedError
from evrtrl.models import EGRU, LIF, Readout
from evrtrl.training import TrainConfig, train


def _egru(dtype=torch.float64):
    return EGRU(3, 5, theta_init=0.1, generator=torch.Generator().manual_seed(0)).to(dtype)


def _x(T=12, dtype=torch.float64):
    return (torch.rand(T, 2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) < 0.4).to(dtype)


def _nan_at(t_bad):
    def loss(y, t):
        v = (y ** 2).sum()
        return v * float("nan") if t == t_bad else v
    return loss


@pytest.mark.parametrize("method", ["event", "dense", "bptt"])
def test_gradients_name_the_non_finite_parameter(method):
    with pytest.raises(NonFiniteError, match=r"gradient of parameter '\w+' holds \d+ NaN"):
        evrtrl.gradients(_egru(), _x(), _nan_at(4), method=method)


@pytest.mark.parametrize("method", ["event", "bptt"])
def test_online_learner_refuses_nan_gradients_before_touching_the_weights(method):
    model = _egru()
    readout = Readout(5, 2, dtype=torch.float64)
    opt = torch.optim.SGD(list(model.parameters()) + list(readout.parameters()), lr=0.1)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    labels = torch.tensor([0, 1])

    def loss(y, t):
        v = torch.nn.functional.cross_entropy(readout(y), labels)
        return v * float("nan") if t == 7 else v

    learner = evrtrl.OnlineLearner(model, opt, loss, k=4, method=method, extra_parameters=readout.parameters())
    with pytest.raises(NonFiniteError, match=r"at update 2 \(after step t=7\); weights not updated"):
        learner.run(_x())
    assert learner.updates == 1  # the first update (steps 0-3) went through, the second was refused
    for k, v in model.named_parameters():
        assert torch.isfinite(v).all(), k
    assert any(not torch.equal(v, before[k]) for k, v in model.named_parameters())  # update 1 moved them


def test_online_learner_refuses_an_update_that_makes_weights_infinite():
    model = _egru()
    opt = torch.optim.SGD(model.parameters(), lr=1e308)
    learner = evrtrl.OnlineLearner(model, opt, lambda y, t: (y ** 2).sum() * 1e10, k=12)
    with pytest.raises(NonFiniteError, match="after the optimizer step"):
        learner.run(_x())


def test_float16_is_refused_by_the_event_engine_with_the_alternatives_named():
    model = _egru(torch.float16)
    x = _x(dtype=torch.float16)
    with pytest.raises(UnsupportedError, match="bfloat16.*float"):
        evrtrl.gradients(model, x, lambda y, t: (y ** 2).sum(), method="event")
    # dense RTRL and BPTT stay finite in float16 (and bfloat16 works with the event engine)
    for method in ("dense", "bptt"):
        g = evrtrl.gradients(model, x, lambda y, t: (y.float() ** 2).sum(), method=method)
        assert all(torch.isfinite(v).all() for v in g.values())
    g = evrtrl.gradients(_egru(torch.bfloat16), _x(dtype=torch.bfloat16), lambda y, t: (y.float() ** 2).sum())
    assert all(torch.isfinite(v).all() for v in g.values())


@pytest.mark.parametrize("kw, needle", [({"lr": float("inf")}, "--lr"), ({"lr": float("nan")}, "--lr"),
                                        ({"pd_gamma": float("inf")}, "--gamma"), ({"pd_width": 0.0}, "--width")])
def test_training_config_refuses_non_finite_options(tmp_path, kw, needle):
    with pytest.raises(ConfigError, match=needle):
        train(TrainConfig(data="synthetic:rotation,n=8", **kw), tmp_path / "r", progress=False)


def test_training_stops_with_the_parameter_epoch_and_batch_named(tmp_path, monkeypatch):
    from evrtrl.training import loop

    real, real_closed = loop._Loss.__call__, loop._Loss._closed_form
    batches = []
    nan = float("nan")

    def poisoned(self, y, t):  # the loss turns NaN from the third batch on
        v = real(self, y, t)
        return v * nan if len(batches) >= 2 and v is not None else v

    def poisoned_closed(self, y, t):  # the same for its closed form, which the engines call
        v, g, by = real_closed(self, y, t)
        if len(batches) < 2 or v is None:
            return v, g, by
        return v * nan, g * nan, {p: d * nan for p, d in by.items()}

    monkeypatch.setattr(loop._Loss, "__call__", poisoned)
    monkeypatch.setattr(loop._Loss, "_closed_form", poisoned_closed)
    cfg = TrainConfig(data="synthetic:rotation,n=24", hidden=4, batch=8, epochs=1, eval_each_epoch=False)
    with pytest.raises(NonFiniteError, match=r"epoch 0, batch 2 \(global batch 3\): gradient of parameter"):
        train(cfg, tmp_path / "r", progress=False, callbacks=[batches.append])


def test_lif_float16_event_refused_too():
    m = LIF(3, 4, tau_mem=0.02, tau_syn=0.005, dt=1e-3).to(torch.float16)
    with pytest.raises(UnsupportedError):
        evrtrl.OnlineLearner(m, torch.optim.SGD(m.parameters(), lr=0.1), lambda y, t: y.sum(), k=2).run(
            _x(dtype=torch.float16))
