"""exact integration reproduces Brian2 (method='exact', default schedule) spike for spike."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

import evrtrl
from evrtrl.errors import UnsupportedError
from evrtrl.models import EGRU, Stack

pytest.importorskip("brian2", reason="needs Brian2, the 'sim' extra: pip install 'evrtrl[sim]'")

from evrtrl.validation.brian2_bridge import run_brian2  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

# (seed, d, n, T, B, input rate, weight scale): several seeds, rates and sizes
CONFIGS = [
    (0, 4, 6, 150, 2, 0.10, 3.0),
    (1, 8, 16, 300, 2, 0.25, 2.0),
    (2, 3, 24, 200, 1, 0.05, 5.0),
]


#: end-of-step v, i agree to within this (strictly below 1e-9, as asserted before)
BRIAN2_ATOL = math.nextafter(1e-9, 0.0)


@pytest.mark.parametrize("recurrent", [False, True], ids=["ff", "rec"])
@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"seed{c[0]}-n{c[2]}-rate{c[5]}")
def test_exact_matches_brian2(same_dynamics, make_lif, make_spikes, recurrent, reset, cfg):
    seed, d, n, T, B, rate, scale = cfg
    m = make_lif(d, n, seed=seed, reset=reset, recurrent=recurrent, scale=scale)
    x = make_spikes(T, B, d, rate, seed)
    same_dynamics(m, x, run_brian2(m, x), BRIAN2_ATOL)


def test_exact_matches_brian2_nonzero_leak_reset_and_taus(same_dynamics, make_lif, make_spikes):
    m = make_lif(5, 12, seed=7, reset="subtract", tau_mem=8e-3, tau_syn=3e-3, dt=0.5e-3,
                 v_leak=0.2, v_reset=-0.3, scale=6.0)
    x = make_spikes(250, 2, 5, 0.2, 7)
    same_dynamics(m, x, run_brian2(m, x), BRIAN2_ATOL)


def test_stack_matches_brian2(same_dynamics, make_lif, make_spikes):
    m = Stack(make_lif(5, 10, seed=3, scale=4.0),
              make_lif(10, 7, seed=4, reset="subtract", recurrent=False, scale=3.0,
                       tau_mem=15e-3, tau_syn=5e-3))
    x = make_spikes(200, 2, 5, 0.2, 3)
    same_dynamics(m, x, run_brian2(m, x), BRIAN2_ATOL)


@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("recurrent", [False, True], ids=["ff", "rec"])
def test_per_neuron_parameters_and_bias_match_brian2(same_dynamics, make_lif, make_spikes, reset,
                                                     recurrent):
    """Heterogeneous tau_mem, tau_syn, v_th, v_leak, v_reset and bias: per-neuron variables."""
    m = make_lif(4, 9, seed=21, reset=reset, recurrent=recurrent, per_neuron=True, scale=4.0)
    assert bool((m.v_th != m.v_th[0]).any()) and bool((m.bias != 0).all())
    x = make_spikes(150, 2, 4, 0.2, 21)
    same_dynamics(m, x, run_brian2(m, x), BRIAN2_ATOL)


@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("per_neuron", [False, True], ids=["scalar", "per-neuron"])
def test_current_free_matches_brian2(same_dynamics, make_lif, make_spikes, reset, per_neuron):
    """synapse=False (nir.LIF): the input current held over the step, integrated exactly."""
    m = make_lif(4, 8, seed=22, reset=reset, synapse=False, per_neuron=per_neuron, scale=40.0)
    x = make_spikes(150, 2, 4, 0.2, 22)
    res = run_brian2(m, x)
    assert set(res.states) == {"v"}
    same_dynamics(m, x, res, BRIAN2_ATOL)


def test_stack_of_current_free_and_cuba_matches_brian2(same_dynamics, make_lif, make_spikes):
    m = Stack(make_lif(4, 8, seed=23, synapse=False, per_neuron=True, scale=40.0),
              make_lif(8, 5, seed=24, per_neuron=True, reset="subtract", scale=4.0))
    x = make_spikes(150, 2, 4, 0.2, 23)
    same_dynamics(m, x, run_brian2(m, x), BRIAN2_ATOL)


def test_batch_index(make_lif, make_spikes):
    m = make_lif(4, 6, seed=5)
    x = make_spikes(120, 3, 4, 0.2, 5)
    res = run_brian2(m, x, batch_index=2)
    sim = evrtrl.simulate(m, x)
    assert res.spikes.shape == (120, 1, 6)
    assert torch.equal(res.spikes[:, 0], sim.spikes[:, 2])


def test_unsupported(make_lif, make_spikes):
    x = make_spikes(10, 1, 3, 0.5, 0)
    with pytest.raises(UnsupportedError, match="EGRU"):
        run_brian2(EGRU(3, 4, dtype=torch.float64), x)
    with pytest.raises(UnsupportedError, match="euler"):
        run_brian2(make_lif(3, 4, seed=0, integration="euler"), x)
    with pytest.raises(UnsupportedError, match="0/1 spikes"):
        run_brian2(make_lif(3, 4, seed=0), x * 0.5)


def test_never_writes_into_home(tmp_path):
    """A fresh process with HOME pointed at an empty directory leaves it empty."""
    home = tmp_path / "home"
    home.mkdir()
    code = (
        "import torch\n"
        "from evrtrl.models import LIF\n"
        "from evrtrl.validation.brian2_bridge import run_brian2\n"
        "m = LIF(2, 3, tau_mem=0.02, tau_syn=0.01, dt=1e-3, dtype=torch.float64)\n"
        "run_brian2(m, torch.ones(5, 1, 2, dtype=torch.float64))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CACHE_HOME",
                                                            "XDG_CONFIG_HOME")}
    env.update(HOME=str(home))
    subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, check=True, timeout=300)
    assert sorted(p.relative_to(home).as_posix() for p in home.rglob("*")) == []
