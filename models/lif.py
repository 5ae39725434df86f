r"""Current-based leaky integrate-and-fire layer, in two exact discretisations.

ODE between spikes (dimensionless v, i):

.. math::

    \tau_{mem}\,\dot v = v_{leak} - v + i, \qquad \tau_{syn}\,\dot i = -i,

spike :math:`z = H(v - v_{th})` (strict), reset ``"zero"``: :math:`v \leftarrow v_{reset}`,
``"subtract"``: :math:`v \leftarrow v - (v_{th} - v_{reset})`. Input :math:`W x_t` and
recurrent spikes :math:`U z` are jumps of the synaptic current ``i``.

Order of operations within step t (it decides spike times):

``integration="exact"`` — Brian2 ``method='exact'``, default schedule
(groups, thresholds, synapses, resets), spike generator input at step t, no delays:

1. integrate exactly over ``dt``: :math:`v \leftarrow v_{leak} + a (v - v_{leak}) + b\, i`,
   :math:`i \leftarrow \alpha i` with :math:`a = e^{-dt/\tau_{mem}}`,
   :math:`\alpha = e^{-dt/\tau_{syn}}`,
   :math:`b = \frac{\tau_{syn}}{\tau_{syn}-\tau_{mem}}(\alpha - a)` (:math:`b = a\,dt/\tau_{mem}` if equal);
2. threshold: :math:`z_t = H(v - v_{th})`;
3. synapses: :math:`i \leftarrow i + W x_t + U z_t`;
4. reset of the units with :math:`z_t = 1`.

``integration="euler"`` — Norse 1.1.0 ``LIFCell`` / ``LIFRecurrentCell``:

1. jumps: :math:`i \leftarrow i + W x_t + U z_{t-1}`;
2. Euler: :math:`v \leftarrow v + \frac{dt}{\tau_{mem}}((v_{leak} - v) + i)`,
   :math:`i \leftarrow i - \frac{dt}{\tau_{syn}} i`;
3. threshold :math:`z_t = H(v - v_{th})`; 4. reset.

Initial state :math:`v = v_{leak}`, :math:`i = 0`, no spike.

RTRL state. Both schedules are written as one Markov step on the per-unit state
:math:`s = (q, \tilde\imath)`: ``q`` is the membrane *after integration, before threshold
and reset* (so :math:`z_t = H(q_t - v_{th})` is a function of :math:`s_t`), and
:math:`\tilde\imath` the current before the jumps that step 1 of the next step applies:

.. math::

    v &= \mathrm{reset}(q_{t-1}, z_{t-1}), \qquad
    j = \tilde\imath_{t-1} + U z_{t-1} \;[+\, W x_t \text{ for euler}] \\
    q_t &= a v + b j + (1-a) v_{leak}, \qquad
    \tilde\imath_t = \alpha j \;[+\, W x_t \text{ for exact}]

(for euler :math:`a = 1 - dt/\tau_{mem}`, :math:`b = dt/\tau_{mem}`,
:math:`\alpha = 1 - dt/\tau_{syn}`, evaluated in Norse's operation order).
Local Jacobian pieces, with :math:`\psi_{t-1} = \psi(q_{t-1} - v_{th})` (zero at t = 0) and
:math:`\rho = 1 - z_{t-1} - \psi_{t-1}(q_{t-1} - v_{reset})` (zero reset) or
:math:`1 - \psi_{t-1}(v_{th} - v_{reset})` (subtract):

.. math::

    D = \begin{pmatrix} a\rho & b \\ 0 & \alpha \end{pmatrix}, \quad
    \phi^U = (b, \alpha), \quad
    \phi^W = (0, 1)\ \text{(exact)},\ (b, \alpha)\ \text{(euler)}, \quad
    G_t = (\psi(q_t - v_{th}), 0).
"""
from __future__ import annotations

import math
import numbers
from typing import Mapping, NamedTuple, Optional

import torch
import torch.nn.functional as F

from evrtrl.errors import ConfigError
from evrtrl.layer import Layer, LocalJacobian, Projection, check_sizes
from evrtrl.network import forward_sequence
from evrtrl.models.registry import CellSpec, HyperParameter, register
from evrtrl.models.surrogate import PseudoDerivative, Triangle, heaviside

__all__ = ["LIF", "LIFState", "LIFWeights", "LIFParameters", "lif_step", "lif_state", "lif_jacobian",
           "lif_coefficients", "check_lif_hyper", "SPEC"]

RESETS = ("zero", "subtract")
INTEGRATIONS = ("exact", "euler")


class LIFState(NamedTuple):
    """``q``: membrane before threshold/reset; ``i``: current before the next step's jumps."""

    q: torch.Tensor
    i: torch.Tensor
    e: torch.Tensor  # spikes z_t
    y: torch.Tensor  # output (the spikes)


class LIFWeights(NamedTuple):
    W: torch.Tensor
    U: Optional[torch.Tensor] = None


class LIFParameters(NamedTuple):
    """Fixed neuron parameters (seconds for time constants) and derived coefficients."""

    tau_mem: float
    tau_syn: float
    dt: float
    v_th: float
    v_leak: float
    v_reset: float
    reset: str
    integration: str
    pseudo_derivative: PseudoDerivative
    a: float  # dq/dv
    b: float  # dq/dj
    alpha: float  # di/dj


def check_lif_hyper(
    *, tau_mem: float, tau_syn: float, dt: float, v_th: float, v_leak: float, v_reset: float,
    reset: str, integration: str, where: str = "LIF",
) -> None:
    """Raise :class:`ConfigError` (prefixed ``where``) unless the LIF hyper-parameters are valid.

    The one validator of LIF hyper-parameters: the cell, the model file and the
    neuromorphic network records call it.
    """
    for name, v in (("tau_mem", tau_mem), ("tau_syn", tau_syn), ("dt", dt)):
        if not (isinstance(v, numbers.Real) and math.isfinite(v) and v > 0):
            raise ConfigError(f"{where}: {name} must be a positive number of seconds, got {v!r}")
    for name, v in (("v_th", v_th), ("v_leak", v_leak), ("v_reset", v_reset)):
        if not (isinstance(v, numbers.Real) and math.isfinite(v)):
            raise ConfigError(f"{where}: {name} must be a finite number, got {v!r}")
    if reset not in RESETS:
        raise ConfigError(f"{where}: reset must be one of {RESETS}, got {reset!r}")
    if integration not in INTEGRATIONS:
        raise ConfigError(f"{where}: integration must be one of {INTEGRATIONS}, got {integration!r}")
    if integration == "euler" and (dt >= tau_mem or dt >= tau_syn):
        raise ConfigError(
            f"{where}: euler integration needs dt < tau_mem and dt < tau_syn, got dt={dt}, "
            f"tau_mem={tau_mem}, tau_syn={tau_syn}"
        )


def lif_coefficients(tau_mem: float, tau_syn: float, dt: float, integration: str) -> tuple[float, float, float]:
    r"""The per-step coefficients ``(a, b, alpha)`` of the module docstring.

    ``exact``: :math:`a = e^{-dt/\tau_{mem}}`, :math:`\alpha = e^{-dt/\tau_{syn}}`,
    :math:`b = \frac{\tau_{syn}}{\tau_{syn}-\tau_{mem}}(\alpha - a)` (:math:`a\,dt/\tau_{mem}`
    if equal); ``euler``: :math:`a = 1 - dt/\tau_{mem}`, :math:`b = dt/\tau_{mem}`,
    :math:`\alpha = 1 - dt/\tau_{syn}`. ``a`` and ``alpha`` are the membrane and synaptic
    decay factors of one step. The one place these are computed.
    """
    if integration == "exact":
        a, alpha = math.exp(-dt / tau_mem), math.exp(-dt / tau_syn)
        if math.isclose(tau_mem, tau_syn, rel_tol=1e-12):
            b = dt / tau_mem * a
        else:
            b = tau_syn / (tau_syn - tau_mem) * (alpha - a)
        return a, b, alpha
    return 1 - dt / tau_mem, dt / tau_mem, 1 - dt / tau_syn


def lif_parameters(
    *, tau_mem: float, tau_syn: float, dt: float, v_th: float, v_leak: float, v_reset: float,
    reset: str, integration: str, pseudo_derivative: PseudoDerivative,
) -> LIFParameters:
    """Validate and build :class:`LIFParameters` (raises :class:`ConfigError`)."""
    check_lif_hyper(tau_mem=tau_mem, tau_syn=tau_syn, dt=dt, v_th=v_th, v_leak=v_leak,
                    v_reset=v_reset, reset=reset, integration=integration)
    a, b, alpha = lif_coefficients(tau_mem, tau_syn, dt, integration)
    return LIFParameters(
        float(tau_mem), float(tau_syn), float(dt), float(v_th), float(v_leak), float(v_reset),
        reset, integration, pseudo_derivative, a, b, alpha,
    )


def _reset(p: LIFParameters, q: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    if p.reset == "zero":
        return (1 - z) * q + z * p.v_reset  # exactly v_reset where z = 1 (Norse's form)
    return q - z * (p.v_th - p.v_reset)


def lif_step(
    w: LIFWeights, state: LIFState, x: torch.Tensor, p: LIFParameters
) -> tuple[LIFState, None]:
    """One LIF step (module docstring); pure, differentiable."""
    v = _reset(p, state.q, state.e)
    j = state.i
    if p.integration == "euler":
        # Norse's operation order (i + W x) + U z, so that states agree bit for bit
        j = j + F.linear(x, w.W)
    if w.U is not None:
        j = j + F.linear(state.e, w.U)
    if p.integration == "euler":
        q = v + p.dt * (1.0 / p.tau_mem) * ((p.v_leak - v) + j)
        i = j + (-p.dt * (1.0 / p.tau_syn)) * j
    else:
        q = p.v_leak + p.a * (v - p.v_leak) + p.b * j
        i = p.alpha * j + F.linear(x, w.W)
    return lif_state(p, q, i), None


def lif_state(p: LIFParameters, q: torch.Tensor, i: torch.Tensor) -> LIFState:
    """The state record from ``(q, i)``: spikes :math:`z = H(q - v_{th})` are the output."""
    z = heaviside(q - p.v_th, p.pseudo_derivative)
    return LIFState(q, i, z, z)


def lif_jacobian(
    w: LIFWeights, prev: LIFState, new: LIFState, p: LIFParameters, first: bool
) -> LocalJacobian:
    """Analytic local Jacobian pieces of :func:`lif_step` (module docstring)."""
    pd = p.pseudo_derivative
    psi_prev = torch.zeros_like(prev.q) if first else pd(prev.q - p.v_th)
    if p.reset == "zero":
        rho = 1 - prev.e - psi_prev * (prev.q - p.v_reset)
    else:
        rho = 1 - psi_prev * (p.v_th - p.v_reset)
    ones = torch.ones_like(new.q)
    zeros = torch.zeros_like(new.q)
    phi_jump = torch.stack((p.b * ones, p.alpha * ones), dim=-1)
    phi_w = phi_jump if p.integration == "euler" else torch.stack((zeros, ones), dim=-1)
    phi = {"W": phi_w}
    if w.U is not None:
        phi["U"] = phi_jump
    return LocalJacobian(
        diag=torch.stack((p.a * rho, p.b * ones, p.alpha * ones), dim=-1),
        phi=phi,
        unit_phi={},
        gain=torch.stack((pd(new.q - p.v_th), zeros), dim=-1),
        gain_direct={},
    )


class LIF(Layer):
    """Current-based LIF layer (module docstring), parameters ``W`` (n x d), ``U`` (n x n).

    ``W x_t`` is added to the synaptic current. Time constants and ``dt`` in seconds.
    """

    state_size = 2
    diag_structure = ((0, 0), (0, 1), (1, 1))
    unit_parameters = ()
    Weights = LIFWeights

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        tau_mem: float,
        tau_syn: float,
        dt: float,
        v_th: float = 1.0,
        v_leak: float = 0.0,
        v_reset: float = 0.0,
        reset: str = "zero",
        integration: str = "exact",
        recurrent: bool = True,
        pseudo_derivative: PseudoDerivative = Triangle(gamma=0.3, width=0.5),
        masks: Mapping[str, torch.Tensor] | None = None,
        weight_scale: float = 1.0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_sizes(type(self).__name__, input_size, hidden_size)
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.p = lif_parameters(
            tau_mem=tau_mem, tau_syn=tau_syn, dt=dt, v_th=v_th, v_leak=v_leak,
            v_reset=v_reset, reset=reset, integration=integration,
            pseudo_derivative=pseudo_derivative,
        )
        self.recurrent = bool(recurrent)
        self.projections = (Projection("W", "input"),) + (
            (Projection("U", "recurrent"),) if self.recurrent else ()
        )
        n, d = self.hidden_size, self.input_size
        kw = dict(dtype=dtype, device=device)
        self.W = torch.nn.Parameter(
            torch.randn(n, d, generator=generator, **kw) * (weight_scale / math.sqrt(d))
        )
        if self.recurrent:
            self.U = torch.nn.Parameter(
                torch.randn(n, n, generator=generator, **kw) * (weight_scale / math.sqrt(n))
            )
        self._register_masks(masks)

    # neuron parameters as read-only attributes (the record is the source of truth)
    tau_mem = property(lambda self: self.p.tau_mem)
    tau_syn = property(lambda self: self.p.tau_syn)
    dt = property(lambda self: self.p.dt)
    v_th = property(lambda self: self.p.v_th)
    v_leak = property(lambda self: self.p.v_leak)
    v_reset = property(lambda self: self.p.v_reset)
    reset = property(lambda self: self.p.reset)
    integration = property(lambda self: self.p.integration)
    pseudo_derivative = property(lambda self: self.p.pseudo_derivative)

    @staticmethod
    def weight_shapes(
        input_size: int, hidden_size: int, recurrent: bool = True
    ) -> dict[str, tuple[int, int]]:
        """Shapes of the maskable weights, for :func:`evrtrl.models.random_masks`."""
        shapes = {"W": (hidden_size, input_size)}
        if recurrent:
            shapes["U"] = (hidden_size, hidden_size)
        return shapes

    def initial_state(self, batch: int) -> LIFState:
        kw = dict(dtype=self.dtype, device=self.device)
        z = torch.zeros(batch, self.hidden_size, **kw)
        return LIFState(torch.full((batch, self.hidden_size), self.p.v_leak, **kw), z, z, z)

    def step(self, weights: LIFWeights, state: LIFState, x: torch.Tensor):
        return lif_step(weights, state, x, self.p)

    def local_jacobian(self, weights, prev, x, new, aux, first):  # noqa: D102
        return lif_jacobian(weights, prev, new, self.p, first)

    def state_traces(self, weights: LIFWeights, state: LIFState) -> dict[str, torch.Tensor]:
        """End-of-step ``v`` (after reset) and ``i`` (after all jumps of the step)."""
        i = state.i
        if self.p.integration == "exact" and weights.U is not None:
            i = i + F.linear(state.e, weights.U)
        return {"v": _reset(self.p, state.q, state.e), "i": i}

    def forward(self, x: torch.Tensor, state: LIFState | None = None) -> tuple[torch.Tensor, LIFState]:
        """``outputs, state = layer(x, state)``, like :class:`torch.nn.GRU` (no batch_first):
        ``x`` ``(T, B, d)``, outputs ``y_t`` ``(T, B, n)``, the state after the last step.
        Differentiable by autograd through :func:`lif_step`
        (:func:`evrtrl.network.forward_sequence`)."""
        return forward_sequence(self, x, state)

    def extra_repr(self) -> str:
        p = self.p
        return (
            f"{self.input_size}, {self.hidden_size}, tau_mem={p.tau_mem}, tau_syn={p.tau_syn}, "
            f"dt={p.dt}, v_th={p.v_th}, reset={p.reset!r}, integration={p.integration!r}, "
            f"recurrent={self.recurrent}"
        )


#: LIF in the cell registry: the neuron parameters (seconds) and the recurrence are stored
SPEC = register(CellSpec(
    name="LIF", cls=LIF,
    hyper=(
        *(HyperParameter(k, float) for k in ("tau_mem", "tau_syn", "dt", "v_th", "v_leak", "v_reset")),
        HyperParameter("reset", str, RESETS), HyperParameter("integration", str, INTEGRATIONS),
        HyperParameter("recurrent", bool),
    ),
    weight_shapes=lambda d, n, config: LIF.weight_shapes(d, n, config.get("recurrent", True)),
    state_from_components=lambda layer, w, s: lif_state(layer.p, s[0], s[1]),
))
