"""The analytic Jacobian pieces beside each cell equal torch.func on the same step.

For one step from a non-initial state we differentiate ``layer.step`` with
``torch.func.jacrev`` and compare with the explicit matrices the dense engine builds
(``J_t``, ``A^in_t``, ``Mbar_t``) and with the output gain ``G_t``.
"""
from __future__ import annotations

import pytest
import torch
from torch.func import jacrev

from evrtrl.dense_engine import _gain_matrix, dense_step_jacobians
from evrtrl.influence import ColumnBlock
from evrtrl.models import EGRU, cell_spec

from .helpers import egru, lif


def _emit(layer, w, s):
    """State record from the RTRL state components (events recomputed with the surrogate)."""
    return cell_spec(layer).state_from_components(layer, w, tuple(s))


def _components(layer, state):
    return tuple(state)[: layer.state_size]


CASES = [
    ("egru", {}),
    ("egru-masked", {"density": 0.5}),
    ("lif-exact-zero", {"integration": "exact", "reset": "zero"}),
    ("lif-exact-subtract", {"integration": "exact", "reset": "subtract"}),
    ("lif-euler-zero", {"integration": "euler", "reset": "zero"}),
    ("lif-euler-subtract", {"integration": "euler", "reset": "subtract"}),
    ("lif-ff", {"recurrent": False}),
    # per-neuron values, every neuron parameter trained (exact RTRL columns)
    ("lif-exact-zero-pn", {"integration": "exact", "reset": "zero", "per_neuron": True}),
    ("lif-exact-subtract-pn", {"integration": "exact", "reset": "subtract", "per_neuron": True}),
    ("lif-euler-zero-pn", {"integration": "euler", "reset": "zero", "per_neuron": True}),
    ("lif-euler-subtract-pn", {"integration": "euler", "reset": "subtract", "per_neuron": True}),
    # tau_syn ~ tau_mem: phi1 / phi1' on their series branch
    ("lif-exact-near-equal-taus", {"integration": "exact", "per_neuron": True, "near_equal": True}),
    # current-free LIF (nir.LIF), state size 1
    ("lif-free-exact-zero", {"integration": "exact", "reset": "zero", "synapse": False, "scale": 40.0}),
    ("lif-free-exact-subtract", {"integration": "exact", "reset": "subtract", "synapse": False,
                                 "per_neuron": True}),
    ("lif-free-euler-zero", {"integration": "euler", "reset": "zero", "synapse": False,
                             "per_neuron": True}),
    ("lif-free-euler-subtract", {"integration": "euler", "reset": "subtract", "synapse": False}),
    ("lif-free-ff", {"recurrent": False, "synapse": False, "per_neuron": True}),
]


def _layer(name, kw):
    if name.startswith("egru"):
        # wide window so that most units have non-zero pseudo-derivatives
        return egru(d=3, n=5, theta=0.05, width=1.0, **kw)
    return lif(d=3, n=5, **kw)


@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
def test_step_jacobians_match_torch_func(name, kw):
    layer = _layer(name, kw)
    with torch.no_grad():
        w = layer.weights()
    g = torch.Generator().manual_seed(7)
    # run until the step under test has units inside the pseudo-derivative window, both
    # at the previous state (coupling, reset path) and at the new one (output gain)
    s = layer.initial_state(1)
    x1 = torch.randn(1, 3, generator=g, dtype=torch.float64) * 2
    s1, aux1 = layer.step(w, s, x1)
    lj1 = layer.local_jacobian(w, s, x1, s1, aux1, True)
    for _ in range(200):
        x2 = torch.randn(1, 3, generator=g, dtype=torch.float64) * 2
        s2, aux2 = layer.step(w, s1, x2)
        lj2 = layer.local_jacobian(w, s1, x2, s2, aux2, False)
        if bool((lj1.gain != 0).any()) and bool((lj2.gain != 0).any()):
            break
        s1, lj1 = s2, lj2
    else:
        pytest.fail("test setup: no step with active units found")
    block = ColumnBlock(layer, "")
    sj = dense_step_jacobians(layer, w, s1, x2, s2, aux2, False, lj1, block)
    n, m = layer.hidden_size, layer.state_size

    # the step function applied to a state rebuilt from its components: events of s1
    # are recomputed with the surrogate, exactly as BPTT differentiates them
    rebuilt = _emit(layer, w, _components(layer, s1))
    for a, b in zip(rebuilt, s1):
        assert (a is None and b is None) or torch.equal(a, b)

    def f_state(*comps):
        new, _ = layer.step(w, _emit(layer, w, comps), x2)
        return torch.stack(_components(layer, new), dim=-1)  # (1, n, m)

    jac = jacrev(f_state, argnums=tuple(range(m)))(*_components(layer, s1))
    J_auto = torch.stack([j[0, :, :, 0, :] for j in jac], dim=-1)  # (n, m, n, m_in)
    J_auto = J_auto.reshape(n * m, n * m)
    torch.testing.assert_close(sj.J[0], J_auto, rtol=1e-12, atol=1e-13)

    def f_input(x):
        new, _ = layer.step(w, s1, x)
        return torch.stack(_components(layer, new), dim=-1)

    A_auto = jacrev(f_input)(x2)[0, :, :, 0, :].reshape(n * m, 3)
    torch.testing.assert_close(sj.A_in[0], A_auto, rtol=1e-12, atol=1e-13)

    # parameters: the state components of s1 held fixed, events re-emitted from them
    names = [nm for nm, _ in layer.named_parameters()]
    params = {nm: p.detach() for nm, p in layer.named_parameters()}
    masks = layer.masks

    def f_params(p):
        wp = w._replace(**{k: (v * masks[k] if k in masks else v) for k, v in p.items()})
        new, _ = layer.step(wp, _emit(layer, wp, _components(layer, s1)), x2)
        return torch.stack(_components(layer, new), dim=-1)

    jp = jacrev(f_params)(params)
    for nm in names:
        o = block.offsets[nm]
        size = params[nm].numel()
        auto = jp[nm][0].reshape(n * m, size)
        torch.testing.assert_close(sj.Mbar[0, :, o:o + size], auto, rtol=1e-12, atol=1e-13,
                                   msg=lambda s: f"{name}: Mbar for {nm}: {s}")

    # output gain G_t = dy/ds and the direct dy/dtheta
    def f_out(*comps):
        return _emit(layer, w, comps).y

    jo = jacrev(f_out, argnums=tuple(range(m)))(*_components(layer, s2))
    G_auto = torch.stack([j[0, :, 0, :] for j in jo], dim=-1).reshape(n, n * m)
    torch.testing.assert_close(_gain_matrix(sj.lj.gain)[0], G_auto, rtol=1e-12, atol=1e-13)
    if isinstance(layer, EGRU):
        th = jacrev(lambda t: _emit(layer, w._replace(theta=t), (s2.c,)).y)(w.theta)[0]
        torch.testing.assert_close(torch.diag(sj.lj.gain_direct["theta"][0]), th)
    elif "v_th" in layer.unit_parameters:
        th = jacrev(lambda t: _emit(layer, w._replace(v_th=t), _components(layer, s2)).y)(w.v_th)[0]
        torch.testing.assert_close(torch.diag(sj.lj.gain_direct["v_th"][0]), th)
    # the test exercises the window: some pseudo-derivatives are non-zero
    assert float(sj.lj.gain.abs().sum()) > 0 and float(lj1.gain.abs().sum()) > 0


def test_jacobian_test_can_fail():
    """A wrong analytic piece is caught: perturb D and compare again."""
    layer = _layer("egru", {})
    w = layer.weights()
    x = torch.randn(1, 3, dtype=torch.float64)
    s0 = layer.initial_state(1)
    s1, a1 = layer.step(w, s0, x)
    lj0 = layer.local_jacobian(w, s0, x, s1, a1, True)
    s2, a2 = layer.step(w, s1, x)
    sj = dense_step_jacobians(layer, w, s1, x, s2, a2, False, lj0)

    def f(c):
        new, _ = layer.step(w, _emit(layer, w, (c,)), x)
        return new.c

    auto = jacrev(f)(s1.c)[0, :, 0, :]
    assert torch.allclose(sj.J[0], auto, rtol=1e-12, atol=1e-13)
    assert not torch.allclose(sj.J[0] * 1.001, auto, rtol=1e-12, atol=1e-13)
