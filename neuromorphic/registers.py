r"""Register-level quantisation: the values a chip's registers hold for one LIF layer, in the chip's units.

Two register models are implemented, selected by ``HardwareProfile.register_format``:

**Xylo** (SynSense Xylo Audio 2, checked against xylosim 0.1.3 ``src/v2/cpp`` and
Rockpool 3.1.0 ``devices/xylo/syns61201``). Per step the chip computes, in 16-bit
saturating integers (``c`` = weight code, ``k`` = weight shift):

.. math::

    i \leftarrow \mathrm{sat}(i + (c \ll k)\,n_{spikes}), \quad
    i \leftarrow i - \max(i \gg d_{syn}, \pm 1), \quad
    v \leftarrow \mathrm{sat}(v - \max(v \gg d_{mem}, \pm1) + i), \quad
    \text{while } v \ge \vartheta:\ v \leftarrow v - \vartheta.

The library's Euler LIF is :math:`\tilde\imath_t = \alpha_s\tilde\imath_{t-1} + W x_t`,
:math:`v_t = a v_{t-1} + b\,\tilde\imath_t` (``b = dt/tau_mem``). With
``W = s c`` the chip's current after its decay is :math:`\alpha_s \tilde\imath\,2^k/s`, so
its membrane is the library's times the **gain** :math:`g = \alpha_s 2^k/(s\,b)` and

.. math::

    \vartheta = \mathrm{round}(v_{th}\,\alpha_s\,2^k / (s\,b)), \qquad
    d = \mathrm{round}(\log_2(1/(1-\alpha))).

**Loihi** (Lava's bit-accurate CUBA LIF ``PyLifModelBitAcc`` as loaded by lava-dl netx).
Per step, with 12-bit decays ``iDecay`` (current, 1..4096) and ``vDecay`` (voltage, 0..4095):

.. math::

    u \leftarrow \mathrm{sgn}\cdot(|u(4096 - iDecay)| \gg 12) + (a_{in} \ll 6), \quad
    v \leftarrow \mathrm{clip}(\mathrm{sgn}\cdot(|v(4096-vDecay)| \gg 12) + u), \quad
    z = v > (vThMant \ll 6),\ v \leftarrow 0 \text{ where } z.

Here the current enters the membrane before it decays, as in the library:
gain :math:`g = 64/(s\,b)` and :math:`vThMant = \mathrm{round}(v_{th}/(s\,b))`,
:math:`iDecay = \mathrm{round}((1-\alpha_s) 4096)`, :math:`vDecay = \mathrm{round}((1-a) 4096)`.

Every neuron parameter is handled as a per-neuron array (scalars broadcast), so
layers with per-neuron time constants and thresholds need no other code path.
``b`` and the decays come from the layer's own discretisation (``exact`` or ``euler``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from evrtrl.errors import ConfigError
from .quantize import QuantizedWeights, quantize_weights

__all__ = ["LayerRegisters", "RegisterIssue", "neuron_constants", "layer_registers", "register_issues",
           "xylo_specification", "XYLO_SPEC_KEYS", "largest_shift_for_threshold", "precision_loss_to_fit"]

#: the keyword arguments of Rockpool's ``XyloSim.from_specification`` that an export holds
XYLO_SPEC_KEYS = ("weights_in", "weights_rec", "weights_out", "dash_mem", "dash_mem_out", "dash_syn",
                  "dash_syn_2", "dash_syn_out", "threshold", "threshold_out", "weight_shift_in",
                  "weight_shift_rec", "weight_shift_out", "dt")


def _per_neuron(layer, name: str) -> np.ndarray:
    return np.broadcast_to(np.asarray(getattr(layer, name), np.float64), (layer.n,)).copy()


def neuron_constants(layer) -> dict:
    """Per-neuron ``a`` (membrane decay), ``b`` (current-to-membrane gain), ``alpha`` (current decay), shape (n,)."""
    tm, ts, dt = _per_neuron(layer, "tau_mem"), _per_neuron(layer, "tau_syn"), float(layer.dt)
    if layer.integration == "euler":
        return {"a": 1.0 - dt / tm, "b": dt / tm, "alpha": 1.0 - dt / ts}
    a, al = np.exp(-dt / tm), np.exp(-dt / ts)
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.where(np.isclose(ts, tm, rtol=1e-12, atol=0.0), a * dt / tm, ts / (ts - tm) * (al - a))
    return {"a": a, "b": b, "alpha": al}


@dataclass(frozen=True)
class LayerRegisters:
    """One LIF layer's register values (integer arrays, per neuron where the chip has one per neuron).

    ``weights``: name -> int64 codes (n x k), as :class:`QuantizedWeights`; ``scale`` (n,):
    library current of one code before the shift; ``threshold`` (n,); ``decay_mem`` /
    ``decay_syn`` (n,): Xylo ``dash_mem`` / ``dash_syn``, Loihi ``vDecay`` / ``iDecay``;
    ``gain`` (n,): threshold-register units per library membrane unit (Xylo: the membrane
    register; Loihi: the membrane register >> 6); ``threshold_exact``: the
    threshold before rounding (for the reports).
    """

    layer: int
    fmt: str
    weights: dict
    scale: np.ndarray
    weight_shift: int
    threshold: np.ndarray
    decay_mem: np.ndarray
    decay_syn: np.ndarray
    gain: np.ndarray
    threshold_exact: np.ndarray
    quantized: QuantizedWeights

    def hardware_v_th(self) -> np.ndarray:
        """The threshold the chip applies, in library membrane units (per neuron)."""
        return self.threshold / self.gain


@dataclass(frozen=True)
class RegisterIssue:
    """A register value outside what the chip can hold: ``rule``, ``message``, ``value``, ``limit``."""

    rule: str
    layer: int
    message: str
    value: object
    limit: object


def _round(x: np.ndarray) -> np.ndarray:
    return np.round(np.nan_to_num(x, nan=0.0, posinf=2.0 ** 62, neginf=-2.0 ** 62)).astype(np.int64)


def layer_registers(layer, index: int, fmt: str, bits: int, *, weight_shift: int = 0,
                    quantization: str = "per_tensor") -> LayerRegisters:
    """Register values of LIF ``layer`` (a :class:`~.netspec.LIFLayer`) for register model ``fmt``."""
    if layer.kind != "lif":
        raise ConfigError(f"layer {index}: register quantisation covers LIF layers, got {layer.kind!r}")
    names = layer.weight_names()
    live = {k: np.where(layer.mask(k), np.asarray(layer.weight(k), np.float64), 0.0) for k in names}
    qw = quantize_weights(live, {}, bits, quantization)
    s = np.broadcast_to(qw.scale, (layer.n,)).astype(np.float64)
    c = neuron_constants(layer)
    v_th = _per_neuron(layer, "v_th")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if fmt == "xylo":
            gain = c["alpha"] * 2.0 ** weight_shift / (s * c["b"])
            dm, ds = (_round(np.log2(1.0 / np.where(1.0 - al > 0, 1.0 - al, np.nan))) for al in (c["a"], c["alpha"]))
        elif fmt == "loihi":
            gain = 1.0 / (s * c["b"])  # vThMant units (membrane >> 6) per library membrane unit
            dm = _round((1.0 - c["a"]) * 4096.0)
            ds = _round((1.0 - c["alpha"]) * 4096.0)
        else:
            raise ConfigError(f"unknown register format {fmt!r}; expected 'xylo' or 'loihi'")
        thr_exact = v_th * gain
    thr = _round(thr_exact)
    return LayerRegisters(index, fmt, dict(qw.q), s, int(weight_shift), thr, dm, ds, gain, thr_exact, qw)


def register_issues(regs: LayerRegisters, profile) -> list[RegisterIssue]:
    """Register values the profile's widths cannot hold (threshold, decay codes, weight shift)."""
    out = []
    li = regs.layer
    tb = profile.threshold_bits
    if tb is not None:
        hi = 2 ** (tb - 1) - 1 if profile.threshold_signed else 2 ** tb - 1
        worst = int(regs.threshold.max())
        if worst > hi:
            f, q = precision_loss_to_fit(regs, tb if profile.threshold_signed else tb + 1)
            qmax = max((int(np.abs(w).max()) for w in regs.weights.values() if w.size), default=0)
            out.append(RegisterIssue("threshold_bits", li, f"threshold register {worst} (v_th x gain "
                                     f"{float(regs.gain[int(np.argmax(regs.threshold))]):.4g}) exceeds the "
                                     f"{tb}-bit {'signed' if profile.threshold_signed else 'unsigned'} range "
                                     f"(max {hi}); {int((regs.threshold > hi).sum())} neuron(s). Fitting it by "
                                     f"scaling weights and threshold by {f:.3g} (what Rockpool's quantiser does) "
                                     f"leaves a largest weight code of {q} instead of {qmax} "
                                     f"({math.log2(qmax / max(q, 1)):.1f} bits of weight precision lost)", worst, hi))
        low = int(regs.threshold.min())
        if low < 1:
            out.append(RegisterIssue("threshold_range", li, f"threshold register rounds to {low} (< 1): the neuron "
                                     "would fire on any positive input", low, 1))
    if profile.decay_codes is not None:
        for key, arr, what in (("mem", regs.decay_mem, "dash_mem" if regs.fmt == "xylo" else "vDecay"),
                               ("syn", regs.decay_syn, "dash_syn" if regs.fmt == "xylo" else "iDecay")):
            lo, hi = profile.decay_codes[key]
            bad = (arr < lo) | (arr > hi)
            if bad.any():
                v = int(arr[bad][0])
                out.append(RegisterIssue("decay_code", li, f"{what} = {v} is not representable (codes {lo}..{hi}); "
                                         f"{int(bad.sum())} neuron(s)", v, [lo, hi]))
    if profile.max_weight_shift is not None and regs.weight_shift > profile.max_weight_shift:
        out.append(RegisterIssue("weight_shift", li, f"weight shift {regs.weight_shift} > {profile.max_weight_shift}",
                                 regs.weight_shift, profile.max_weight_shift))
    return out


def xylo_specification(regs: list, dt: float) -> dict:
    """``XyloSim.from_specification`` keyword arguments for hidden layers ``regs[:-1]`` and output ``regs[-1]``.

    Hidden layers share one recurrent pool (in layer order): layer 0's ``W`` goes to
    ``weights_in``, every hidden ``U`` and the ``W`` of hidden layers 1.. to ``weights_rec``
    (pre x post), the output layer's ``W`` to ``weights_out`` (all hidden rows; rows of
    other layers are 0). Only synapse 0 is used (``[..., 1] = 0``).
    """
    if len(regs) < 2:
        raise ConfigError("a Xylo specification needs at least one hidden and one output layer")
    hid, out = regs[:-1], regs[-1]
    sizes = [r.threshold.size for r in hid]
    off = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    nh, d = int(off[-1]), hid[0].weights["W"].shape[1]
    w_in = np.zeros((d, nh, 2), np.int64)
    w_rec = np.zeros((nh, nh, 2), np.int64)
    w_in[:, off[0]:off[1], 0] = hid[0].weights["W"].T
    for li, r in enumerate(hid):
        if "U" in r.weights:
            w_rec[off[li]:off[li + 1], off[li]:off[li + 1], 0] = r.weights["U"].T
        if li > 0:
            w_rec[off[li - 1]:off[li], off[li]:off[li + 1], 0] = r.weights["W"].T
    w_out = np.zeros((nh, out.threshold.size), np.int64)
    w_out[off[-2]:off[-1], :] = out.weights["W"].T
    shifts = {r.weight_shift for r in hid}
    if len(shifts) != 1:
        raise ConfigError(f"hidden layers need one common weight shift on Xylo, got {sorted(shifts)}")
    k = shifts.pop()
    cat = np.concatenate
    return {
        "weights_in": w_in, "weights_rec": w_rec, "weights_out": w_out,
        "dash_mem": cat([r.decay_mem for r in hid]), "dash_mem_out": out.decay_mem.copy(),
        "dash_syn": cat([r.decay_syn for r in hid]), "dash_syn_2": cat([r.decay_syn for r in hid]),
        "dash_syn_out": out.decay_syn.copy(),
        "threshold": cat([r.threshold for r in hid]), "threshold_out": out.threshold.copy(),
        "weight_shift_in": np.int64(k), "weight_shift_rec": np.int64(k), "weight_shift_out": np.int64(out.weight_shift),
        "dt": np.float64(dt),
    }


def largest_shift_for_threshold(layer, index: int, bits: int, threshold_bits: int, max_shift: int,
                                quantization: str = "per_tensor") -> int:
    """Largest Xylo weight shift whose threshold codes still fit ``threshold_bits`` (signed); 0 if none does."""
    hi = 2 ** (threshold_bits - 1) - 1
    for k in range(max_shift, -1, -1):
        r = layer_registers(layer, index, "xylo", bits, weight_shift=k, quantization=quantization)
        if int(r.threshold.max()) <= hi:
            return k
    return 0


def precision_loss_to_fit(regs: LayerRegisters, threshold_bits: int) -> tuple[float, int]:
    """What Rockpool's quantiser does when a threshold overflows: scale weights and thresholds by
    ``hi / max(threshold)``. Returns that factor and the largest weight code left."""
    hi = 2 ** (threshold_bits - 1) - 1
    f = hi / float(regs.threshold.max())
    q = max((int(np.abs(np.round(w * f)).max()) for w in regs.weights.values() if w.size), default=0)
    return f, q

