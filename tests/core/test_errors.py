"""Bad input gets a specific error that names what was wrong."""
from __future__ import annotations

import pytest
import torch

import evrtrl
from evrtrl.errors import ConfigError, MaskError, NonFiniteError, ShapeError, UnknownMethodError
from evrtrl.models import EGRU, LIF, Stack

from .helpers import egru, per_step_loss


def test_wrong_rank():
    with pytest.raises(ShapeError, match="rank 3"):
        evrtrl.simulate(egru(), torch.zeros(5, 3, dtype=torch.float64))


def test_wrong_input_size():
    with pytest.raises(ShapeError, match="4 input channels.*expects 3"):
        evrtrl.gradients(egru(), torch.zeros(5, 2, 4, dtype=torch.float64), per_step_loss)


def test_wrong_dtype():
    with pytest.raises(ShapeError, match="dtype"):
        evrtrl.simulate(egru(), torch.zeros(5, 2, 3))


def test_nan_input_names_index():
    x = torch.zeros(5, 2, 3, dtype=torch.float64)
    x[2, 1, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"\(2, 1, 0\)"):
        evrtrl.gradients(egru(), x, per_step_loss)


def test_inf_parameter_named():
    model = egru()
    with torch.no_grad():
        model.U_r[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="U_r"):
        evrtrl.simulate(model, torch.zeros(5, 2, 3, dtype=torch.float64))


def test_mask_wrong_shape():
    with pytest.raises(MaskError, match=r"'U_u' has shape \(3, 3\), expected \(4, 4\)"):
        EGRU(2, 4, masks={"U_u": torch.ones(3, 3)})


def test_mask_not_binary():
    with pytest.raises(MaskError, match="only 0 and 1"):
        EGRU(2, 4, masks={"W_z": torch.full((4, 2), 0.5)})


def test_mask_unknown_weight():
    with pytest.raises(MaskError, match="unknown weights"):
        LIF(2, 4, tau_mem=0.01, tau_syn=0.005, dt=0.001, recurrent=False,
            masks={"U": torch.ones(4, 4)})


def test_unknown_method():
    with pytest.raises(UnknownMethodError, match="'adjoint'"):
        evrtrl.gradients(egru(), torch.zeros(3, 1, 3, dtype=torch.float64), per_step_loss,
                         method="adjoint")


def test_bad_lif_parameters():
    with pytest.raises(ConfigError, match="tau_mem"):
        LIF(2, 3, tau_mem=-1.0, tau_syn=0.005, dt=0.001)
    with pytest.raises(ConfigError, match="reset"):
        LIF(2, 3, tau_mem=0.01, tau_syn=0.005, dt=0.001, reset="hard")
    with pytest.raises(ConfigError, match="euler integration needs dt"):
        LIF(2, 3, tau_mem=0.01, tau_syn=0.005, dt=0.01, integration="euler")


def test_stack_size_mismatch():
    with pytest.raises(ShapeError, match="layer 1 has input_size 3, expected 4"):
        Stack(EGRU(2, 4), EGRU(3, 2))


def test_loss_must_be_scalar():
    with pytest.raises(ShapeError, match="scalar"):
        evrtrl.gradients(egru(), torch.ones(3, 2, 3, dtype=torch.float64), lambda y, t: y)


@pytest.mark.parametrize("method", ["event", "dense", "bptt"])
def test_engine_step_and_accumulate_check_shapes(method):
    """Every engine refuses a step input or an upstream gradient of the wrong shape (a (2, 99)
    gradient used to be accepted by the event engine), naming what it expected."""
    model = Stack(EGRU(2, 4), EGRU(4, 3)).double()
    eng = evrtrl.make_engine(model, batch=3, method=method)
    with pytest.raises(ShapeError, match=r"expected \(batch, input_size\) = \(3, 2\)"):
        eng.step(torch.randn(3, 5, dtype=torch.float64))
    eng.step(torch.randn(3, 2, dtype=torch.float64))
    with pytest.raises(ShapeError, match=r"\(3, 3\)"):
        eng.accumulate(torch.randn(2, 99, dtype=torch.float64))
    with pytest.raises(ShapeError, match=r"layer 0\) = \(3, 4\)"):
        eng.accumulate(torch.randn(3, 3, dtype=torch.float64), layer=0)
    with pytest.raises(ShapeError, match="layer=2"):
        eng.accumulate(torch.randn(3, 3, dtype=torch.float64), layer=2)
    eng.accumulate(torch.randn(3, 3, dtype=torch.float64))
    eng.accumulate(torch.randn(3, 4, dtype=torch.float64), layer=0)
