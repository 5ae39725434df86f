"""Model files and checkpoints written by evrtrl 0.1.0 still load.

The files are written here by hand, attribute by attribute, in the layout 0.1.0's
``evrtrl/checkpoint.py`` wrote (format_version 1; checked once against files made by 0.1.0's
own ``save_model`` / ``save_checkpoint``: same groups, attributes and datasets).
"""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from evrtrl.errors import FormatError
from evrtrl.models import EGRU, LIF, Readout, Stack, Triangle, load_model
from evrtrl.training.checkpoint import load_checkpoint

RNG = np.random.default_rng(0)


def _header(f, kind, extra):
    f.attrs["format_version"] = 1
    f.attrs["kind"] = kind
    f.attrs["evrtrl_version"] = "0.1.0"
    f.attrs["extra"] = json.dumps(extra, sort_keys=True, default=str)


def _layer(g, cls, d, n, params, masks, pd=("Triangle", 0.7, 0.5), dtype="float64", **hyper):
    g.attrs["class"] = cls
    g.attrs["input_size"] = d
    g.attrs["hidden_size"] = n
    g.attrs["dtype"] = dtype
    g.attrs["pd_kind"], g.attrs["pd_gamma"], g.attrs["pd_width"] = pd
    for k, v in hyper.items():
        g.attrs[k] = v
    for k, v in params.items():
        g.create_dataset(k, data=v)
    for k, m in masks.items():
        g.create_dataset(f"mask_{k}", data=m)


def _egru_values(d, n):
    masks = {f"{w}_{g}": RNG.random((n, d if w == "W" else n)) < 0.5 for w in "WU" for g in "urz"}
    params = {k: np.where(m, RNG.standard_normal(m.shape), 0.0) for k, m in masks.items()}
    params.update({f"b_{g}": RNG.standard_normal(n) for g in "urz"})
    params["theta"] = np.full(n, 0.2)
    return params, masks


def _lif_values(d, n):
    masks = {"W": RNG.random((n, d)) < 0.6, "U": np.ones((n, n), bool)}
    params = {k: np.where(m, RNG.standard_normal(m.shape), 0.0) for k, m in masks.items()}
    return params, masks


def _write_model(f, with_readout=True):
    e_params, e_masks = _egru_values(5, 4)
    l_params, l_masks = _lif_values(3, 5)
    mg = f.create_group("model")
    mg.attrs["class"] = "Stack"
    mg.attrs["n_layers"] = 2
    lg = mg.create_group("layers")
    _layer(lg.create_group("0"), "LIF", 3, 5, l_params, l_masks, pd=("FastSigmoid", 1.0, 0.2),
           tau_mem=0.02, tau_syn=0.005, dt=0.001, v_th=0.8, v_leak=0.1, v_reset=-0.1,
           reset="subtract", integration="euler", recurrent=True)
    _layer(lg.create_group("1"), "EGRU", 5, 4, e_params, e_masks)
    readout = None
    if with_readout:
        readout = {"weight": RNG.standard_normal((2, 4)), "bias": RNG.standard_normal(2)}
        rg = f.create_group("readout")
        rg.attrs["class"] = "Readout"
        rg.attrs["hidden_size"] = 4
        rg.attrs["n_out"] = 2
        rg.attrs["dtype"] = "float64"
        for k, v in readout.items():
            rg.create_dataset(k, data=v)
    return l_params, l_masks, e_params, e_masks, readout


def _check_model(model, readout, l_params, l_masks, e_params, e_masks, r_values):
    assert isinstance(model, Stack) and isinstance(model[0], LIF) and isinstance(model[1], EGRU)
    lif, egru = model.layers
    assert lif.dt == 0.001
    # 0.1.0 stored one value per layer: since 0.2.0 every neuron holds it
    for k, v in dict(tau_mem=0.02, tau_syn=0.005, v_th=0.8, v_leak=0.1, v_reset=-0.1).items():
        assert torch.equal(getattr(lif, k), torch.full((lif.hidden_size,), v, dtype=torch.float64)), k
    assert (lif.reset, lif.integration, lif.recurrent) == ("subtract", "euler", True)
    assert type(lif.pseudo_derivative).__name__ == "FastSigmoid" and egru.pseudo_derivative == Triangle(0.7, 0.5)
    for layer, params, masks in ((lif, l_params, l_masks), (egru, e_params, e_masks)):
        assert layer.dtype == torch.float64
        for k, v in params.items():
            np.testing.assert_array_equal(getattr(layer, k).detach().numpy(), v)
        for k, m in masks.items():
            np.testing.assert_array_equal(layer.masks[k].numpy(), m)
    if r_values is not None:
        assert isinstance(readout, Readout)
        np.testing.assert_array_equal(readout.weight.detach().numpy(), r_values["weight"])


def test_model_file_written_by_0_1_0_loads(tmp_path):
    path = tmp_path / "model.h5"
    with h5py.File(path, "w") as f:
        _header(f, "evrtrl-model", {"epoch": 3, "test_acc": 0.875})
        values = _write_model(f)
    loaded = load_model(path)
    _check_model(loaded.model, loaded.readout, *values)
    assert loaded.extra == {"epoch": 3, "test_acc": 0.875}


def test_single_layer_file_written_by_0_1_0_loads(tmp_path):
    path = tmp_path / "lif.h5"
    params, masks = _lif_values(3, 5)
    del params["U"], masks["U"]
    with h5py.File(path, "w") as f:
        _header(f, "evrtrl-model", {})
        mg = f.create_group("model")
        mg.attrs["class"], mg.attrs["n_layers"] = "LIF", 1
        _layer(mg.create_group("layers").create_group("0"), "LIF", 3, 5, params, masks, dtype="float32",
               tau_mem=0.02, tau_syn=0.005, dt=0.001, v_th=1.0, v_leak=0.0, v_reset=0.0,
               reset="zero", integration="exact", recurrent=False)
    model, readout = load_model(path)
    assert isinstance(model, LIF) and not model.recurrent and readout is None
    assert model.dtype == torch.float32


def _tree(parent, name, obj):  # 0.1.0's checkpoint tree writer
    if isinstance(obj, np.ndarray):
        ds = parent.create_dataset(name, data=obj)
        ds.attrs["torch_dtype"] = str(obj.dtype)
    elif isinstance(obj, dict):
        g = parent.create_group(name)
        g.attrs["tree"] = "dict"
        g.attrs["keys"] = json.dumps(list(obj))
        for i, k in enumerate(obj):
            _tree(g, str(i), obj[k])
    elif isinstance(obj, (list, tuple)):
        g = parent.create_group(name)
        g.attrs["tree"] = "list" if isinstance(obj, list) else "tuple"
        g.attrs["length"] = len(obj)
        for i, v in enumerate(obj):
            _tree(g, str(i), v)
    else:
        ds = parent.create_dataset(name, data=json.dumps(obj))
        ds.attrs["json"] = True


def test_checkpoint_written_by_0_1_0_loads(tmp_path):
    path = tmp_path / "checkpoint.h5"
    exp_avg = RNG.standard_normal(4)
    with h5py.File(path, "w") as f:
        _header(f, "evrtrl-checkpoint", {"config": {"model": "egru", "hidden": 4}})
        values = _write_model(f)
        _tree(f, "optimizer", {"state": {0: {"step": np.array(7.0, np.float32), "exp_avg": exp_avg}},
                               "param_groups": [{"lr": 0.01, "betas": (0.9, 0.999), "params": [0, 1]}]})
        _tree(f, "counters", {"epoch": 1, "batch": 2, "global_batch": 9, "updates": 9, "wall_s": 12.5})
        _tree(f, "rng", {"torch": np.arange(5, dtype=np.uint8)})
        _tree(f, "metrics", [{"kind": "batch", "loss": 1.25}, {"kind": "epoch", "test_acc": 0.5}])
    ck = load_checkpoint(path)
    _check_model(ck.model, ck.readout, *values)
    assert ck.counters == {"epoch": 1, "batch": 2, "global_batch": 9, "updates": 9, "wall_s": 12.5}
    assert ck.metrics == [{"kind": "batch", "loss": 1.25}, {"kind": "epoch", "test_acc": 0.5}]
    assert ck.optimizer_state["param_groups"][0]["betas"] == (0.9, 0.999)
    state = ck.optimizer_state["state"][0]
    np.testing.assert_array_equal(state["exp_avg"].numpy(), exp_avg)
    assert ck.rng["torch"].dtype == torch.uint8 and ck.extra == {"config": {"model": "egru", "hidden": 4}}
    # the model part of a 0.1.0 checkpoint loads as a model too
    _check_model(*load_model(path), *values)


def test_unknown_future_version_is_refused(tmp_path):
    path = tmp_path / "model.h5"
    with h5py.File(path, "w") as f:
        _header(f, "evrtrl-model", {})
        f.attrs["format_version"] = 99
        _write_model(f)
    with pytest.raises(FormatError, match="format_version 99"):
        load_model(path)
