"""The cells' compiled steps for the event engine's compiled path (:mod:`evrtrl.kernels`).

Each cell's C++ lives beside its pure step: ``egru_kernel.cpp`` (:func:`evrtrl.models.egru.egru_step`
+ :func:`~evrtrl.models.egru.egru_jacobian`) and ``lif_kernel.cpp``
(:func:`~evrtrl.models.lif.lif_step` + :func:`~evrtrl.models.lif.lif_jacobian`). The pure
steps stay the single definition: ``tests/core/test_compiled.py`` checks each kernel
against them and their torch.func Jacobians in float64.

Coverage (any other configuration runs the layer's pure step, and the engine kernel the rest):

* EGRU with the :class:`~evrtrl.models.surrogate.Triangle` pseudo-derivative;
* LIF with scalar neuron parameters, Triangle, both integrations, both resets, with or
  without recurrence.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from evrtrl.kernels import CellKernel, kernel_mode, register_cell_kernel
from evrtrl.kernels.build import load, require
from evrtrl.models.egru import EGRU, EGRUState
from evrtrl.models.lif import LIF, LIFState, lif_coefficients
from evrtrl.models.surrogate import Triangle

__all__ = ["EGRUKernel", "LIFKernel", "egru_kernel", "lif_kernel"]

HERE = Path(__file__).parent


def _module(name: str, source: str) -> Any:
    if kernel_mode() == "compiled":
        return require(name, [HERE / source])
    return load(name, [HERE / source])


def _groups(layer: Any) -> list[str]:
    """The event engine's group order: recurrent projections, input projections, units."""
    rec = [p.name for p in layer.projections if p.source == "recurrent"]
    inp = [p.name for p in layer.projections if p.source == "input"]
    return rec + inp + list(layer.unit_parameters)


class EGRUKernel(CellKernel):
    """:func:`~evrtrl.models.egru.egru_step` + its Jacobian pieces in one C++ call."""

    direct = ("theta",)
    GROUPS = ["U_u", "U_r", "U_z", "W_u", "W_r", "W_z", "b_u", "b_r", "b_z", "theta"]

    def __init__(self, layer: EGRU, mod: Any) -> None:
        self.mod, self.pd = mod, layer.pseudo_derivative

    def refresh(self, w: Any) -> None:
        self.WT = torch.cat((w.W_u, w.W_r, w.W_z)).t().contiguous()
        self.UT = torch.cat((w.U_u, w.U_r, w.U_z)).t().contiguous()
        self.bias = torch.stack((w.b_u, w.b_r, w.b_z)).contiguous()
        self.theta = w.theta.contiguous()

    def step(self, prev: EGRUState, x: torch.Tensor, first: bool) -> tuple:
        c, e, y, diag, phis, gain, gd = self.mod.egru_step(
            x, prev.c, prev.e, prev.y, self.WT, self.UT, self.bias, self.theta,
            self.pd.gamma, self.pd.width, first)
        return EGRUState(c, e, y), diag, phis, gain, gd


def egru_kernel(layer: EGRU) -> EGRUKernel | None:
    """The compiled step of ``layer``, None if its configuration is not covered."""
    if type(layer.pseudo_derivative) is not Triangle or _groups(layer) != EGRUKernel.GROUPS:
        return None
    mod = _module("evrtrl_egru_kernel", "egru_kernel.cpp")
    return EGRUKernel(layer, mod) if mod is not None else None


class LIFKernel(CellKernel):
    """:func:`~evrtrl.models.lif.lif_step` + its Jacobian pieces in one C++ call.

    Covers a current-based LIF whose neuron parameters are frozen and equal across neurons
    (the scalar configuration) with no bias; its coefficients are taken from
    :func:`~evrtrl.models.lif.lif_coefficients`, the pure step's own definition.
    """

    direct = ()

    def __init__(self, layer: LIF, mod: Any, values: dict[str, float]) -> None:
        p = layer.p
        c = lif_coefficients(layer.weights(), p)
        a, b, alpha = float(c.a[0]), float(c.b[0]), float(c.alpha[0])
        self.mod = mod
        self.coef = [a, b, alpha, values["v_th"], values["v_leak"], values["v_reset"],
                     p.dt * (1.0 / values["tau_mem"]), -p.dt * (1.0 / values["tau_syn"]),
                     p.pseudo_derivative.gamma, p.pseudo_derivative.width]
        self.zero, self.euler = p.reset == "zero", p.integration == "euler"
        self.no_U = torch.empty(0, dtype=layer.dtype, device=layer.device)

    def refresh(self, w: Any) -> None:
        self.WT = w.W.t().contiguous()
        self.UT = w.U.t().contiguous() if w.U is not None else self.no_U

    def step(self, prev: LIFState, x: torch.Tensor, first: bool) -> tuple:
        q, i, z, diag, phis, gain = self.mod.lif_step(
            x, prev.q, prev.i, prev.e, self.WT, self.UT, self.coef, self.zero, self.euler, first)
        return LIFState(q, i, z, z), diag, phis, gain, None


def _uniform_values(layer: LIF) -> dict[str, float] | None:
    """The neuron parameters as floats when every one is frozen and equal across neurons
    and the bias is zero; None otherwise (the pure step then runs)."""
    if layer.unit_parameters:
        return None
    values = {}
    for k, v in layer.neuron_parameters().items():
        if v.numel() == 0 or not bool((v == v[0]).all()):
            return None
        values[k] = float(v[0])
    return values if values.get("bias", 0.0) == 0.0 else None


def lif_kernel(layer: LIF) -> LIFKernel | None:
    """The compiled step of ``layer``, None if its configuration is not covered."""
    p = getattr(layer, "p", None)
    if (p is None or type(p.pseudo_derivative) is not Triangle or not p.synapse
            or layer.state_size != 2 or _groups(layer) not in (["U", "W"], ["W"])):
        return None
    values = _uniform_values(layer)
    if values is None:
        return None
    mod = _module("evrtrl_lif_kernel", "lif_kernel.cpp")
    return LIFKernel(layer, mod, values) if mod is not None else None


register_cell_kernel(EGRU, egru_kernel, "EGRU with the Triangle pseudo-derivative")
register_cell_kernel(LIF, lif_kernel, "current-based LIF with frozen, uniform neuron parameters, no bias, and the Triangle "
                     "pseudo-derivative (exact/euler, zero/subtract reset, recurrent or not)")
