"""Builders shared by the core tests (small float64 models with real activity)."""
from __future__ import annotations

import torch

import evrtrl
from evrtrl.models import EGRU, LIF, Triangle, random_masks

ENGINES = ("event", "dense", "dense-live", "bptt")


def egru(d=3, n=6, *, density=None, seed=0, theta=0.1, width=0.5, B=None):
    masks = random_masks(EGRU.weight_shapes(d, n), density, seed=seed) if density else None
    g = torch.Generator().manual_seed(seed)
    return EGRU(d, n, masks=masks, theta_init=theta, pseudo_derivative=Triangle(0.7, width),
                generator=g).double()


def neuron_values(n, seed=0, *, synapse=True, near_equal=False):
    """Heterogeneous per-neuron LIF values (seconds for the time constants)."""
    g = torch.Generator().manual_seed(1000 + seed)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)  # noqa: E731
    vals = dict(tau_mem=u(0.01, 0.03), v_th=u(0.8, 1.2), v_leak=u(-0.1, 0.1), v_reset=u(-0.2, 0.1),
                bias=u(-0.05, 0.05))
    if synapse:
        # near_equal: tau_syn = tau_mem (1 + k 1e-11), where the textbook b loses its digits
        vals["tau_syn"] = (vals["tau_mem"] * (1 + 1e-11 * torch.arange(n, dtype=torch.float64))
                           if near_equal else u(0.003, 0.008))
    return vals


def lif(d=4, n=7, *, integration="exact", reset="zero", recurrent=True, density=None, seed=0,
        scale=8.0, synapse=True, per_neuron=False, near_equal=False, trainable=None):
    """A float64 LIF layer; ``per_neuron``: heterogeneous values, every one trained."""
    masks = random_masks(LIF.weight_shapes(d, n, recurrent), density, seed=seed) if density else None
    g = torch.Generator().manual_seed(seed)
    if per_neuron:
        vals = neuron_values(n, seed, synapse=synapse, near_equal=near_equal)
        trainable = tuple(vals) if trainable is None else trainable
    else:
        vals = dict(tau_mem=0.02, **({"tau_syn": 0.005} if synapse else {}))
    return LIF(d, n, dt=0.001, integration=integration, reset=reset, synapse=synapse,
               trainable=trainable or (), recurrent=recurrent, masks=masks, weight_scale=scale,
               generator=g, **vals).double()


def spikes_in(T, B, d, p=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, B, d, generator=g, dtype=torch.float64) < p).double()


def values_in(T, B, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, B, d, generator=g, dtype=torch.float64)


def per_step_loss(y, t):
    return ((y - 0.3) ** 2).sum() + 0.1 * y.sum()


def last_step_loss(T):
    return lambda y, t: ((y - 0.5) ** 2).sum() if t == T - 1 else None


def all_gradients(model, x, loss_fn, methods=ENGINES):
    return {m: evrtrl.gradients(model, x, loss_fn, method=m) for m in methods}


rel_err = evrtrl.relative_error  # norm-wise, relative to the reference (absolute where it is 0)


def assert_engines_agree(model, x, loss_fn, *, event_dense=1e-12, vs_bptt=1e-10):
    g = all_gradients(model, x, loss_fn)
    assert set(g["event"]) == set(g["bptt"]) == {n for n, _ in model.named_parameters()}
    total = sum(float(v.norm()) for v in g["bptt"].values())
    assert total > 0, "degenerate test case: the BPTT gradient is zero"
    for name in g["bptt"]:
        for m in ("dense", "dense-live"):
            e = rel_err(g["event"][name], g[m][name])
            assert e <= event_dense, f"{name}: event vs {m} rel err {e:.2e}"
        for m in ("event", "dense"):
            e = rel_err(g[m][name], g["bptt"][name])
            assert e <= vs_bptt, f"{name}: {m} vs bptt rel err {e:.2e}"
    return g
