"""Model files keep per-neuron LIF values, trained ones and the current-free LIF; 0.1.0 files load."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import evrtrl
from evrtrl.errors import FormatError
from evrtrl.h5file import seal
from evrtrl.models import LIF, Readout, Stack, load_model, save_model

from .helpers import lif, spikes_in


def _same(a, b):
    for k in a.neuron_parameter_names:
        assert torch.equal(getattr(a, k).detach().cpu(), getattr(b, k).detach().cpu()), k
    assert (a.trainable, a.synapse, a.reset, a.integration, a.dt) == (b.trainable, b.synapse, b.reset,
                                                                       b.integration, b.dt)


def test_per_neuron_trainable_and_current_free_round_trip(tmp_path):
    m = Stack(lif(per_neuron=True, trainable=("v_th", "tau_mem")), lif(d=7, n=3, synapse=False, per_neuron=True,
                                                                      reset="subtract", scale=40.0))
    with torch.no_grad():
        m.layers[0].v_th.add_(0.01)  # a trained value, not the constructor's
    p = save_model(m, tmp_path / "m.h5", readout=Readout(3, 2, dtype=torch.float64))
    back = load_model(p).model
    for a, b in zip(m.layers, back.layers):
        _same(a, b)
        assert b.state_size == a.state_size and dict(b.named_parameters()).keys() == dict(a.named_parameters()).keys()
    assert back.layers[0].v_th.dtype == torch.float64 and back.layers[1].tau_mem.dtype == torch.float64
    x = spikes_in(30, 2, 4)
    assert torch.equal(evrtrl.simulate(m, x).spikes, evrtrl.simulate(back, x).spikes)


def test_float32_layer_keeps_float64_frozen_values(tmp_path):
    m = LIF(2, 3, tau_mem=0.02, tau_syn=[0.005, 0.006, 0.007], dt=1e-3, trainable=("bias",))
    back = load_model(save_model(m, tmp_path / "f.h5")).model
    assert back.dtype == torch.float32 and back.tau_mem.dtype == torch.float64
    assert float(back.tau_mem[0]) == 0.02 and back.bias.dtype == torch.float32
    _same(m, back)


def _write_v1(path, *, tau_syn=0.005):
    """A model file exactly as evrtrl 0.1.0 wrote it (scalar LIF attributes, format 1)."""
    g = torch.Generator().manual_seed(3)
    W, U = torch.randn(4, 2, generator=g, dtype=torch.float64) * 3, torch.randn(4, 4, generator=g, dtype=torch.float64)
    with h5py.File(path, "w") as f:
        f.attrs.update(format_version=1, kind="evrtrl-model", evrtrl_version="0.1.0", extra="{}")
        mg = f.create_group("model")
        mg.attrs.update({"class": "LIF", "n_layers": 1})
        lg = mg.create_group("layers/0")
        lg.attrs.update({"class": "LIF", "input_size": 2, "hidden_size": 4, "dtype": "float64",
                         "pd_kind": "Triangle", "pd_gamma": 0.3, "pd_width": 0.5, "tau_mem": 0.02,
                         "tau_syn": tau_syn, "dt": 0.001, "v_th": 0.8, "v_leak": 0.1, "v_reset": -0.1,
                         "reset": "subtract", "integration": "exact", "recurrent": True})
        lg.create_dataset("W", data=W.numpy())
        lg.create_dataset("U", data=U.numpy())
        lg.create_dataset("mask_W", data=np.ones((4, 2), bool))
        lg.create_dataset("mask_U", data=np.ones((4, 4), bool))
    return W, U


def test_version_1_file_written_by_hand_loads(tmp_path):
    W, U = _write_v1(tmp_path / "v1.h5")
    m = load_model(tmp_path / "v1.h5").model
    ref = LIF(2, 4, tau_mem=0.02, tau_syn=0.005, dt=1e-3, v_th=0.8, v_leak=0.1, v_reset=-0.1,
              reset="subtract", dtype=torch.float64)
    with torch.no_grad():
        ref.W.copy_(W)
        ref.U.copy_(U)
    _same(ref, m)
    assert m.trainable == () and m.synapse and bool((m.bias == 0).all())
    x = spikes_in(40, 2, 2, p=0.5)
    s = evrtrl.simulate(m, x).spikes
    assert s.sum() > 0 and torch.equal(s, evrtrl.simulate(ref, x).spikes)


def test_bad_neuron_values_are_named(tmp_path):
    p = save_model(lif(per_neuron=True), tmp_path / "b.h5")
    with h5py.File(p, "a") as f:
        del f["model/layers/0/v_leak"]
        f["model/layers/0/v_leak"] = np.zeros(3)
    seal(p)  # a crafted file: the seal is valid, the field is not
    with pytest.raises(FormatError, match=r"v_leak.*shape \(3,\), expected \(7,\)"):
        load_model(p)
    _write_v1(tmp_path / "bad.h5", tau_syn=-1.0)
    with pytest.raises(FormatError, match="tau_syn"):
        load_model(tmp_path / "bad.h5")


def test_registry_config_and_rebuild_keep_per_neuron_values():
    from evrtrl.models import cell_spec

    m = lif(per_neuron=True, trainable=("v_th", "bias"))
    spec = cell_spec(m)
    cfg = spec.config(m)
    assert cfg["trainable"] == ("v_th", "bias") and cfg["v_th"].shape == (7,) and cfg["synapse"]
    assert spec.parameter_names(cfg) == ("W", "U", "v_th", "bias")
    twin = spec.from_config(4, 7, cfg, dtype=torch.float64)
    _same(m, twin)
    # rebuild: a changed value replaces the old one, the others (and the weights) are kept
    new = spec.rebuild(m, tau_mem=0.03, v_th=0.9)
    assert bool((new.tau_mem == 0.03).all()) and bool((new.v_th == 0.9).all())
    assert torch.equal(new.W, m.W) and torch.equal(new.v_leak, m.v_leak) and torch.equal(new.bias, m.bias)
    free = lif(synapse=False, per_neuron=True)
    assert spec.config(free)["tau_syn"] is None and spec.from_config(4, 7, spec.config(free)).state_size == 1


def test_training_builds_lif_with_trained_neuron_values():
    from evrtrl.training.loop import TrainConfig, build_model

    cfg = TrainConfig(data="synthetic:rotation", model="lif", hidden=5, cell={"trainable": ["v_th", "tau_mem"]})
    model, _ = build_model(cfg, 3, 2, 1000)
    assert model.unit_parameters == ("tau_mem", "v_th") and model.v_th.requires_grad
