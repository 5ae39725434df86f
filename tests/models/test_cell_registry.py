"""A new cell touches ``models/`` only: a toy cell defined and registered in this module alone
is saved, loaded, checkpointed, differentiated exactly by every engine and trained through
the ordinary paths, with no change anywhere else in the library."""
from __future__ import annotations

import math
from typing import NamedTuple

import h5py
import pytest
import torch
import torch.nn.functional as F

import evrtrl
from evrtrl.benchmarks.funcrtrl import FuncRTRL
from evrtrl.errors import ConfigError, FormatError
from evrtrl.h5file import seal
from evrtrl.layer import Layer, LocalJacobian, Projection
from evrtrl.models import (
    CellSpec, HyperParameter, Readout, Stack, Triangle, cell_spec, heaviside, load_model,
    random_masks, register, registered_cells, save_model,
)
from evrtrl.training import TrainConfig, train
from evrtrl.training.checkpoint import load_checkpoint, save_checkpoint


# ----------------------------------------------------------------------------- the toy cell
class ToyState(NamedTuple):
    v: torch.Tensor
    e: torch.Tensor
    y: torch.Tensor


class ToyWeights(NamedTuple):
    W: torch.Tensor
    U: torch.Tensor
    b: torch.Tensor


def toy_state(layer, w, comps):
    (v,) = comps
    e = heaviside(v - layer.threshold, layer.pseudo_derivative)
    return ToyState(v, e, v * e)


class Toy(Layer):
    r"""A leaky unit with multiplicative reset:
    :math:`v_t = \lambda v_{t-1}(1 - e_{t-1}) + \tanh(W x_t + U y_{t-1} + b)`,
    :math:`e_t = H(v_t - \vartheta)`, :math:`y_t = v_t e_t`."""

    state_size = 1
    diag_structure = ((0, 0),)
    projections = (Projection("W", "input"), Projection("U", "recurrent"))
    unit_parameters = ("b",)
    Weights = ToyWeights

    def __init__(self, input_size, hidden_size, *, leak=0.8, threshold=0.3,
                 pseudo_derivative=Triangle(gamma=0.7, width=0.5), masks=None, init_scale=1.0,
                 dtype=torch.float32, device=None, generator=None):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.leak, self.threshold, self.pseudo_derivative = float(leak), float(threshold), pseudo_derivative
        kw = dict(dtype=dtype, device=device)
        s = init_scale / math.sqrt(hidden_size)
        self.W = torch.nn.Parameter(torch.randn(hidden_size, input_size, generator=generator, **kw) * s)
        self.U = torch.nn.Parameter(torch.randn(hidden_size, hidden_size, generator=generator, **kw) * s)
        self.b = torch.nn.Parameter(torch.randn(hidden_size, generator=generator, **kw) * 0.1)
        self._register_masks(masks)

    @staticmethod
    def weight_shapes(d, n):
        return {"W": (n, d), "U": (n, n)}

    def initial_state(self, batch):
        z = torch.zeros(batch, self.hidden_size, dtype=self.dtype, device=self.device)
        return ToyState(z, z, z)

    def step(self, w, state, x):
        a = F.linear(x, w.W) + F.linear(state.y, w.U) + w.b
        v = self.leak * state.v * (1 - state.e) + torch.tanh(a)
        return toy_state(self, w, (v,)), a

    def local_jacobian(self, w, prev, x, new, aux, first):
        pd = self.pseudo_derivative
        psi_prev = torch.zeros_like(prev.v) if first else pd(prev.v - self.threshold)
        g = (1 - torch.tanh(aux) ** 2)[..., None]
        psi = pd(new.v - self.threshold)
        return LocalJacobian(
            diag=(self.leak * (1 - prev.e - prev.v * psi_prev))[..., None],
            phi={"W": g, "U": g}, unit_phi={"b": g},
            gain=(new.e + new.v * psi)[..., None], gain_direct={},
        )

    def state_traces(self, w, state):
        return {"v": state.v}


TOY = register(CellSpec(
    name="Toy", cls=Toy,
    hyper=(HyperParameter("leak", float), HyperParameter("threshold", float)),
    weight_shapes=lambda d, n, config: Toy.weight_shapes(d, n),
    state_from_components=toy_state,
))


def _toy(d=3, n=6, density=0.6, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    masks = random_masks(Toy.weight_shapes(d, n), density, seed=seed) if density < 1 else None
    return Toy(d, n, masks=masks, generator=g, init_scale=2.0, dtype=torch.float64, **kw)


def _x(T=15, B=2, d=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, B, d, generator=g, dtype=torch.float64)


def _loss(y, t):
    return ((y - 0.3) ** 2).sum()


# ----------------------------------------------------------------------------- the tests
def test_registry_lists_and_finds_the_toy_cell():
    assert {"EGRU", "LIF", "Toy"} <= set(registered_cells())
    assert cell_spec("toy") is TOY and cell_spec(Toy) is TOY and cell_spec(_toy()) is TOY
    assert TOY.parameter_names({}) == ("W", "U", "b")
    assert TOY.config(_toy(leak=0.5)) == {"leak": 0.5, "threshold": 0.3}
    with pytest.raises(ConfigError, match="registered cells"):
        cell_spec("no-such-cell")
    with pytest.raises(ConfigError, match="unknown hyper-parameters \\['lek'\\]"):
        TOY.from_config(3, 4, {"lek": 0.5})
    with pytest.raises(ConfigError, match="'leak' must be a float"):
        TOY.from_config(3, 4, {"leak": "fast"})


def test_every_engine_is_exact_on_the_toy_cell():
    model, x = _toy(), _x()
    g = {m: evrtrl.gradients(model, x, _loss, method=m) for m in evrtrl.METHODS}
    assert sum(float(v.norm()) for v in g["bptt"].values()) > 0
    assert g["event"].stats.summary()["beta"] < 1.0  # the event engine skipped something
    for name in g["bptt"]:
        assert evrtrl.relative_error(g["event"][name], g["dense"][name]) <= 1e-12, name
        assert evrtrl.relative_error(g["event"][name], g["dense-live"][name]) <= 1e-12, name
        assert evrtrl.relative_error(g["event"][name], g["bptt"][name]) <= 1e-10, name
        assert evrtrl.relative_error(g["dense"][name], g["bptt"][name]) <= 1e-10, name
    assert (g["event"]["U"][~model.masks["U"]] == 0).all()


def test_forward_mode_rtrl_runs_the_toy_cell():
    model, x = _toy(n=4), _x(T=6)
    eng = FuncRTRL(model, x.shape[1], chunk=8)
    for t in range(x.shape[0]):
        y = eng.step(x[t])
        eng.accumulate(2 * (y - 0.3))
    ref = evrtrl.gradients(model, x, _loss, method="bptt")
    for k, v in eng.gradients().items():
        assert evrtrl.relative_error(v, ref[k]) <= 1e-10, k


def test_toy_cell_model_file_round_trip(tmp_path):
    model = Stack(_toy(leak=0.6), _toy(d=6, n=4, seed=3, threshold=0.2))
    readout = Readout(4, 2, dtype=torch.float64)
    path = save_model(model, tmp_path / "toy.h5", readout=readout, note="toy")
    back = load_model(path)
    assert isinstance(back.model, Stack) and all(isinstance(l, Toy) for l in back.model.layers)
    assert [l.leak for l in back.model.layers] == [0.6, 0.8]
    assert back.model[1].threshold == 0.2 and back.extra == {"note": "toy"}
    for a, b in zip(model.state_dict().values(), back.model.state_dict().values()):
        assert torch.equal(a, b)
    x = _x()
    assert torch.equal(evrtrl.simulate(model, x).outputs, evrtrl.simulate(back.model, x).outputs)
    # a bad stored hyper-parameter is a FormatError naming the file and the group
    with h5py.File(path, "r+") as f:
        f["model/layers/1"].attrs["leak"] = "slow"
    seal(path)  # a crafted file: the seal is valid, the field is not
    with pytest.raises(FormatError, match="'/model/layers/1'.*'leak' must be a float"):
        load_model(path)


def test_toy_cell_checkpoint_round_trip(tmp_path):
    model = _toy()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    path = save_checkpoint(tmp_path / "ck.h5", model, None, opt, counters={"epoch": 1})
    ck = load_checkpoint(path)
    assert isinstance(ck.model, Toy) and ck.counters == {"epoch": 1}
    assert torch.equal(ck.model.W, model.W) and torch.equal(ck.model.mask_U, model.mask_U)


def test_training_loop_trains_the_toy_cell(tmp_path):
    cfg = TrainConfig(data="synthetic:rotation", model="toy", hidden=8, density=0.5, epochs=1,
                      batch=8, max_batches=3, lr=0.02, dtype="float64", eval_each_epoch=False,
                      cell={"leak": 0.7}, log=("json",))
    res = train(cfg, tmp_path / "run", progress=False)
    assert isinstance(res.model, Toy) and res.model.leak == 0.7 and res.model.threshold == 0.3
    assert len(res.batches) == 3 and all(math.isfinite(r["loss"]) for r in res.batches)
    back = load_model(tmp_path / "run" / "model.h5")
    assert isinstance(back.model, Toy) and torch.equal(back.model.U, res.model.U)
