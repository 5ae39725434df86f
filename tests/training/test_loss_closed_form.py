"""The training loop's readout loss in closed form (``value_and_grad``, what the engines call
instead of autograd) equals the loss autograd differentiates, in both loss modes."""
from __future__ import annotations

import pytest
import torch

from evrtrl.engine import loss_gradient
from evrtrl.models import Readout
from evrtrl.training.loop import make_loss


class _Autograd:
    """The same loss without its closed form: loss_gradient falls back to autograd."""

    def __init__(self, loss):
        self.loss = loss

    def __call__(self, y, t):
        return self.loss(y, t)


@pytest.mark.parametrize("mode", ["mean", "last"])
def test_closed_form_equals_autograd(mode):
    g = torch.Generator().manual_seed(3)
    readout = Readout(6, 4, dtype=torch.float64)
    with torch.no_grad():
        readout.bias.uniform_(-0.5, 0.5, generator=g)
    labels = torch.tensor([0, 3, 1, 3, 2])
    T = 3
    closed = make_loss(readout, labels, T, mode, global_batch=8, activity=True)
    auto = make_loss(readout, labels, T, mode, global_batch=8, activity=True)
    assert hasattr(closed, "value_and_grad")
    extra = list(readout.parameters())
    for t in range(T):
        y = torch.randn(5, 6, generator=g, dtype=torch.float64) * (torch.rand(5, 6, generator=g) < 0.6)
        got = loss_gradient(closed, y, t, extra)
        want = loss_gradient(_Autograd(auto), y, t, extra)
        if want[0] is None:
            assert got == (None, None, [None, None])
            continue
        assert float(got[0]) == pytest.approx(float(want[0].detach()), rel=1e-14)
        for a, b in zip([got[1]] + got[2], [want[1]] + want[2]):
            assert torch.allclose(a, b, rtol=1e-13, atol=1e-15)
    assert torch.allclose(closed.logits, auto.logits, rtol=1e-14)
    assert closed.steps == auto.steps == T and float(closed.active) == float(auto.active)


def test_a_readout_without_bias_uses_autograd():
    readout = torch.nn.Linear(6, 4, bias=False, dtype=torch.float64)
    loss = make_loss(readout, torch.tensor([1, 2]), 2)
    assert not hasattr(loss, "value_and_grad")
    _, g, (gw,) = loss_gradient(loss, torch.randn(2, 6, dtype=torch.float64), 0, [readout.weight])
    assert g.shape == (2, 6) and gw.shape == (4, 6)
