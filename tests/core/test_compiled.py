"""The compiled kernels against the pure steps (issue 9, item 1).

Each cell's kernel (``models/*_kernel.cpp``) is checked step by step against the cell's pure
step and analytic Jacobian pieces, and its Jacobian pieces against torch.func on the pure
step (the checks of test_jacobians.py, with the kernel's pieces). The engine-level compiled
path runs the whole core equality suite (tests/core/conftest.py); here it is also compared
with the pure-torch path directly, and the fallbacks are checked.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import evrtrl
from evrtrl.errors import UnknownMethodError, UnsupportedError
from evrtrl.kernels import KernelBuildWarning, build
from evrtrl.layer import LocalJacobian
from evrtrl.models import EGRU, LIF, FastSigmoid, Stack
from evrtrl.models.kernels import LIFKernel, _groups, egru_kernel, lif_kernel

from . import test_jacobians as TJ
from .helpers import assert_engines_agree, egru, lif, neuron_values, per_step_loss, rel_err, spikes_in, values_in

KERNEL_PATHS = ("compiled",)
#: every Jacobian test case has a compiled cell step: EGRU, and LIF with uniform or per-neuron
#: values, frozen or trained neuron parameters, current-based or current-free
#: (test_jacobians' cases, plus per-neuron frozen values and a subset trained)
COVERED = TJ.CASES + [
    ("lif-exact-zero-pn-frozen", {"per_neuron": True, "trainable": ()}),
    ("lif-euler-subtract-pn-frozen", {"integration": "euler", "reset": "subtract", "per_neuron": True,
                                      "trainable": ()}),
    ("lif-free-exact-pn-frozen", {"synapse": False, "per_neuron": True, "trainable": (), "scale": 40.0}),
    ("lif-exact-pn-some-trained", {"per_neuron": True, "trainable": ("tau_syn", "v_reset")}),
    ("lif-euler-pn-some-trained", {"integration": "euler", "per_neuron": True,
                                   "trainable": ("tau_mem", "tau_syn", "bias")}),
]
#: LIF cases whose C++ step is new since the uniform-only kernel (per-neuron values, trained
#: neuron parameters, bias, current-free)
NEWLY_COVERED = [c for c in COVERED if c[1].get("per_neuron") or not c[1].get("synapse", True)]


def test_lif_configurations_reach_the_compiled_step():
    """Per-neuron, trained (with a bias) and current-free LIF layers run the C++ step in the
    engine; a pseudo-derivative without compact support (FastSigmoid) still runs the pure step."""
    layers = [TJ._layer(name, kw) for name, kw in NEWLY_COVERED]
    layers.append(lif(per_neuron=True, trainable=("bias",)))
    assert any(float(layer.bias.detach().abs().max()) > 0 for layer in layers), "a layer with a bias"
    for layer in layers:
        eng = evrtrl.EventRTRL(layer, 2, kernel="compiled")
        assert eng.compiled.covered == [True], layer
        assert isinstance(eng.compiled.cells[0], LIFKernel)
    slow = LIF(4, 7, dt=0.001, trainable=("v_th", "bias"), pseudo_derivative=FastSigmoid(1.0, 0.2),
               **neuron_values(7)).double()
    assert lif_kernel(slow) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", evrtrl.DegradesToDenseWarning)
        assert evrtrl.EventRTRL(slow, 2, kernel="compiled").compiled.covered == [False]


@pytest.mark.parametrize("synapse", [True, False], ids=["cuba", "current-free"])
@pytest.mark.parametrize("integration,reset", [("exact", "zero"), ("euler", "subtract")])
def test_per_neuron_frozen_lif_equality_on_the_compiled_path(integration, reset, synapse):
    """Heterogeneous frozen values with a bias (test_gradients trains every value or uses
    uniform ones): event = dense <= 1e-12, = BPTT <= 1e-10, through the C++ step."""
    model = lif(integration=integration, reset=reset, synapse=synapse, per_neuron=True, trainable=(),
                scale=8.0 if synapse else 40.0)
    assert evrtrl.EventRTRL(model, 2).compiled.covered == [True]
    x = spikes_in(40, 2, 4)
    assert 0 < float(evrtrl.simulate(model, x).spikes.mean()) < 0.9, "test case must spike"
    assert_engines_agree(model, x, per_step_loss)


def _kernel(layer):
    k = egru_kernel(layer) if isinstance(layer, EGRU) else lif_kernel(layer)
    assert k is not None, f"{type(layer).__name__}: no compiled step"
    with torch.no_grad():
        k.refresh(layer.weights())
    return k


def _kernel_lj(layer, kern, prev, x, first) -> tuple:
    """The kernel's step as (state, LocalJacobian) in the cell's record types."""
    new, diag, phis, gain, gd = kern.step(prev, x, first)
    groups, m = _groups(layer), layer.state_size
    parts = {g: phis[..., i * m:(i + 1) * m] for i, g in enumerate(groups)}
    units = set(layer.unit_parameters)
    lj = LocalJacobian(
        diag=diag, phi={g: v for g, v in parts.items() if g not in units},
        unit_phi={g: v for g, v in parts.items() if g in units}, gain=gain,
        gain_direct={u: gd[i] for i, u in enumerate(kern.direct)})
    return new, lj


def _close(a, b, what):
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=lambda s: f"{what}: {s}")


@pytest.mark.parametrize("name,kw", COVERED, ids=[c[0] for c in COVERED])
def test_cell_kernel_equals_pure_step(name, kw):
    """40 steps, B = 3: state, D, phi, unit phi, G and the direct gains agree in float64."""
    layer = TJ._layer(name, kw)
    with torch.no_grad():
        w = layer.weights()
    kern = _kernel(layer)
    B, d = 3, layer.input_size
    xs = values_in(40, B, d, seed=5) * 2 if isinstance(layer, EGRU) else spikes_in(40, B, d, p=0.5)
    prev = layer.initial_state(B)
    windows = 0
    for t in range(40):
        new, aux = layer.step(w, prev, xs[t])
        lj = layer.local_jacobian(w, prev, xs[t], new, aux, t == 0)
        knew, klj = _kernel_lj(layer, kern, prev, xs[t], t == 0)
        for f in new._fields:
            _close(getattr(knew, f), getattr(new, f), f"{name} t={t} state {f}")
        _close(klj.diag, lj.diag, f"{name} t={t} D")
        _close(klj.gain, lj.gain, f"{name} t={t} G")
        for g in lj.phi:
            _close(klj.phi[g], lj.phi[g], f"{name} t={t} phi {g}")
        for u in lj.unit_phi:
            _close(klj.unit_phi[u], lj.unit_phi[u], f"{name} t={t} unit phi {u}")
        assert set(klj.gain_direct) == set(lj.gain_direct)
        for u in lj.gain_direct:
            _close(klj.gain_direct[u], lj.gain_direct[u], f"{name} t={t} direct gain {u}")
        windows += int(bool((lj.gain != 0).any()))
        prev = new
    assert windows > 0, "the test must exercise the pseudo-derivative window"


@pytest.mark.parametrize("name,kw", COVERED, ids=[c[0] for c in COVERED])
def test_cell_kernel_jacobians_match_torch_func(name, kw, monkeypatch):
    """test_jacobians' torch.func checks with the kernel's Jacobian pieces in place."""
    pure_layer = TJ._layer

    def kernel_layer(n, k):
        layer = pure_layer(n, k)
        kern = _kernel(layer)
        pure_step = layer.step

        def local_jacobian(w, prev, x, new, aux, first):
            knew, lj = _kernel_lj(layer, kern, prev, x, first)
            for a, b in zip(knew, new):
                _close(a, b, f"{name}: kernel state")
            return lj

        layer.local_jacobian = local_jacobian
        layer.step = pure_step
        return layer

    monkeypatch.setattr(TJ, "_layer", kernel_layer)
    TJ.test_step_jacobians_match_torch_func(name, kw)


def _grads(model, x, loss, method, kernel, monkeypatch):
    monkeypatch.setenv(build.KERNEL_ENV, kernel)
    return evrtrl.gradients(model, x, loss, method=method)


def test_compiled_path_equals_torch_path_and_bptt(monkeypatch):
    """A masked 3-layer stack, B = 3, both layouts: compiled = torch <= 1e-12, = BPTT <= 1e-10."""
    from evrtrl.models import random_masks
    g = torch.Generator().manual_seed(4)
    model = Stack(
        EGRU(2, 6, theta_init=0.05, masks=random_masks(EGRU.weight_shapes(2, 6), 0.5, seed=1),
             generator=g),
        LIF(6, 5, tau_mem=0.01, tau_syn=0.004, dt=0.001, weight_scale=12.0, reset="subtract",
            masks=random_masks(LIF.weight_shapes(6, 5), 0.6, seed=2), generator=g),
        EGRU(5, 4, theta_init=0.05, generator=g)).double()
    x = values_in(30, 3, 2, seed=3)
    ref = _grads(model, x, per_step_loss, "bptt", "torch", monkeypatch)
    for layout in ("rows", "cols"):
        out = {}
        for kernel in ("torch", "compiled"):
            eng = evrtrl.EventRTRL(model, 3, layout=layout, kernel=kernel)
            assert eng.kernel == kernel
            evrtrl.run_engine(eng, x, per_step_loss)
            out[kernel] = eng.gradients()
            assert eng.stats.summary()["beta"] < 1
        for k in ref:
            assert rel_err(out["compiled"][k], out["torch"][k]) <= 1e-12, (layout, k)
            assert rel_err(out["compiled"][k], ref[k]) <= 1e-10, (layout, k)
        assert sum(float(v.norm()) for v in ref.values()) > 0


def test_uncovered_cell_runs_its_pure_step(monkeypatch):
    """A cell configuration without a compiled step: its pure step + the engine kernel."""
    model = EGRU(3, 5, pseudo_derivative=FastSigmoid(1.0, 0.2), theta_init=0.1).double()
    assert egru_kernel(model) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", evrtrl.DegradesToDenseWarning)
        eng = evrtrl.EventRTRL(model, 2, kernel="compiled")
    assert eng.kernel == "compiled" and eng.compiled.covered == [False]
    x = values_in(20, 2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", evrtrl.DegradesToDenseWarning)
        ev = _grads(model, x, per_step_loss, "event", "compiled", monkeypatch)
    ref = _grads(model, x, per_step_loss, "bptt", "torch", monkeypatch)
    for k in ref:
        assert rel_err(ev[k], ref[k]) <= 1e-10, k


def test_kernel_choice(monkeypatch):
    model = egru()
    assert evrtrl.EventRTRL(model, 1, kernel="torch").kernel == "torch"
    assert evrtrl.EventRTRL(model, 1, kernel="compiled").compiled.covered == [True]
    monkeypatch.setenv(build.KERNEL_ENV, "torch")
    assert evrtrl.EventRTRL(model, 1).kernel == "torch"
    monkeypatch.setenv(build.KERNEL_ENV, "auto")
    assert evrtrl.EventRTRL(model, 1).kernel == "compiled"
    with pytest.raises(UnknownMethodError, match="EVRTRL_KERNEL"):
        evrtrl.EventRTRL(model, 1, kernel="fast")
    with pytest.raises(UnsupportedError, match="float32 and float64"):
        evrtrl.EventRTRL(EGRU(2, 3, dtype=torch.bfloat16), 1, kernel="compiled")
    assert evrtrl.EventRTRL(EGRU(2, 3, dtype=torch.bfloat16), 1, kernel="auto").kernel == "torch"


def test_failed_build_warns_and_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("EVRTRL_KERNEL_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "broken.cpp"
    src.write_text("#error this kernel does not compile\n")
    with pytest.warns(KernelBuildWarning, match="pure-torch path"):
        assert build.load("evrtrl_test_broken", [src]) is None
    with pytest.raises(UnsupportedError, match="evrtrl_test_broken"):
        build.require("evrtrl_test_broken", [src])
    monkeypatch.setattr(build, "compiler", lambda: None)
    with pytest.warns(KernelBuildWarning, match="no C.. compiler"):
        assert build.load("evrtrl_test_nocc", [src]) is None
    assert str(tmp_path) in str(build.cache_dir())


def test_doctor_reports_the_active_path(capsys, monkeypatch):
    from evrtrl.cli import main
    monkeypatch.setenv(build.KERNEL_ENV, "auto")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "active path (CPU, float32/float64): compiled" in out
    assert str(build.cache_dir()) in out and "cell step EGRU" in out and "cell step LIF" in out
    monkeypatch.setenv(build.KERNEL_ENV, "torch")
    assert main(["doctor"]) == 0
    assert "active path (CPU, float32/float64): torch" in capsys.readouterr().out
