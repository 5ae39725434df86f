"""Drop-in modules: ``outputs, state = cell(x, state)`` like torch.nn.GRU, differentiable by
autograd and equal to the engines' gradients."""
from __future__ import annotations

import pytest
import torch

import evrtrl
from evrtrl.errors import ShapeError
from evrtrl.models import EGRU, LIF, Stack, Triangle, random_masks


def _egru(d=3, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return EGRU(d, n, masks=random_masks(EGRU.weight_shapes(d, n), 0.5, seed=seed), theta_init=0.1,
                pseudo_derivative=Triangle(0.7, 0.6), generator=g, dtype=torch.float64)


def _lif(d=3, n=5, seed=1, **kw):
    g = torch.Generator().manual_seed(seed)
    return LIF(d, n, tau_mem=0.02, tau_syn=0.005, dt=0.002, v_th=0.5, weight_scale=10.0, generator=g,
               masks=random_masks(LIF.weight_shapes(d, n, kw.get("recurrent", True)), 0.6, seed=seed),
               dtype=torch.float64, **kw)


MODELS = {
    "egru": lambda: _egru(),
    "lif": lambda: _lif(),
    "stack": lambda: Stack(_lif(3, 5), _lif(5, 4, seed=2, integration="euler", recurrent=False), _egru(4, 3, seed=3)),
}


def _x(T=30, B=2, d=3, seed=4):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, B, d, generator=g, dtype=torch.float64) < 0.5).double() * 1.3


@pytest.mark.parametrize("name", sorted(MODELS))
def test_autograd_through_forward_equals_the_engines(name):
    model = MODELS[name]()
    x = _x()
    target = torch.linspace(-0.5, 0.5, model.hidden_size, dtype=torch.float64)
    loss = lambda y, t: ((y - target) ** 2).sum() * (1 + 0.1 * t)  # noqa: E731
    out, _ = model(x)
    total = sum(loss(out[t], t) for t in range(x.shape[0]))
    names = [n for n, _ in model.named_parameters()]
    auto = dict(zip(names, torch.autograd.grad(total, list(model.parameters()))))
    assert sum(float(g.norm()) for g in auto.values()) > 0
    for method in ("event", "dense"):
        g = evrtrl.gradients(model, x, loss, method=method)
        for k in names:
            assert evrtrl.relative_error(g[k], auto[k]) <= 1e-10, (method, k)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_matches_simulate_and_continues_from_a_state(name):
    model = MODELS[name]()
    x = _x()
    with torch.no_grad():
        out, state = model(x)
        head, mid = model(x[:7])
        tail, end = model(x[7:], mid)
    assert torch.equal(out, evrtrl.simulate(model, x).outputs)
    assert torch.equal(torch.cat([head, tail]), out)
    for a, b in zip(state if isinstance(model, Stack) else [state], end if isinstance(model, Stack) else [end]):
        assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_inside_a_user_module_with_an_optimizer():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = _egru(3, 8)
            self.head = torch.nn.Linear(8, 2, dtype=torch.float64)

        def forward(self, x):
            y, _ = self.rnn(x)
            return self.head(y.mean(0))

    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    x, labels = _x(B=4), torch.tensor([0, 1, 0, 1])
    before = net.rnn.U_z.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), labels).backward()
        opt.step()
    assert not torch.equal(before, net.rnn.U_z)
    assert net.rnn.U_z.grad[~net.rnn.masks["U_z"]].abs().max() == 0  # pruned: zero gradient


def test_bad_input_and_state_are_named():
    model = _egru()
    with pytest.raises(ShapeError, match="rank 3"):
        model(torch.zeros(4, 3, dtype=torch.float64))
    _, state = model(_x(B=2))
    with pytest.raises(ShapeError, match=r"y of shape \(3, 6\)"):
        model(_x(B=3), state)
    with pytest.raises(ShapeError, match=r"3 layer state\(s\), the model has 2"):
        Stack(_lif(3, 5), _lif(5, 4, seed=2))(_x(), (state,) * 2 + (state,))
