"""The cells' compiled steps for the event engine's compiled path (:mod:`evrtrl.kernels`).

Each cell's C++ lives beside its pure step: ``egru_kernel.cpp`` (:func:`evrtrl.models.egru.egru_step`
+ :func:`~evrtrl.models.egru.egru_jacobian`) and ``lif_kernel.cpp``
(:func:`~evrtrl.models.lif.lif_step` + :func:`~evrtrl.models.lif.lif_jacobian`). The pure
steps stay the single definition: ``tests/core/test_compiled.py`` checks each kernel
against them and their torch.func Jacobians in float64.

Coverage (any other configuration runs the layer's pure step, and the engine kernel the rest):

* EGRU with the :class:`~evrtrl.models.surrogate.Triangle` pseudo-derivative;
* LIF with the Triangle pseudo-derivative: current-based and current-free, per-neuron (or
  uniform) neuron parameters and bias, frozen or trained, both integrations, both resets,
  with or without recurrence.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from evrtrl.kernels import CellKernel, kernel_mode, register_cell_kernel
from evrtrl.kernels.build import load, require
from evrtrl.models.egru import EGRU, EGRUState
from evrtrl.models.lif import NEURON_PARAMETERS, LIF, LIFState, lif_tau_factors, lif_terms
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

    Every neuron parameter is per neuron (a uniform value is a vector of equal values): the
    values and coefficients are :func:`~evrtrl.models.lif.lif_terms` of the weights and the
    time-constant derivative factors :func:`~evrtrl.models.lif.lif_tau_factors`, the pure
    step's own definitions, packed by :meth:`refresh` into one ``(n, 12)`` table (the
    columns of ``lif_kernel.cpp``). Trained neuron parameters get their direct Jacobian
    terms (``unit_phi``) and, for ``v_th``, the direct output gain.
    """

    def __init__(self, layer: LIF, mod: Any) -> None:
        p = layer.p
        self.mod, self.p = mod, p
        self.units = [NEURON_PARAMETERS.index(k) for k in layer.unit_parameters]
        self.direct = ("v_th",) if "v_th" in layer.unit_parameters else ()
        self.flags = (p.reset == "zero", p.integration == "euler", p.synapse,
                      p.pseudo_derivative.gamma, p.pseudo_derivative.width)
        self.no_U = torch.empty(0, dtype=layer.dtype, device=layer.device)
        self.args: tuple = ()

    def refresh(self, w: Any) -> None:
        dtype = w.W.dtype
        WT = w.W.t().contiguous()
        UT = w.U.t().contiguous() if w.U is not None else self.no_U
        t = lif_terms(w, self.p, dtype)
        f = lif_tau_factors(w, self.p, t.c, dtype, ("tau_mem", "tau_syn"))
        zero = torch.zeros_like(t.a)
        cols = (t.a, t.b, t.alpha, t.v_th, t.v_leak, t.v_reset, t.bias, t.minus_cs,
                f.mem_v, f.mem_j, f.syn_q, f.syn_i)
        coef = torch.stack([zero if c is None else c for c in cols], dim=1).contiguous()
        # the call's arguments after (x, q, i, z, first), packed once per refresh
        self.args = (WT, UT, coef, self.units) + self.flags

    def step(self, prev: LIFState, x: torch.Tensor, first: bool) -> tuple:
        i = prev.i if prev.i is not None else self.no_U
        q, i, z, diag, phis, gain, gd = self.mod.lif_step(x, prev.q, i, prev.e, first, *self.args)
        return LIFState(q, i, z, z), diag, phis, gain, gd


def lif_kernel(layer: LIF) -> LIFKernel | None:
    """The compiled step of ``layer``, None if its configuration is not covered (a
    pseudo-derivative other than :class:`~evrtrl.models.surrogate.Triangle`)."""
    p = getattr(layer, "p", None)
    if p is None or type(p.pseudo_derivative) is not Triangle:
        return None
    mod = _module("evrtrl_lif_kernel", "lif_kernel.cpp")
    return LIFKernel(layer, mod) if mod is not None else None


register_cell_kernel(EGRU, egru_kernel, "EGRU with the Triangle pseudo-derivative")
register_cell_kernel(LIF, lif_kernel, "LIF with the Triangle pseudo-derivative: current-based or current-free, "
                     "per-neuron (or uniform) neuron parameters, bias, trained neuron parameters, exact/euler, "
                     "zero/subtract reset, recurrent or not")
