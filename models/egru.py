r"""Event-based GRU: A. Subramoney, K. K. Nazeer, M. Schöne, C. Mayr, D. Kappel, "Efficient
recurrent architectures through activity sparsity and sparse back-propagation through time",
ICLR 2023 (arXiv 2206.06178), and its RTRL variant (arXiv 2303.05641), in the convention of
the authors' released code: the reset gate acts after the recurrent product, the reset is
gated and subtractive, and ``u`` weights the new candidate.

One step (t = 0 .. T-1; initial ``c = e = y = 0``, constants):

.. math::

    u_t &= \sigma(W_u x_t + U_u y_{t-1} + b_u) \\
    r_t &= \sigma(W_r x_t + U_r y_{t-1} + b_r) \\
    z_t &= \tanh(W_z x_t + r_t \odot (U_z y_{t-1}) + b_z) \\
    c_t &= u_t z_t + (1 - u_t)(c_{t-1} - \theta e_{t-1}) \\
    e_t &= H(c_t - \theta), \qquad y_t = c_t e_t

with :math:`H'` replaced by the pseudo-derivative :math:`\psi` at every occurrence of
``e`` (output, threshold and the reset path of the next step).

Local Jacobian pieces (per unit; :math:`\psi_{t-1} = \psi(c_{t-1} - \theta)`, zero at t = 0):

.. math::

    D_t &= \partial c_t / \partial c_{t-1} = (1-u_t)(1 - \theta \psi_{t-1}) \\
    \phi^u_t &= u_t (1-u_t) (z_t - c_{t-1} + \theta e_{t-1}) \quad (W_u, U_u, b_u) \\
    \phi^z_t &= u_t (1 - z_t^2) \quad (W_z, b_z), \qquad \phi^z_t r_t \quad (U_z) \\
    \phi^r_t &= \phi^z_t\, (U_z y_{t-1})\, r_t (1 - r_t) \quad (W_r, U_r, b_r) \\
    \partial c_t / \partial \theta\,|_{\rm direct} &= -(1-u_t)(e_{t-1} - \theta \psi_{t-1}) \\
    G_t &= \partial y_t/\partial c_t = e_t + c_t \psi_t, \qquad
    \partial y_t/\partial\theta\,|_{\rm direct} = -c_t \psi_t
"""
from __future__ import annotations

import math
from typing import Mapping, NamedTuple

import torch
import torch.nn.functional as F

from evrtrl.layer import Layer, LocalJacobian, Projection, check_sizes
from evrtrl.network import forward_sequence
from evrtrl.models.registry import CellSpec, register
from evrtrl.models.surrogate import PseudoDerivative, Triangle, heaviside

__all__ = ["EGRU", "EGRUState", "EGRUWeights", "EGRUAux", "egru_step", "egru_state", "egru_jacobian", "SPEC"]


class EGRUState(NamedTuple):
    """State after a step: internal ``c``, event ``e`` and sparse output ``y = c e``."""

    c: torch.Tensor
    e: torch.Tensor
    y: torch.Tensor


class EGRUWeights(NamedTuple):
    """Effective (masked) parameters of one EGRU layer."""

    W_u: torch.Tensor
    W_r: torch.Tensor
    W_z: torch.Tensor
    U_u: torch.Tensor
    U_r: torch.Tensor
    U_z: torch.Tensor
    b_u: torch.Tensor
    b_r: torch.Tensor
    b_z: torch.Tensor
    theta: torch.Tensor


class EGRUAux(NamedTuple):
    """Intermediates of a step, reused by :func:`egru_jacobian`."""

    u: torch.Tensor
    r: torch.Tensor
    z: torch.Tensor
    h_z: torch.Tensor  # U_z y_{t-1}


def egru_step(
    w: EGRUWeights, state: EGRUState, x: torch.Tensor, pd: PseudoDerivative
) -> tuple[EGRUState, EGRUAux]:
    """One EGRU step (equations in the module docstring); pure, differentiable."""
    y_prev = state.y
    u = torch.sigmoid(F.linear(x, w.W_u) + F.linear(y_prev, w.U_u) + w.b_u)
    r = torch.sigmoid(F.linear(x, w.W_r) + F.linear(y_prev, w.U_r) + w.b_r)
    h_z = F.linear(y_prev, w.U_z)
    z = torch.tanh(F.linear(x, w.W_z) + r * h_z + w.b_z)
    c = u * z + (1 - u) * (state.c - w.theta * state.e)
    return egru_state(w, c, pd), EGRUAux(u, r, z, h_z)


def egru_state(w: EGRUWeights, c: torch.Tensor, pd: PseudoDerivative) -> EGRUState:
    """The state record from the internal state: :math:`e = H(c - \\theta)`, :math:`y = c e`."""
    e = heaviside(c - w.theta, pd)
    return EGRUState(c, e, c * e)


def egru_jacobian(
    w: EGRUWeights,
    prev: EGRUState,
    new: EGRUState,
    aux: EGRUAux,
    pd: PseudoDerivative,
    first: bool,
) -> LocalJacobian:
    """Analytic local Jacobian pieces of :func:`egru_step` (module docstring)."""
    u, r, z, h_z = aux
    theta = w.theta
    if first:
        psi_prev = torch.zeros_like(prev.c)
    else:
        psi_prev = pd(prev.c - theta)
    one_u = 1 - u
    phi_u = u * one_u * (z - prev.c + theta * prev.e)
    phi_z = u * (1 - z * z)
    phi_r = phi_z * h_z * r * (1 - r)
    psi = pd(new.c - theta)
    col = lambda t: t.unsqueeze(-1)  # noqa: E731  (B, n) -> (B, n, 1)
    cu, cr, cz = col(phi_u), col(phi_r), col(phi_z)  # shared by W, U and b (read-only pieces)
    return LocalJacobian(
        diag=col(one_u * (1 - theta * psi_prev)),
        phi={
            "W_u": cu, "W_r": cr, "W_z": cz,
            "U_u": cu, "U_r": cr, "U_z": col(phi_z * r),
        },
        unit_phi={
            "b_u": cu, "b_r": cr, "b_z": cz,
            "theta": col(-one_u * (prev.e - theta * psi_prev)),
        },
        gain=col(new.e + new.c * psi),
        gain_direct={"theta": -new.c * psi},
    )


class EGRU(Layer):
    """Event-based GRU layer; see the module docstring for its equations.

    Parameters ``W_u W_r W_z`` (n x d), ``U_u U_r U_z`` (n x n), ``b_u b_r b_z`` and
    ``theta`` (n). ``masks`` maps weight names to 0/1 tensors of their shape: pruned
    entries are held at exactly zero and get exactly zero gradient.
    """

    state_size = 1
    diag_structure = ((0, 0),)
    projections = (
        Projection("W_u", "input"), Projection("W_r", "input"), Projection("W_z", "input"),
        Projection("U_u", "recurrent"), Projection("U_r", "recurrent"),
        Projection("U_z", "recurrent"),
    )
    unit_parameters = ("b_u", "b_r", "b_z", "theta")
    Weights = EGRUWeights

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        pseudo_derivative: PseudoDerivative = Triangle(gamma=0.7, width=0.5),
        masks: Mapping[str, torch.Tensor] | None = None,
        theta_init: float = 0.2,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_sizes(type(self).__name__, input_size, hidden_size)
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.pseudo_derivative = pseudo_derivative
        n, d = self.hidden_size, self.input_size
        bound = 1.0 / math.sqrt(n)
        kw = dict(dtype=dtype, device=device)

        def uniform(*shape: int) -> torch.nn.Parameter:
            t = torch.empty(*shape, **kw).uniform_(-bound, bound, generator=generator)
            return torch.nn.Parameter(t)

        for g in "urz":
            setattr(self, f"W_{g}", uniform(n, d))
        for g in "urz":
            setattr(self, f"U_{g}", uniform(n, n))
        for g in "urz":
            setattr(self, f"b_{g}", uniform(n))
        self.theta = torch.nn.Parameter(torch.full((n,), float(theta_init), **kw))
        self._register_masks(masks)

    @staticmethod
    def weight_shapes(input_size: int, hidden_size: int) -> dict[str, tuple[int, int]]:
        """Shapes of the maskable weights, for :func:`evrtrl.models.random_masks`."""
        n, d = hidden_size, input_size
        return {**{f"W_{g}": (n, d) for g in "urz"}, **{f"U_{g}": (n, n) for g in "urz"}}

    def initial_state(self, batch: int) -> EGRUState:
        z = torch.zeros(batch, self.hidden_size, dtype=self.dtype, device=self.device)
        return EGRUState(z, z, z)

    def step(self, weights: EGRUWeights, state: EGRUState, x: torch.Tensor):
        return egru_step(weights, state, x, self.pseudo_derivative)

    def local_jacobian(self, weights, prev, x, new, aux, first):  # noqa: D102
        return egru_jacobian(weights, prev, new, aux, self.pseudo_derivative, first)

    def state_traces(self, weights: EGRUWeights, state: EGRUState) -> dict[str, torch.Tensor]:
        return {"c": state.c}

    def forward(self, x: torch.Tensor, state: EGRUState | None = None) -> tuple[torch.Tensor, EGRUState]:
        """``outputs, state = layer(x, state)``, like :class:`torch.nn.GRU` (no batch_first):
        ``x`` ``(T, B, d)``, outputs ``y_t`` ``(T, B, n)``, the state after the last step.
        Differentiable by autograd through :func:`egru_step`
        (:func:`evrtrl.network.forward_sequence`)."""
        return forward_sequence(self, x, state)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, pseudo_derivative={self.pseudo_derivative}"


#: EGRU in the cell registry: no stored hyper-parameters besides the pseudo-derivative
SPEC = register(CellSpec(
    name="EGRU", cls=EGRU, hyper=(),
    weight_shapes=lambda d, n, config: EGRU.weight_shapes(d, n),
    state_from_components=lambda layer, w, s: egru_state(w, s[0], layer.pseudo_derivative),
))
