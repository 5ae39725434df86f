"""Online learner: k >= T equals one BPTT step; k = 1 changes the weights every step."""
from __future__ import annotations

import copy

import pytest
import torch

import evrtrl
from evrtrl.models import Readout

from .helpers import egru, per_step_loss, values_in


@pytest.mark.parametrize("method", ["event", "dense", "bptt"])
@pytest.mark.parametrize("k", [20, 50])
def test_k_at_least_T_equals_bptt(method, k):
    T = 20
    model = egru(density=0.5)
    ref = copy.deepcopy(model)
    x = values_in(T, 2, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    evrtrl.OnlineLearner(model, opt, per_step_loss, k=k, method=method).run(x)
    g = evrtrl.gradients(ref, x, per_step_loss, method="bptt")
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p -= 0.1 * g[name]
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12, msg=name)
    for name, mask in model.masks.items():
        assert bool((getattr(model, name)[~mask] == 0).all())


def test_k1_changes_weights_every_step():
    model = egru()
    x = values_in(6, 1, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    snapshots = []

    learner = evrtrl.OnlineLearner(model, opt, per_step_loss, k=1)
    orig = opt.step

    def step(*a, **kw):
        out = orig(*a, **kw)
        snapshots.append(model.U_z.detach().clone())
        return out

    opt.step = step
    learner.run(x)
    assert learner.updates == 6 and len(snapshots) == 6
    for a, b in zip(snapshots, snapshots[1:]):
        assert not torch.equal(a, b)


def test_readout_trained_as_extra_parameters():
    torch.manual_seed(0)
    model = egru(d=2, n=6)
    readout = Readout(6, 2, dtype=torch.float64)
    opt = torch.optim.Adam(list(model.parameters()) + list(readout.parameters()), lr=0.01)
    target = torch.tensor([0, 1])
    T = 10
    loss = lambda y, t: torch.nn.functional.cross_entropy(readout(y), target) if t == T - 1 else None
    before = readout.weight.detach().clone()
    learner = evrtrl.OnlineLearner(model, opt, loss, k=T, extra_parameters=readout.parameters())
    losses = learner.run(values_in(T, 2, 2))
    assert not torch.equal(before, readout.weight)
    assert losses[-1] == losses[-1] and all(l != l for l in losses[:-1])  # nan except last
