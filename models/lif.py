r"""Leaky integrate-and-fire layers: current-based (CUBA) or current-free, two exact discretisations.

ODE between spikes (dimensionless ``v``, ``i``), every neuron parameter per neuron (shape (n,),
a scalar is broadcast):

.. math::

    \text{current-based (synapse=True):}\quad
    \tau_{mem}\,\dot v = v_{leak} - v + i, \qquad \tau_{syn}\,\dot i = -i, \\
    \text{current-free (synapse=False, the nir.LIF node):}\quad
    \tau_{mem}\,\dot v = v_{leak} - v + I_t,

spike :math:`z = H(v - v_{th})` (strict), reset ``"zero"``: :math:`v \leftarrow v_{reset}`,
``"subtract"``: :math:`v \leftarrow v - (v_{th} - v_{reset})`. Current-based: the input
:math:`W x_t`, the recurrent spikes :math:`U z` and the bias :math:`\beta` are jumps of the
synaptic current ``i`` (the bias once per step, as an always-on input channel would be).
Current-free: the input current :math:`I_t = W x_t + U z_{t-1} + \beta` is held over step t
and enters ``v`` in the same step (no synaptic current; state size m = 1).

Order of operations within step t (it decides spike times):

``integration="exact"`` — Brian2 ``method='exact'``. Current-based, default schedule
(groups, thresholds, synapses, resets), spike generator input at step t, no delays:

1. integrate exactly over ``dt``: :math:`v \leftarrow v_{leak} + a (v - v_{leak}) + b\, i`,
   :math:`i \leftarrow \alpha i` with :math:`a = e^{-u}`, :math:`\alpha = e^{-w}`,
   :math:`u = dt/\tau_{mem}`, :math:`w = dt/\tau_{syn}` and
   :math:`b = \frac{\tau_{syn}}{\tau_{syn}-\tau_{mem}}(\alpha - a) = a\,u\,\varphi_1(u - w)`,
   :math:`\varphi_1(x) = (e^x - 1)/x` (``expm1``; a series for :math:`|x| < 0.1`), which is
   accurate for any :math:`\tau_{syn} \approx \tau_{mem}` (:math:`b = a u` when equal);
2. threshold: :math:`z_t = H(v - v_{th})`;
3. synapses: :math:`i \leftarrow i + W x_t + U z_t + \beta`;
4. reset of the units with :math:`z_t = 1`.

Current-free: 1. :math:`I_t` (input and recurrent spikes of step t-1, delivered at the start
of step t); 2. exact integration with :math:`I_t` held over the step,
:math:`v \leftarrow v_{leak} + a (v - v_{leak}) + b I_t`, :math:`b = 1 - a = -\mathrm{expm1}(-u)`;
3. threshold; 4. reset.

``integration="euler"`` — Norse 1.1.0. Current-based, ``LIFCell`` / ``LIFRecurrentCell``:

1. jumps: :math:`i \leftarrow i + W x_t + \beta + U z_{t-1}`;
2. Euler: :math:`v \leftarrow v + c_m((v_{leak} - v) + i)`,
   :math:`i \leftarrow i - c_s i` (:math:`c_m = dt\cdot(1/\tau_{mem})`,
   :math:`c_s = dt\cdot(1/\tau_{syn})`);
3. threshold :math:`z_t = H(v - v_{th})`; 4. reset.

Current-free, ``LIFBoxCell``: :math:`v \leftarrow v + c_m((I_t + v_{leak}) - v)`, threshold, reset.

Initial state :math:`v = v_{leak}`, :math:`i = 0`, no spike.

RTRL state. Every schedule is one Markov step on the per-unit state :math:`s = (q, \tilde\imath)`
(current-free: :math:`s = q`): ``q`` is the membrane *after integration, before threshold
and reset* (so :math:`z_t = H(q_t - v_{th})` is a function of :math:`s_t`), and
:math:`\tilde\imath` the current before the jumps that step 1 of the next step applies:

.. math::

    v &= \mathrm{reset}(q_{t-1}, z_{t-1}), \qquad
    j = \tilde\imath_{t-1} + U z_{t-1} \;[+\, W x_t + \beta \text{ for euler}] \\
    q_t &= a v + b j + (1-a) v_{leak}, \qquad
    \tilde\imath_t = \alpha j \;[+\, W x_t + \beta \text{ for exact}]

(for euler :math:`a = 1 - c_m`, :math:`b = c_m`, :math:`\alpha = 1 - c_s`, evaluated in
Norse's operation order; current-free: :math:`q_t = a v + b I_t + (1-a) v_{leak}`).

Local Jacobian pieces, with :math:`\psi_{t-1} = \psi(q_{t-1} - v_{th})` (zero at t = 0) and
:math:`\rho = \partial v/\partial q_{t-1} = 1 - z_{t-1} - \psi_{t-1}(q_{t-1} - v_{reset})`
(zero reset) or :math:`1 - \psi_{t-1}(v_{th} - v_{reset})` (subtract):

.. math::

    D = \begin{pmatrix} a\rho & b \\ 0 & \alpha \end{pmatrix}, \quad
    \phi^U = (b, \alpha), \quad
    \phi^W = \phi^\beta = (0, 1)\ \text{(exact)},\ (b, \alpha)\ \text{(euler)}, \quad
    G_t = (\psi(q_t - v_{th}), 0);

current-free: :math:`D = a\rho`, :math:`\phi^W = \phi^U = \phi^\beta = b`, :math:`G_t = \psi(q_t - v_{th})`.

Per-neuron parameters (``trainable=(...)``; per-unit parameters of the layer contract, exact
RTRL as EGRU's :math:`\theta`). Their direct derivatives (``unit_phi``; the ``i`` component is
0 unless stated; ``j`` and ``I`` as above, :math:`[\cdot]_0` only at t = 0, where the initial
state :math:`v = v_{leak}` itself depends on :math:`v_{leak}`):

.. math::

    \partial q_t/\partial v_{th} &= a\,\partial v/\partial v_{th}, \quad
        \partial v/\partial v_{th} = \psi_{t-1}(q_{t-1} - v_{reset})\ \text{(zero)},\
        -z_{t-1} + \psi_{t-1}(v_{th} - v_{reset})\ \text{(subtract)}; \qquad
        \partial y_t/\partial v_{th}|_{\rm direct} = -\psi(q_t - v_{th}) \\
    \partial q_t/\partial v_{reset} &= a\, z_{t-1}, \qquad
    \partial q_t/\partial v_{leak} = (1 - a) + [a]_0, \qquad
    \partial s_t/\partial \beta = \phi^W \\
    \partial q_t/\partial \tau_{mem} &= \tfrac{a u}{\tau_{mem}}(v - v_{leak})
        + \tfrac{a u}{\tau_{mem}}\big(\varphi_1 (u - 1) - u \varphi_1'\big) j\ \text{(exact)},\quad
        -\tfrac{c_m}{\tau_{mem}}\big((v_{leak} - v) + j\big)\ \text{(euler)} \\
    \partial q_t/\partial \tau_{syn} &= a u \varphi_1' \tfrac{w}{\tau_{syn}} j,\quad
        \partial \tilde\imath_t/\partial \tau_{syn} = \alpha \tfrac{w}{\tau_{syn}} j\ \text{(exact)};\qquad
        \partial \tilde\imath_t/\partial \tau_{syn} = \tfrac{c_s}{\tau_{syn}} j\ \text{(euler)}

(:math:`\varphi_1, \varphi_1'` at :math:`u - w`; current-free: :math:`\partial q_t/\partial
\tau_{mem} = \frac{a u}{\tau_{mem}}(v - v_{leak} - I_t)` (exact),
:math:`-\frac{c_m}{\tau_{mem}}((I_t + v_{leak}) - v)` (euler)).

Frozen neuron parameters are float64 buffers whatever the layer's dtype (the coefficients
``a, b, alpha`` are computed in float64 and rounded once to the layer's dtype); trainable ones
are parameters of the layer's dtype. Keep trained time constants positive (and above ``dt``
for euler): the layer checks them when built or set, not at every step.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F

from evrtrl.errors import ConfigError
from evrtrl.layer import Layer, LocalJacobian, Projection, check_sizes
from evrtrl.network import forward_sequence
from evrtrl.models.registry import CellSpec, HyperParameter, register
from evrtrl.models.surrogate import PseudoDerivative, Triangle, heaviside

__all__ = ["LIF", "LIFState", "LIFWeights", "LIFParameters", "LIFAux", "lif_step", "lif_state",
           "lif_jacobian", "lif_coefficients", "lif_terms", "lif_tau_factors", "TauFactors",
           "NEURON_PARAMETERS", "phi1", "SPEC"]

RESETS = ("zero", "subtract")
INTEGRATIONS = ("exact", "euler")
#: per-neuron parameters, in the order they are registered (and get influence columns)
NEURON_PARAMETERS = ("tau_mem", "tau_syn", "v_th", "v_leak", "v_reset", "bias")
_TAUS = ("tau_mem", "tau_syn")


class LIFState(NamedTuple):
    """``q``: membrane before threshold/reset; ``i``: current before the next step's jumps
    (None for a current-free layer); ``e``/``y``: the spikes."""

    q: torch.Tensor
    i: Optional[torch.Tensor]
    e: torch.Tensor  # spikes z_t
    y: torch.Tensor  # output (the spikes)


class LIFWeights(NamedTuple):
    """Every parameter of a LIF layer: the (masked) weights and the per-neuron values (n,)."""

    W: torch.Tensor
    U: Optional[torch.Tensor] = None
    tau_mem: Optional[torch.Tensor] = None
    tau_syn: Optional[torch.Tensor] = None
    v_th: Optional[torch.Tensor] = None
    v_leak: Optional[torch.Tensor] = None
    v_reset: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None


class LIFParameters(NamedTuple):
    """Fixed structure of a LIF layer (the per-neuron values live in :class:`LIFWeights`)."""

    dt: float
    reset: str
    integration: str
    synapse: bool
    pseudo_derivative: PseudoDerivative


class LIFAux(NamedTuple):
    """Intermediates of a step, reused by :func:`lif_jacobian`: ``v`` after reset, the
    drive ``j`` (current-based: the current after the jumps of step 1; current-free: I_t)
    and the per-neuron terms the step used."""

    v: torch.Tensor
    j: torch.Tensor
    terms: "LIFTerms"


class Coefficients(NamedTuple):
    """Per-neuron step coefficients (float64, shape (n,)), see the module docstring."""

    a: torch.Tensor
    b: torch.Tensor
    alpha: Optional[torch.Tensor]
    u: torch.Tensor  # dt / tau_mem (exact) or c_m (euler)
    w: Optional[torch.Tensor]  # dt / tau_syn (exact) or c_s (euler)


# ------------------------------------------------------------------------- coefficients

_SERIES_X = 0.1
#: 1/(k+1)! for k = 0..14: phi1(x) = sum_k x^k / (k+1)!
_PHI1 = [1.0 / math.factorial(k + 1) for k in range(15)]


def phi1(x: torch.Tensor) -> torch.Tensor:
    r""":math:`\varphi_1(x) = (e^x - 1)/x` (1 at 0), accurate and differentiable for every x.

    For :math:`|x| < 0.1` a 15-term series (truncation below 1e-27), else ``expm1(x) / x``;
    autograd of the series branch has no cancellation either.
    """
    small = x.abs() < _SERIES_X
    xs = torch.where(small, torch.zeros_like(x), x)
    ser = torch.full_like(x, _PHI1[-1])
    xz = torch.where(small, x, torch.zeros_like(x))
    for c in reversed(_PHI1[:-1]):
        ser = ser * xz + c
    big = torch.expm1(xs) / torch.where(small, torch.ones_like(x), xs)
    return torch.where(small, ser, big)


def dphi1(x: torch.Tensor) -> torch.Tensor:
    r""":math:`\varphi_1'(x) = (x e^x - (e^x - 1))/x^2` (1/2 at 0): series for :math:`|x| < 0.1`."""
    small = x.abs() < _SERIES_X
    xz = torch.where(small, x, torch.zeros_like(x))
    # phi1'(x) = sum_k (k+1) x^k / (k+2)!
    coef = [(k + 1) / math.factorial(k + 2) for k in range(15)]
    ser = torch.full_like(x, coef[-1])
    for c in reversed(coef[:-1]):
        ser = ser * xz + c
    xs = torch.where(small, torch.ones_like(x), x)
    big = (xs * torch.exp(xs) - torch.expm1(xs)) / (xs * xs)
    return torch.where(small, ser, big)


def lif_coefficients(w: LIFWeights, p: LIFParameters) -> Coefficients:
    """Step coefficients from the (possibly trainable) time constants, in float64."""
    tm = w.tau_mem.to(torch.float64)
    ts = w.tau_syn.to(torch.float64) if p.synapse else None
    if p.integration == "euler":
        cm = p.dt * (1.0 / tm)  # Norse's dt * tau_mem_inv
        cs = p.dt * (1.0 / ts) if ts is not None else None
        return Coefficients(1 - cm, cm, None if cs is None else 1 - cs, cm, cs)
    u = p.dt / tm
    a = torch.exp(-u)
    if ts is None:
        return Coefficients(a, -torch.expm1(-u), None, u, None)
    ws = p.dt / ts
    return Coefficients(a, a * u * phi1(u - ws), torch.exp(-ws), u, ws)


class LIFTerms(NamedTuple):
    """What one step needs of the neuron parameters: the values (n,) and the coefficients
    ``a, b, alpha`` in the state's dtype, and the float64 :class:`Coefficients`."""

    v_th: torch.Tensor
    v_leak: torch.Tensor
    v_reset: torch.Tensor
    bias: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    alpha: Optional[torch.Tensor]
    c: Coefficients
    minus_cs: Optional[torch.Tensor] = None  # euler: -dt/tau_syn as Norse applies it


def lif_terms(w: LIFWeights, p: LIFParameters, dtype: torch.dtype, keep: Optional[LIFTerms] = None,
              fresh: Iterable[str] = NEURON_PARAMETERS) -> LIFTerms:
    """The :class:`LIFTerms` of ``w`` in ``dtype``. With ``keep`` (terms computed earlier from the
    same frozen values), only what depends on the names in ``fresh`` is recomputed."""
    fresh = set(fresh)
    if keep is not None and not fresh:
        return keep
    vals = {k: (getattr(keep, k) if keep is not None and k not in fresh else getattr(w, k).to(dtype))
            for k in ("v_th", "v_leak", "v_reset", "bias")}
    if keep is not None and not fresh & set(_TAUS):
        a, b, alpha, c, mcs = keep.a, keep.b, keep.alpha, keep.c, keep.minus_cs
    else:
        c = lif_coefficients(w, p)
        a, b, alpha = c.a.to(dtype), c.b.to(dtype), None if c.alpha is None else c.alpha.to(dtype)
        mcs = (-c.w).to(dtype) if p.integration == "euler" and c.w is not None else None
    return LIFTerms(a=a, b=b, alpha=alpha, c=c, minus_cs=mcs, **vals)


class TauFactors(NamedTuple):
    r"""Per-neuron factors (shape (n,), the state's dtype) of the direct time-constant
    derivatives of the module docstring; None where the configuration has no such term.

    ``mem_v``: of :math:`\partial q_t/\partial\tau_{mem}` — exact :math:`a u/\tau_{mem}` (times
    :math:`v - v_{leak}`; current-free :math:`v - v_{leak} - I_t`), euler :math:`-c_m/\tau_{mem}`
    (times :math:`(v_{leak} - v) + j`; current-free :math:`(I_t + v_{leak}) - v`);
    ``mem_j``: exact current-based, the factor of ``j`` in it,
    :math:`\frac{a u}{\tau_{mem}}(\varphi_1 (u - 1) - u \varphi_1')`;
    ``syn_q``: of :math:`\partial q_t/\partial\tau_{syn}` (exact, times ``j``),
    :math:`a u \varphi_1' w/\tau_{syn}`; ``syn_i``: of
    :math:`\partial\tilde\imath_t/\partial\tau_{syn}` (times ``j``), exact
    :math:`\alpha w/\tau_{syn}`, euler :math:`c_s/\tau_{syn}`.
    """

    mem_v: Optional[torch.Tensor] = None
    mem_j: Optional[torch.Tensor] = None
    syn_q: Optional[torch.Tensor] = None
    syn_i: Optional[torch.Tensor] = None


def lif_tau_factors(w: LIFWeights, p: LIFParameters, c: Coefficients, dtype: torch.dtype,
                    trainable: Iterable[str] = _TAUS) -> TauFactors:
    """The :class:`TauFactors` of the time constants in ``trainable`` (float64, rounded once to
    ``dtype``); shared by :func:`lif_jacobian` and the compiled step."""
    trainable = set(trainable)
    out = {}
    if "tau_mem" in trainable:
        tm = w.tau_mem.to(torch.float64)
        if p.integration == "euler":
            out["mem_v"] = -c.u / tm
        else:
            out["mem_v"] = c.a * c.u / tm
            if p.synapse:
                x = c.u - c.w
                out["mem_j"] = c.a * c.u / tm * (phi1(x) * (c.u - 1) - c.u * dphi1(x))
    if "tau_syn" in trainable and p.synapse:
        ts = w.tau_syn.to(torch.float64)
        if p.integration == "euler":
            out["syn_i"] = c.w / ts
        else:
            out["syn_q"] = c.a * c.u * dphi1(c.u - c.w) * c.w / ts
            out["syn_i"] = c.alpha * c.w / ts
    return TauFactors(**{k: v.to(dtype) for k, v in out.items()})


# ------------------------------------------------------------------------------ the step

def _reset(p: LIFParameters, q: torch.Tensor, z: torch.Tensor, v_th, v_reset) -> torch.Tensor:
    if p.reset == "zero":
        return (1 - z) * q + z * v_reset  # exactly v_reset where z = 1 (Norse's form)
    return q - z * (v_th - v_reset)


def lif_step(
    w: LIFWeights, state: LIFState, x: torch.Tensor, p: LIFParameters, terms: Optional[LIFTerms] = None
) -> tuple[LIFState, LIFAux]:
    """One LIF step (module docstring); pure, differentiable. ``terms``: the
    :func:`lif_terms` of ``w`` when the caller has them (computed here otherwise)."""
    t = terms if terms is not None else lif_terms(w, p, state.q.dtype)
    nv = {"v_th": t.v_th, "v_leak": t.v_leak, "v_reset": t.v_reset, "bias": t.bias}
    v = _reset(p, state.q, state.e, nv["v_th"], nv["v_reset"])
    if not p.synapse:
        I = F.linear(x, w.W)
        if w.U is not None:
            I = I + F.linear(state.e, w.U)
        I = I + nv["bias"]
        if p.integration == "euler":  # Norse's LIFBox: dt * tau_mem_inv * (input + v_leak - v)
            q = v + t.b * ((I + nv["v_leak"]) - v)
        else:
            q = nv["v_leak"] + t.a * (v - nv["v_leak"]) + t.b * I
        return lif_state(p, t, q, None), LIFAux(v, I, t)
    j = state.i
    if p.integration == "euler":
        # Norse's operation order (i + (W x + bias)) + U z, so that states agree bit for bit
        j = j + (F.linear(x, w.W) + nv["bias"])
    if w.U is not None:
        j = j + F.linear(state.e, w.U)
    if p.integration == "euler":
        q = v + t.b * ((nv["v_leak"] - v) + j)  # b = c_m
        i = j + t.minus_cs * j
    else:
        q = nv["v_leak"] + t.a * (v - nv["v_leak"]) + t.b * j
        i = t.alpha * j + F.linear(x, w.W) + nv["bias"]
    return lif_state(p, t, q, i), LIFAux(v, j, t)


def lif_state(p: LIFParameters, terms: LIFTerms, q: torch.Tensor, i: Optional[torch.Tensor]) -> LIFState:
    """The state record from its RTRL components: spikes :math:`z = H(q - v_{th})` are the output."""
    z = heaviside(q - terms.v_th, p.pseudo_derivative)
    return LIFState(q, i, z, z)


def lif_jacobian(
    w: LIFWeights, prev: LIFState, new: LIFState, aux: LIFAux, p: LIFParameters, first: bool,
    trainable: Iterable[str] = (),
) -> LocalJacobian:
    """Analytic local Jacobian pieces of :func:`lif_step` (module docstring).

    ``trainable``: the per-neuron parameters that get ``unit_phi`` / ``gain_direct`` entries.
    """
    dt_ = new.q.dtype
    pd = p.pseudo_derivative
    v, j, terms = aux
    c = terms.c
    a, b = terms.a, terms.b
    v_th, v_reset, v_leak = terms.v_th, terms.v_reset, terms.v_leak
    psi_prev = torch.zeros_like(prev.q) if first else pd(prev.q - v_th)
    if p.reset == "zero":
        rho = 1 - prev.e - psi_prev * (prev.q - v_reset)
        dv_dth = psi_prev * (prev.q - v_reset)
    else:
        rho = 1 - psi_prev * (v_th - v_reset)
        dv_dth = -prev.e + psi_prev * (v_th - v_reset)
    ones = torch.ones_like(new.q)
    zeros = torch.zeros_like(new.q)
    psi = pd(new.q - v_th)
    trainable = tuple(trainable)
    if not p.synapse:
        col = lambda t: t.unsqueeze(-1)  # noqa: E731
        phi_in = col(b * ones)
        phi = {"W": phi_in}
        if w.U is not None:
            phi["U"] = phi_in
        d_q = {  # direct dq_t / dp
            "v_th": a * dv_dth,
            "v_reset": a * prev.e,
            "v_leak": (1 - a) + (a if first else 0.0),
            "bias": b * ones,
        }
        if "tau_mem" in trainable:
            f = lif_tau_factors(w, p, c, dt_, ("tau_mem",))
            if p.integration == "euler":
                d_q["tau_mem"] = f.mem_v * ((j + v_leak) - v)
            else:
                d_q["tau_mem"] = f.mem_v * (v - v_leak - j)
        unit_phi = {k: col(d_q[k] * ones) for k in trainable}
        return LocalJacobian(
            diag=col(a * rho), phi=phi, unit_phi=unit_phi, gain=col(psi),
            gain_direct={"v_th": -psi} if "v_th" in trainable else {},
        )
    alpha = terms.alpha
    phi_jump = torch.stack((b * ones, alpha * ones), dim=-1)
    phi_w = phi_jump if p.integration == "euler" else torch.stack((zeros, ones), dim=-1)
    phi = {"W": phi_w}
    if w.U is not None:
        phi["U"] = phi_jump
    pair = lambda dq, di: torch.stack((dq * ones, di * ones), dim=-1)  # noqa: E731
    unit_phi = {}
    f = lif_tau_factors(w, p, c, dt_, trainable)
    for k in trainable:
        if k == "v_th":
            unit_phi[k] = pair(a * dv_dth, zeros)
        elif k == "v_reset":
            unit_phi[k] = pair(a * prev.e, zeros)
        elif k == "v_leak":
            unit_phi[k] = pair((1 - a) + (a if first else 0.0), zeros)
        elif k == "bias":
            unit_phi[k] = phi_w
        elif k == "tau_mem":
            if p.integration == "euler":
                unit_phi[k] = pair(f.mem_v * ((v_leak - v) + j), zeros)
            else:
                unit_phi[k] = pair(f.mem_v * (v - v_leak) + f.mem_j * j, zeros)
        elif k == "tau_syn":
            if p.integration == "euler":
                unit_phi[k] = pair(zeros, f.syn_i * j)
            else:
                unit_phi[k] = pair(f.syn_q * j, f.syn_i * j)
    return LocalJacobian(
        diag=torch.stack((a * rho, b * ones, alpha * ones), dim=-1),
        phi=phi,
        unit_phi=unit_phi,
        gain=torch.stack((psi, zeros), dim=-1),
        gain_direct={"v_th": -psi} if "v_th" in trainable else {},
    )


# ------------------------------------------------------------------------------ the layer

class _TermsCache(NamedTuple):
    record: LIFWeights
    dtype: torch.dtype
    bufs: tuple
    versions: tuple
    terms: LIFTerms


def _values(name: str, value: Any, n: int) -> torch.Tensor:
    """A per-neuron value as a float64 CPU tensor (n,); scalars broadcast."""
    try:
        t = torch.as_tensor(np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value,
                                       dtype=np.float64))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"LIF: {name} must be a number or a sequence of {n} numbers, got {value!r}") from e
    if t.dim() == 0 or tuple(t.shape) == (1,):
        t = t.reshape(()).expand(n).clone()
    if tuple(t.shape) != (n,):
        raise ConfigError(f"LIF: {name} must be a scalar or have shape ({n},) (one value per neuron), "
                          f"got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ConfigError(f"LIF: {name} must be finite, got {t[~torch.isfinite(t)][0].item()!r} "
                          f"at neuron {int((~torch.isfinite(t)).nonzero()[0])}")
    if name in _TAUS and not bool((t > 0).all()):
        k = int((t <= 0).nonzero()[0])
        raise ConfigError(f"LIF: {name} must be a positive number of seconds, got {t[k].item()!r} at neuron {k}")
    return t


def _check_structure(dt: float, reset: str, integration: str) -> None:
    if not (isinstance(dt, (int, float)) and not isinstance(dt, bool) and math.isfinite(dt) and dt > 0):
        raise ConfigError(f"LIF: dt must be a positive number of seconds, got {dt!r}")
    if reset not in RESETS:
        raise ConfigError(f"LIF: reset must be one of {RESETS}, got {reset!r}")
    if integration not in INTEGRATIONS:
        raise ConfigError(f"LIF: integration must be one of {INTEGRATIONS}, got {integration!r}")


def _check_euler(p: LIFParameters, values: Mapping[str, torch.Tensor]) -> None:
    if p.integration != "euler":
        return
    for name in _TAUS:
        t = values.get(name)
        if t is not None and not bool((p.dt < t).all()):
            k = int((t <= p.dt).nonzero()[0])
            raise ConfigError(
                f"LIF: euler integration needs dt < tau_mem and dt < tau_syn, got dt={p.dt}, "
                f"{name}={t[k].item()} at neuron {k}")


class LIF(Layer):
    """LIF layer (module docstring): weights ``W`` (n x d), ``U`` (n x n), per-neuron values.

    ``tau_mem``, ``tau_syn`` (seconds), ``v_th``, ``v_leak``, ``v_reset`` and ``bias`` are each a
    number or a sequence / array / tensor of ``hidden_size`` values (one per neuron).
    ``trainable`` names those that are learned (per-unit parameters with exact RTRL); the
    others are frozen float64 buffers. ``synapse=False`` gives the current-free LIF (no
    ``tau_syn``; state size 1). ``W x_t`` is added to the synaptic current (current-free: to
    the membrane's input current).

    >>> import torch
    >>> m = LIF(3, 4, tau_mem=[0.02, 0.02, 0.03, 0.01], tau_syn=0.005, dt=1e-3,
    ...         v_th=torch.linspace(0.8, 1.1, 4), trainable=("v_th", "bias"))
    >>> sorted(n for n, _ in m.named_parameters())
    ['U', 'W', 'bias', 'v_th']
    """

    #: the current-based layer's; a current-free one (``synapse=False``) sets 1 and ((0, 0),)
    state_size = 2
    diag_structure = ((0, 0), (0, 1), (1, 1))
    unit_parameters = ()
    Weights = LIFWeights

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        tau_mem: Any,
        tau_syn: Any = None,
        dt: float,
        v_th: Any = 1.0,
        v_leak: Any = 0.0,
        v_reset: Any = 0.0,
        bias: Any = 0.0,
        synapse: bool = True,
        trainable: Iterable[str] = (),
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
        _check_structure(dt, reset, integration)
        self.p = LIFParameters(float(dt), reset, integration, bool(synapse), pseudo_derivative)
        if isinstance(trainable, str):
            trainable = (trainable,)
        trainable = set(trainable)
        names = self.neuron_parameter_names
        unknown = sorted(trainable - set(names))
        if unknown:
            raise ConfigError(f"LIF: trainable names {unknown} are not neuron parameters of this layer; "
                              f"expected some of {list(names)}")
        if synapse and tau_syn is None:
            raise ConfigError("LIF: tau_syn (seconds) is required for a current-based layer; "
                              "pass synapse=False for the current-free LIF")
        if not synapse and tau_syn is not None:
            raise ConfigError("LIF: a current-free layer (synapse=False) has no tau_syn; got "
                              f"tau_syn={tau_syn!r}")
        self.state_size = 2 if synapse else 1
        if not synapse:
            self.diag_structure = ((0, 0),)
            self.tau_syn = None
        self.unit_parameters = tuple(k for k in names if k in trainable)
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
        given = dict(tau_mem=tau_mem, tau_syn=tau_syn, v_th=v_th, v_leak=v_leak, v_reset=v_reset, bias=bias)
        values = {k: _values(k, given[k], n) for k in names}
        _check_euler(self.p, values)
        for k in names:
            if k in trainable:
                setattr(self, k, torch.nn.Parameter(values[k].to(**kw)))
            else:
                self.register_buffer(k, values[k].to(device=device))
        self._register_masks(masks)

    # structure as read-only attributes (the record is the source of truth)
    dt = property(lambda self: self.p.dt)
    reset = property(lambda self: self.p.reset)
    integration = property(lambda self: self.p.integration)
    synapse = property(lambda self: self.p.synapse)
    pseudo_derivative = property(lambda self: self.p.pseudo_derivative)

    @property
    def neuron_parameter_names(self) -> tuple[str, ...]:
        """The per-neuron parameters this layer has (no ``tau_syn`` when current-free)."""
        return tuple(k for k in NEURON_PARAMETERS if self.p.synapse or k != "tau_syn")

    @property
    def trainable(self) -> tuple[str, ...]:
        """The per-neuron parameters that are learned."""
        return self.unit_parameters

    def neuron_parameters(self) -> dict[str, torch.Tensor]:
        """Every per-neuron value as a detached float64 CPU tensor (n,)."""
        return {k: getattr(self, k).detach().to("cpu", torch.float64).clone()
                for k in self.neuron_parameter_names}

    @torch.no_grad()
    def set_neuron_parameters(self, **values: Any) -> None:
        """Set per-neuron values (scalars broadcast); trainable ones are copied into their
        parameters, frozen ones replace their float64 buffers. Validated as in the constructor."""
        n = self.hidden_size
        unknown = sorted(set(values) - set(self.neuron_parameter_names))
        if unknown:
            raise ConfigError(f"LIF: {unknown} are not neuron parameters of this layer; expected some of "
                              f"{list(self.neuron_parameter_names)}")
        new = {k: _values(k, v, n) for k, v in values.items()}
        _check_euler(self.p, new)
        for k, v in new.items():
            cur = getattr(self, k)
            if k in self.unit_parameters:
                cur.copy_(v.to(cur.dtype))
            else:
                self._buffers[k] = v.to(cur.device)

    def _apply(self, fn, recurse=True):
        """Frozen neuron values stay float64 under ``.to(dtype)`` / ``.float()``; they follow devices."""
        frozen = {k: self._buffers[k] for k in self.neuron_parameter_names if k in self._buffers}
        super()._apply(fn, recurse)
        for k, v in frozen.items():
            self._buffers[k] = v.to(device=self._buffers[k].device)
        return self

    def weights(self) -> LIFWeights:
        """Masked weights, trainable neuron parameters (differentiable) and frozen buffers."""
        w = super().weights()
        return w._replace(**{k: self._buffers[k] for k in self.neuron_parameter_names
                             if k not in self.unit_parameters})

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
        q = z + self.v_leak.to(self.dtype)  # differentiable when v_leak is trained
        return LIFState(q, z if self.p.synapse else None, z, z)

    def _terms(self, weights: LIFWeights, dtype: torch.dtype) -> Optional[LIFTerms]:
        """The step's :class:`LIFTerms`, the frozen part computed once per (record, dtype,
        frozen values) and reused: the exp/expm1 of the coefficients and the float64 -> dtype
        casts are not redone every step. None (compute in the step) for a record whose frozen
        values are not this layer's buffers."""
        c = getattr(self, "_terms_cache", None)
        if c is None or c.record is not weights or c.dtype != dtype or \
                c.versions != tuple(b._version for b in c.bufs):
            frozen = [k for k in self.neuron_parameter_names if k not in self.unit_parameters]
            bufs = tuple(self._buffers[k] for k in frozen)
            try:  # the record must hold these buffers (or detached views of them, as the engines do)
                if any(getattr(weights, k).data_ptr() != b.data_ptr() or getattr(weights, k).dtype != b.dtype
                       for k, b in zip(frozen, bufs)):
                    return None
            except RuntimeError:  # tensors of torch.func transforms have no storage
                return None
            own = weights._replace(**{k: getattr(self, k).detach() for k in self.unit_parameters})
            with torch.no_grad():
                terms = lif_terms(own, self.p, dtype)
            # the record and buffers are held, so that their ids cannot be reused while cached
            c = _TermsCache(weights, dtype, bufs, tuple(b._version for b in bufs), terms)
            self._terms_cache = c
        return lif_terms(weights, self.p, dtype, keep=c.terms, fresh=self.unit_parameters)

    def step(self, weights: LIFWeights, state: LIFState, x: torch.Tensor):
        return lif_step(weights, state, x, self.p, self._terms(weights, state.q.dtype))

    def local_jacobian(self, weights, prev, x, new, aux, first):  # noqa: D102
        return lif_jacobian(weights, prev, new, aux, self.p, first, self.unit_parameters)

    def state_traces(self, weights: LIFWeights, state: LIFState) -> dict[str, torch.Tensor]:
        """End-of-step ``v`` (after reset) and, current-based, ``i`` (after all jumps of the step)."""
        dt_ = state.q.dtype
        v = _reset(self.p, state.q, state.e, weights.v_th.to(dt_), weights.v_reset.to(dt_))
        if not self.p.synapse:
            return {"v": v}
        i = state.i
        if self.p.integration == "exact" and weights.U is not None:
            i = i + F.linear(state.e, weights.U)
        return {"v": v, "i": i}

    def forward(self, x: torch.Tensor, state: LIFState | None = None) -> tuple[torch.Tensor, LIFState]:
        """``outputs, state = layer(x, state)``, like :class:`torch.nn.GRU` (no batch_first):
        ``x`` ``(T, B, d)``, outputs ``y_t`` ``(T, B, n)``, the state after the last step.
        Differentiable by autograd through :func:`lif_step`
        (:func:`evrtrl.network.forward_sequence`)."""
        return forward_sequence(self, x, state)

    def extra_repr(self) -> str:
        p = self.p
        vals = []
        for k in self.neuron_parameter_names:
            t = getattr(self, k).detach()
            s = f"{float(t[0]):g}" if bool((t == t[0]).all()) else f"[{float(t.min()):g}..{float(t.max()):g}]"
            vals.append(f"{k}={s}" + ("*" if k in self.unit_parameters else ""))
        return (
            f"{self.input_size}, {self.hidden_size}, {', '.join(vals)}, dt={p.dt}, reset={p.reset!r}, "
            f"integration={p.integration!r}, synapse={p.synapse}, recurrent={self.recurrent}"
        )


def _state_from_components(layer: LIF, w: LIFWeights, s: tuple) -> LIFState:
    q = s[0]
    return lif_state(layer.p, lif_terms(w, layer.p, q.dtype), q, s[1] if layer.synapse else None)


#: LIF in the cell registry: structure, per-neuron values (floats or one per neuron; the
#: trained ones are also parameters), which of them are trained, and the recurrence
SPEC = register(CellSpec(
    name="LIF", cls=LIF,
    hyper=(
        HyperParameter("tau_mem", float, per_neuron=True),
        HyperParameter("tau_syn", float, per_neuron=True, default=None),
        HyperParameter("dt", float),
        HyperParameter("v_th", float, per_neuron=True),
        HyperParameter("v_leak", float, per_neuron=True),
        HyperParameter("v_reset", float, per_neuron=True),
        HyperParameter("bias", float, per_neuron=True, default=0.0),
        HyperParameter("reset", str, RESETS), HyperParameter("integration", str, INTEGRATIONS),
        HyperParameter("recurrent", bool),
        HyperParameter("synapse", bool, default=True),
        HyperParameter("trainable", tuple, NEURON_PARAMETERS, default=()),
    ),
    weight_shapes=lambda d, n, config: LIF.weight_shapes(d, n, config.get("recurrent", True)),
    state_from_components=_state_from_components,
    unit_parameters=lambda config: tuple(k for k in NEURON_PARAMETERS if k in config.get("trainable", ())),
))
