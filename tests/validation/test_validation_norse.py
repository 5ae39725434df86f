"""euler integration reproduces Norse 1.1 LIFCell / LIFRecurrentCell spike for spike."""
from __future__ import annotations

import pytest
import torch

import evrtrl
from evrtrl.errors import UnsupportedError
from evrtrl.models import EGRU, Stack

pytest.importorskip("norse.torch", reason="needs Norse: pip install --no-deps norse==1.1.0 (scripts/setup.sh)")

from evrtrl.validation.norse_bridge import norse_cell, run_norse  # noqa: E402

slow = pytest.mark.slow  # cross-simulator checks; CI runs them

CONFIGS = [
    (0, 4, 6, 150, 2, 0.10, 3.0),
    (1, 8, 16, 300, 3, 0.25, 2.0),
    (2, 3, 24, 200, 1, 0.05, 5.0),
    (3, 10, 40, 300, 2, 0.15, 3.0),
]


#: end-of-step v, i agree to within this (float64)
NORSE_ATOL = 1e-12


@slow
@pytest.mark.parametrize("recurrent", [False, True], ids=["LIFCell", "LIFRecurrentCell"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"seed{c[0]}-n{c[2]}-rate{c[5]}")
def test_euler_matches_norse(same_dynamics, make_lif, make_spikes, recurrent, cfg):
    seed, d, n, T, B, rate, scale = cfg
    m = make_lif(d, n, seed=seed, integration="euler", recurrent=recurrent, scale=scale)
    x = make_spikes(T, B, d, rate, seed)
    res = run_norse(m, x)
    assert isinstance(norse_cell(m), __import__("norse.torch").torch.LIFRecurrentCell) == recurrent
    same_dynamics(m, x, res, NORSE_ATOL)


@slow
def test_feedforward_is_bitwise(same_dynamics, make_lif, make_spikes):
    """LIFCell: the library evaluates Norse's expressions in Norse's order -> identical bits."""
    m = make_lif(6, 20, seed=11, integration="euler", recurrent=False, v_leak=0.1, scale=4.0)
    x = make_spikes(300, 2, 6, 0.2, 11)
    same_dynamics(m, x, run_norse(m, x), 0.0)


@slow
def test_graded_input_and_parameters(same_dynamics, make_lif):
    g = torch.Generator().manual_seed(5)
    m = make_lif(4, 12, seed=5, integration="euler", tau_mem=5e-3, tau_syn=2e-3, dt=0.25e-3,
                 v_leak=0.3, v_reset=-0.2, scale=4.0)
    x = torch.rand(400, 2, 4, generator=g, dtype=torch.float64) * 0.5
    same_dynamics(m, x, run_norse(m, x), NORSE_ATOL)


@slow
def test_stack(same_dynamics, make_lif, make_spikes):
    m = Stack(make_lif(5, 10, seed=3, integration="euler", scale=4.0),
              make_lif(10, 7, seed=4, integration="euler", recurrent=False, scale=3.0))
    x = make_spikes(200, 2, 5, 0.2, 3)
    same_dynamics(m, x, run_norse(m, x), NORSE_ATOL)


@slow
def test_masked_diagonal_autapses(same_dynamics, make_lif, make_spikes):
    n = 10
    from evrtrl.models import LIF
    g = torch.Generator().manual_seed(9)
    m = LIF(4, n, tau_mem=20e-3, tau_syn=10e-3, dt=1e-3, integration="euler", weight_scale=3.0,
            masks={"U": 1 - torch.eye(n)}, dtype=torch.float64, generator=g)
    x = make_spikes(200, 2, 4, 0.2, 9)
    same_dynamics(m, x, run_norse(m, x), NORSE_ATOL)


@slow
def test_float32_model(make_lif, make_spikes):
    """float32 library model vs Norse with float32 parameters (Norse's default dtype)."""
    m = make_lif(5, 30, seed=12, integration="euler", dtype=torch.float32)
    x = make_spikes(300, 2, 5, 0.2, 12, dtype=torch.float32)
    res = run_norse(m, x, parameter_dtype=torch.float32)
    sim = evrtrl.simulate(m, x)
    assert torch.equal(sim.spikes, res.spikes)
    assert (sim.states["v"] - res.states["v"]).abs().max() < 1e-4


@slow
@pytest.mark.parametrize("recurrent", [False, True], ids=["LIFCell", "recurrent"])
def test_per_neuron_parameters_and_bias_match_norse(same_dynamics, make_lif, make_spikes, recurrent):
    """Per-neuron tensors in Norse's LIFParameters; feed-forward stays bit for bit."""
    m = make_lif(4, 9, seed=31, integration="euler", recurrent=recurrent, per_neuron=True, scale=4.0)
    x = make_spikes(200, 2, 4, 0.2, 31)
    same_dynamics(m, x, run_norse(m, x), 0.0 if not recurrent else NORSE_ATOL)


@slow
@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("recurrent", [False, True], ids=["ff", "rec"])
def test_current_free_matches_norse_lifbox(same_dynamics, make_lif, make_spikes, reset, recurrent):
    """synapse=False is Norse's LIFBoxCell (what its from_nir builds for nir.LIF), bit for bit."""
    m = make_lif(4, 8, seed=32, integration="euler", reset=reset, recurrent=recurrent,
                 synapse=False, scale=40.0, per_neuron=True)
    if reset == "subtract":  # Norse's reset_subtract is the library's with v_reset = 0
        m.set_neuron_parameters(v_reset=0.0)
    x = make_spikes(200, 2, 4, 0.2, 32)
    res = run_norse(m, x)
    assert isinstance(norse_cell(m), __import__("norse.torch").torch.LIFBoxCell)
    same_dynamics(m, x, res, 0.0)


def test_unsupported(make_lif, make_spikes):
    x = make_spikes(10, 1, 3, 0.5, 0)
    with pytest.raises(UnsupportedError, match="subtract"):
        run_norse(make_lif(3, 4, seed=0, integration="euler", reset="subtract"), x)
    with pytest.raises(UnsupportedError, match="exact"):
        run_norse(make_lif(3, 4, seed=0), x)
    with pytest.raises(UnsupportedError, match="EGRU"):
        run_norse(EGRU(3, 4, dtype=torch.float64), x)
    with pytest.raises(UnsupportedError, match="v_th - v_reset"):
        run_norse(make_lif(3, 4, seed=0, integration="euler", reset="subtract", synapse=False,
                           v_reset=-0.1), x)
