"""Map a trained network onto a hardware profile and report what fits and what not.

``map_to_hardware(model, profile)`` quantises every layer (see :mod:`.quantize`),
keeps pruned synapses out, places neurons on cores (see :mod:`.placement`) and
checks every rule of the profile. Each violated rule becomes a
:class:`Violation` naming the rule, the layer and the numbers; ``model_change``
says whether only a change of the model (not of the mapping) can fix it.

Chips with a register model (``profile.register_format``: Xylo Audio 2, Loihi 2)
get their thresholds and decays as register values in the chip's units
(:mod:`.registers`), checked against the register widths. Given an input ``x`` of
spike counts, the registers run in the integer chip simulation (:mod:`.chipsim`,
the same code as ``simulate_export``) and the report gives how far spike counts,
spike timing and the loss or accuracy move from the float model; other chips are
simulated as a float copy with dequantised weights (``evrtrl.simulate``).
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from evrtrl.errors import ConfigError
from evrtrl.models import Stack, cell_spec
from .netspec import Network, network_from_model
from .placement import CoreLimits, neuron_loads, place
from .profiles import HardwareProfile, load_profile
from .quantize import QuantizedWeights, quantize_decay, quantize_weights, tau_from_decay
from .registers import neuron_constants, register_issues

__all__ = ["Violation", "ParameterDrift", "CoreUsage", "LayerQuantization", "SimulationComparison", "MappingReport",
           "map_to_hardware", "quantized_model", "compare_spikes"]


@dataclass(frozen=True)
class Violation:
    rule: str
    layer: int | None
    message: str
    value: Any = None
    limit: Any = None
    model_change: bool = False

    def __str__(self) -> str:
        where = "network" if self.layer is None else f"layer {self.layer}"
        tag = " [needs a model change]" if self.model_change else ""
        return f"{self.rule} ({where}): {self.message}{tag}"


@dataclass(frozen=True)
class ParameterDrift:
    """A neuron parameter that quantisation moves: a warning, not a rule violation.

    ``parameter`` is ``alpha_mem`` / ``alpha_syn`` (per-step decay factors) or
    ``v_th`` (threshold, in the layer's float units); ``hardware_value`` is what
    the chip computes with (for per-row scales: the row with the largest error).
    ``rel_error = |hardware - float| / |float|``.
    """

    layer: int
    parameter: str
    float_value: float
    hardware_value: float
    rel_error: float
    detail: str = ""

    def __str__(self) -> str:
        sign = "+" if self.hardware_value >= self.float_value else "-"
        return (f"layer {self.layer} {self.parameter}: float {self.float_value:.6g} -> hardware "
                f"{self.hardware_value:.6g} ({sign}{self.rel_error:.2%})" + (f"; {self.detail}" if self.detail else ""))


def _rel(a: float, b: float) -> float:
    return abs(b - a) / abs(a) if a != 0 else (0.0 if b == 0 else math.inf)


@dataclass(frozen=True)
class CoreUsage:
    core: int
    neurons: int
    synapses: int
    memory_bits: int
    axons: int
    layers: tuple
    utilisation: dict  # limit name -> fraction (only for limits the profile publishes)


@dataclass
class LayerQuantization:
    layer: int
    bits: int | None
    mode: str
    scale: np.ndarray
    max_abs_error: float
    max_error_over_scale: float   # max |w - q(w)| / s over live entries (<= 0.5)
    live_synapses: int
    zero_after_rounding: int      # live synapses whose code is 0
    threshold_code: float | None = None
    tau_mem_q: float | None = None
    tau_syn_q: float | None = None
    decay_codes: dict = field(default_factory=dict)
    quantized: QuantizedWeights | None = None
    #: EGRU: one QuantizedWeights per gate ("u", "r", "z"), each shared by W_g and U_g
    gate_quantized: dict = field(default_factory=dict)
    #: register values in the chip's units (``registers.LayerRegisters``) on chips with a register model
    registers: Any = None

    def register_summary(self) -> dict | None:
        """Register values as plain numbers (ranges where they differ between neurons)."""
        r = self.registers
        if r is None:
            return None

        def rng(a):
            lo, hi = int(np.min(a)), int(np.max(a))
            return lo if lo == hi else [lo, hi]

        names = ("threshold", "dash_mem", "dash_syn") if r.fmt == "xylo" else ("vThMant", "vDecay", "iDecay")
        out = dict(zip(names, (rng(r.threshold), rng(r.decay_mem), rng(r.decay_syn))))
        if r.fmt == "xylo":
            out["weight_shift"] = r.weight_shift
        out["max_weight_code"] = max(int(np.abs(w).max()) for w in r.weights.values() if w.size)
        return out


@dataclass
class SimulationComparison:
    spikes_float: int
    spikes_quant: int
    count_rel_diff: float          # |N_q - N_f| / max(N_f, 1)
    per_neuron_count_corr: float   # Pearson r of per-neuron counts (nan if constant)
    timing_jaccard: float          # |S_f & S_q| / |S_f | S_q| over (t, b, unit)
    timing_within_1: float         # fraction of float spikes matched by a quantised one within +-1 step
    loss_float: float | None = None
    loss_quant: float | None = None
    acc_float: float | None = None
    acc_quant: float | None = None
    #: "chip" (integer register simulation, chipsim.py) or "float copy" (dequantised float model)
    source: str = "float copy"
    #: per neuron layer: compare_spikes() of that layer (chip spikes aligned by the chip's layer delay)
    layers: list = field(default_factory=list)
    #: chip simulation only: saturated additions (state at its register limit)
    saturations: int | None = None
    #: chip simulation only: steps each layer's spikes were shifted back to align with the float model
    delays: list = field(default_factory=list)


@dataclass
class MappingReport:
    profile: HardwareProfile
    violations: list
    cores: list
    placement: list               # per layer: int array of core ids (-1 = not on a core, e.g. Xylo outputs)
    quantization: list
    quantized_network: Network
    simulation: SimulationComparison | None = None
    #: parameter drift caused by quantisation (decays, thresholds), separate from ``violations``
    warnings: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def model_changes(self) -> list:
        return [v for v in self.violations if v.model_change]

    def summary(self) -> str:
        p = self.profile
        lines = [f"Mapping onto {p.display_name} ({p.name}): "
                 f"{'fits' if self.ok else f'{len(self.violations)} violation(s)'}, {len(self.cores)} core(s) used"
                 + (f", {len(self.warnings)} parameter-drift warning(s)" if self.warnings else "")]
        for c in self.cores:
            util = ", ".join(f"{k} {v:.1%}" for k, v in c.utilisation.items())
            lines.append(f"  core {c.core}: {c.neurons} neurons, {c.synapses} synapses, {c.axons} input axons"
                         + (f" ({util})" if util else ""))
        for q in self.quantization:
            lines.append(f"  layer {q.layer}: {q.bits}-bit {q.mode}, max|w-q(w)| = {q.max_abs_error:.3g} "
                         f"(= {q.max_error_over_scale:.3f} scale), {q.zero_after_rounding}/{q.live_synapses} "
                         f"live synapses round to 0")
            rs = q.register_summary()
            if rs is not None:
                lines.append(f"  layer {q.layer} {q.registers.fmt} registers: "
                             + ", ".join(f"{k} {v}" for k, v in rs.items()))
        for v in self.violations:
            lines.append(f"  VIOLATION {v}")
        for w in self.warnings:
            lines.append(f"  WARNING parameter drift: {w}")
        s = self.simulation
        if s is not None:
            what = "chip simulation" if s.source == "chip" else "quantised float copy"
            lines.append(f"  {what} vs float (last layer): spikes {s.spikes_quant} vs {s.spikes_float} "
                         f"({s.count_rel_diff:.1%} off), timing Jaccard {s.timing_jaccard:.3f}, "
                         f"within +-1 step {s.timing_within_1:.3f}")
            if s.source == "chip":
                per = ", ".join(f"layer {i}: {d['spikes_quant']} vs {d['spikes_float']}" for i, d in enumerate(s.layers))
                lines.append(f"  chip spikes per layer (aligned by {s.delays} steps): {per}; "
                             f"{s.saturations} saturated additions")
            if s.loss_float is not None:
                lines.append(f"  loss {s.loss_float:.5g} -> {s.loss_quant:.5g}")
            if s.acc_float is not None:
                lines.append(f"  accuracy {s.acc_float:.3f} -> {s.acc_quant:.3f}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        def clean(o):
            if isinstance(o, np.ndarray):
                return o.tolist()
            if isinstance(o, dict):
                return {str(k): clean(v) for k, v in o.items()}
            if isinstance(o, (list, tuple)):
                return [clean(v) for v in o]
            if isinstance(o, (np.floating, np.integer)):
                return o.item()
            return o
        return clean({
            "profile": self.profile.name, "ok": self.ok,
            "violations": [asdict(v) for v in self.violations],
            "warnings": [asdict(w) for w in self.warnings],
            "cores": [asdict(c) for c in self.cores],
            "quantization": [{**{k: v for k, v in asdict(q).items()
                                  if k not in ("quantized", "gate_quantized", "registers")},
                               "registers": q.register_summary()} for q in self.quantization],
            "simulation": None if self.simulation is None else asdict(self.simulation),
        })


# --------------------------------------------------------------------------- rules

def _profile_rules(net: Network, prof: HardwareProfile) -> list:
    """Rules held as profile data: reset modes, v_leak/v_reset of register models, layer count,
    input-/output-connected hidden neurons."""
    out = []
    for li, layer in enumerate(net.layers):
        if layer.kind != "lif":
            continue
        if prof.reset_modes is not None and layer.reset not in prof.reset_modes:
            out.append(Violation("reset_mode", li, f"reset {layer.reset!r}; the {prof.name} neuron implements "
                                 f"{' / '.join(prof.reset_modes)} reset only", layer.reset, list(prof.reset_modes), True))
        if prof.register_format is not None:
            for nm in ("v_leak", "v_reset"):
                v = np.asarray(getattr(layer, nm))
                if np.any(v != 0):
                    out.append(Violation(nm, li, f"{nm} = {float(np.max(np.abs(v))):g} != 0; the {prof.name} neuron "
                                         "has a fixed 0", float(np.max(np.abs(v))), 0.0, True))
    if prof.min_neuron_layers is not None and len(net.layers) < prof.min_neuron_layers:
        out.append(Violation("min_neuron_layers", None, f"{len(net.layers)} neuron layer(s); {prof.name} needs at "
                             f"least {prof.min_neuron_layers} (hidden and output neurons)", len(net.layers),
                             prof.min_neuron_layers, True))
    if len(net.layers) > 1:
        if prof.max_input_connected_neurons is not None:
            w = _live(net.layers[0], net.layers[0].weight_names()[0])
            n_in = int(np.any(w != 0, axis=1).sum())
            if n_in > prof.max_input_connected_neurons:
                out.append(Violation("max_input_connected_neurons", 0, f"{n_in} hidden neurons receive network input; "
                                     f"{prof.name} allows {prof.max_input_connected_neurons}", n_in,
                                     prof.max_input_connected_neurons, True))
        if prof.max_output_connected_neurons is not None:
            w = _live(net.layers[-1], net.layers[-1].weight_names()[0])
            n_out = int(np.any(w != 0, axis=0).sum())
            if n_out > prof.max_output_connected_neurons:
                out.append(Violation("max_output_connected_neurons", len(net.layers) - 2, f"{n_out} hidden neurons "
                                     f"drive output neurons; {prof.name} allows {prof.max_output_connected_neurons}",
                                     n_out, prof.max_output_connected_neurons, True))
    return out


def _registers(net: Network, prof: HardwareProfile, quantization: str, x) -> list | None:
    """Register values per layer for profiles with a register model (all layers LIF), else None."""
    if prof.register_format is None or any(l.kind != "lif" for l in net.layers) or prof.weight_bits is None:
        return None
    from .registers import layer_registers
    from .vendor_export import loihi_registers, xylo_registers

    if prof.register_format == "loihi":
        return loihi_registers(net, prof, quantization=quantization)
    if len(net.layers) < 2:
        return [layer_registers(net.layers[0], 0, "xylo", prof.weight_bits, quantization=quantization)]
    xc = None
    if x is not None:
        xc = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        if np.any(xc < 0) or np.any(xc != np.round(xc)):
            xc = None  # not spike counts: no calibration
    return xylo_registers(net, prof, x=xc, quantization=quantization)


def _live(layer, name) -> np.ndarray:
    w = np.asarray(layer.weight(name), np.float64)
    return np.where(layer.mask(name), w, 0.0)


def _state_fits(value: float, bits: int | None) -> bool:
    return bits is None or abs(value) <= 2 ** (bits - 1) - 1


def map_to_hardware(model, profile, *, quantization: str = "per_tensor", x=None,
                    loss_fn: Callable | None = None, labels=None, drift_tol: float = 1e-6,
                    predict: Callable | None = None) -> MappingReport:
    """Quantise, place and check ``model`` (a ``models`` cell/Stack or a :class:`Network`) on ``profile``.

    ``x`` (T, B, d) (tensor or array) optionally runs the float network through
    ``evrtrl.simulate`` and the mapped one through the integer chip simulation (chips with a
    register model, spike-count input; the Xylo weight shift is then also calibrated on
    ``x``) or as a dequantised float copy (other chips); ``loss_fn(y_t, t)`` (summed over t) and ``labels`` (B,)
    (argmax of the last layer's spike counts, or ``predict(spikes)`` with spikes
    the last layer's (T, B, n) tensor, e.g. an off-chip readout) add loss and accuracy.

    Every LIF parameter that quantisation moves by more than ``drift_tol``
    (relative) is listed in ``report.warnings`` as a :class:`ParameterDrift`:
    the per-step decay factors ``alpha_mem``/``alpha_syn`` (bit-shift or
    fixed-point decay) and the threshold ``v_th`` (its register divided by the gain).
    """
    prof = load_profile(profile)
    net = network_from_model(model)
    V: list = []
    Wn: list = []
    last = len(net.layers) - 1

    # --- network-level rules
    if prof.input_channels is not None and net.input_size > prof.input_channels:
        V.append(Violation("input_channels", 0, f"{net.input_size} inputs, the chip has {prof.input_channels}",
                           net.input_size, prof.input_channels))
    separate_outputs = prof.output_channels is not None and len(net.layers) > 1
    if prof.output_channels is not None and net.output_size > prof.output_channels:
        V.append(Violation("output_channels", last, f"{net.output_size} output neurons, the chip has "
                           f"{prof.output_channels}", net.output_size, prof.output_channels))

    # --- network rules from the profile (reset modes, layer count, connected neurons)
    V += _profile_rules(net, prof)
    regs = _registers(net, prof, quantization, x)

    # --- per-layer rules and quantisation
    qlayers, qnet_layers = [], []
    for li, layer in enumerate(net.layers):
        names = layer.weight_names()
        live = {k: _live(layer, k) for k in names}
        rec = [k for k in names if k.startswith("U") and np.any(live[k] != 0)]
        if layer.kind == "egru":
            if not prof.programmable_neurons:
                V.append(Violation("neuron_model", li, f"EGRU (gated, graded output) needs programmable neurons; "
                                   f"{prof.name} supports {list(prof.neuron_models)}", "egru",
                                   list(prof.neuron_models), True))
            if not prof.graded_spikes:
                V.append(Violation("graded_spikes", li, "EGRU emits graded (valued) events; the chip sends binary spikes",
                                   True, False, True))
        else:
            if not prof.supports("lif_cuba"):
                V.append(Violation("neuron_model", li, f"current-based LIF is not among {list(prof.neuron_models)}",
                                   "lif_cuba", list(prof.neuron_models), True))
            rep = prof.time_constant.representation
            if rep in ("none", "linear_leak"):
                V.append(Violation("time_constant", li, f"exponential decay (tau_mem={layer.tau_mem:g} s, "
                                   f"tau_syn={layer.tau_syn:g} s) cannot be represented: the chip has "
                                   f"{'no leak' if rep == 'none' else 'a linear leak'}", layer.tau_mem, rep, True))
        if rec and not prof.recurrence:
            nnz = int(sum(np.count_nonzero(live[k]) for k in rec))
            V.append(Violation("recurrence", li, f"{nnz} recurrent synapses; {prof.name} has no recurrent "
                               "connections", nnz, 0, True))
        elif rec and li == last and separate_outputs and not prof.recurrent_outputs:
            nnz = int(sum(np.count_nonzero(live[k]) for k in rec))
            V.append(Violation("recurrent_outputs", li, f"the output layer has {nnz} recurrent synapses; output "
                               f"neurons on {prof.name} cannot be recurrent", nnz, 0, True))
        if not prof.weight_signed and any(np.any(w < 0) for w in live.values()):
            V.append(Violation("weight_signed", li, "negative weights on a chip with unsigned weights", True, False))

        # quantisation
        fan_in = sum(np.count_nonzero(live[k], axis=1) for k in names)
        n_live = int(sum(int(layer.mask(k).sum()) for k in names))
        if layer.kind == "lif":
            qlayer = copy.deepcopy(layer)
            if prof.weight_bits is not None:
                qw = quantize_weights(live, {}, prof.weight_bits, quantization)
                s = qw.scale.reshape(-1, 1)
                errs = [np.abs(live[k] - qw.dequantized(k))[layer.mask(k)] for k in names]
                err = max((float(e.max()) for e in errs if e.size), default=0.0)
                err_s = max((float((e / np.broadcast_to(s, live[k].shape)[layer.mask(k)]).max())
                             for e, k in zip(errs, names) if e.size), default=0.0)
                zeros = int(sum(int(((qw.q[k] == 0) & layer.mask(k) & (live[k] != 0)).sum()) for k in names))
                for k in names:
                    setattr(qlayer, k, qw.dequantized(k).astype(np.asarray(layer.weight(k)).dtype))
                rg = regs[li] if regs is not None else None
                vth = np.broadcast_to(np.asarray(layer.v_th, np.float64), (layer.n,))
                if rg is None:  # generic chip: the current enters the membrane with unit gain per step
                    gain = 1.0 / (np.broadcast_to(qw.scale, (layer.n,)) * neuron_constants(layer)["b"])
                    codes = np.round(vth * gain)
                    what = "threshold code (v_th / (s b))"
                else:
                    gain, codes = rg.gain, rg.threshold.astype(np.float64)
                    what = (f"{prof.register_format} threshold register" +
                            (f", weight shift {rg.weight_shift}" if rg.fmt == "xylo" else ""))
                hw = codes / gain
                rel = np.abs(hw - vth) / np.where(vth != 0, np.abs(vth), 1.0)
                worst = int(np.argmax(rel))
                thr_code = float(codes.max())
                vth_hw = float(hw[worst])
                vth_detail = f"{what} {codes[worst]:.0f} / gain {gain[worst]:.5g}" + (
                    f" (worst of {layer.n} neurons: {worst})" if np.unique(hw).size > 1 else "")
                if np.unique(hw).size == 1:
                    qlayer.v_th = float(hw[0])
                if rel[worst] > drift_tol:
                    Wn.append(ParameterDrift(li, "v_th", float(vth[worst]), vth_hw, float(rel[worst]), vth_detail))
                if rg is not None:
                    for iss in register_issues(rg, prof):
                        V.append(Violation(iss.rule, li, iss.message, iss.value, iss.limit))
                elif not _state_fits(thr_code, prof.state_bits):
                    V.append(Violation("state_bits", li, f"threshold code {thr_code:.0f} (v_th / (s b), s = weight "
                                       f"step, b = current-to-membrane gain) is beyond the {prof.state_bits}-bit "
                                       "state range", thr_code, 2 ** (prof.state_bits - 1) - 1))
            else:
                qw, err, err_s, zeros, thr_code = None, 0.0, 0.0, 0, None
            am, asyn = layer.decay_factors()
            rep, tb = prof.time_constant.representation, prof.time_constant.bits
            am_q, cm = quantize_decay(am, rep, tb)
            as_q, cs = quantize_decay(asyn, rep, tb)
            for nm, a, aq, code, tau in (("alpha_mem", am, am_q, cm, layer.tau_mem),
                                         ("alpha_syn", asyn, as_q, cs, layer.tau_syn)):
                if _rel(a, aq) > drift_tol:
                    tq = tau_from_decay(aq, layer.dt, layer.integration)
                    what = {"bitshift": "dash", "fixed_point_decay": "decrement"}.get(rep, "code")
                    Wn.append(ParameterDrift(li, nm, float(a), float(aq), _rel(a, aq),
                                             f"{rep} ({tb} bits), {what} {code}; tau {tau:.4g} s -> {tq:.4g} s"))
            qlayer.tau_mem = tau_from_decay(am_q, layer.dt, layer.integration)
            qlayer.tau_syn = tau_from_decay(as_q, layer.dt, layer.integration)
            for nm, t in (("tau_mem", qlayer.tau_mem), ("tau_syn", qlayer.tau_syn)):
                if not (math.isfinite(t) and t > 0):
                    V.append(Violation("time_constant", li, f"{nm} quantises to {t} with {rep} ({tb} bits)", t, rep))
                    setattr(qlayer, nm, getattr(layer, nm))
            rg = regs[li] if regs is not None else None
            codes = ({"mem": int(rg.decay_mem.max()), "syn": int(rg.decay_syn.max())} if rg is not None
                     else {"mem": cm, "syn": cs} if cm is not None else {})
            ql = LayerQuantization(li, prof.weight_bits, quantization,
                                   qw.scale if qw is not None else np.array([1.0]), err, err_s, n_live, zeros,
                                   thr_code, qlayer.tau_mem, qlayer.tau_syn, codes, qw, registers=rg)
        else:
            qlayer = copy.deepcopy(layer)
            err = err_s = 0.0
            zeros = 0
            scales, gq = [], {}
            if prof.weight_bits is not None:
                for g in "urz":
                    gw = {k: live[k] for k in (f"W_{g}", f"U_{g}")}
                    qw = quantize_weights(gw, {}, prof.weight_bits, quantization)
                    scales.append(qw.scale)
                    gq[g] = qw
                    for k in gw:
                        m = layer.mask(k)
                        e = np.abs(gw[k] - qw.dequantized(k))[m]
                        if e.size:
                            err = max(err, float(e.max()))
                            err_s = max(err_s, float((e / np.broadcast_to(qw.scale.reshape(-1, 1), gw[k].shape)[m]).max()))
                        zeros += int(((qw.q[k] == 0) & m & (gw[k] != 0)).sum())
                        qlayer.params[k] = qw.dequantized(k).astype(np.asarray(layer.params[k]).dtype)
            ql = LayerQuantization(li, prof.weight_bits, quantization,
                                   np.concatenate(scales) if scales else np.array([1.0]), err, err_s, n_live, zeros,
                                   gate_quantized=gq)
        qlayers.append(ql)
        qnet_layers.append(qlayer)

        # fan-in / fan-out per neuron
        fi = int(np.max(fan_in)) if np.size(fan_in) else 0
        if prof.fan_in_max is not None and fi > prof.fan_in_max:
            V.append(Violation("fan_in_max", li, f"a neuron has {fi} inputs (incl. recurrent), limit "
                               f"{prof.fan_in_max}; {int(np.sum(fan_in > prof.fan_in_max))} neurons exceed it",
                               fi, prof.fan_in_max))
    # fan-out: targets of each presynaptic unit across the next layer and its own recurrence
    if prof.fan_out_max is not None:
        for li, layer in enumerate(net.layers):
            fo = np.zeros(layer.n, int)
            for k in layer.weight_names():
                if k.startswith("U"):
                    fo += np.count_nonzero(_live(layer, k), axis=0)
            if li < last:
                nxt = net.layers[li + 1]
                for k in nxt.weight_names():
                    if k.startswith("W"):
                        fo += np.count_nonzero(_live(nxt, k), axis=0)
            if fo.size and fo.max() > prof.fan_out_max:
                V.append(Violation("fan_out_max", li, f"a neuron drives {int(fo.max())} synapses, limit "
                                   f"{prof.fan_out_max}", int(fo.max()), prof.fan_out_max))

    # --- placement (on the quantised network: synapses that round to 0 are dropped)
    loads = []
    placed_layers = list(range(len(net.layers) - (1 if separate_outputs else 0)))
    for li in placed_layers:
        layer, ql = qnet_layers[li], qlayers[li]
        mats = []
        for k in layer.weight_names():
            M = np.where(net.layers[li].mask(k), np.asarray(layer.weight(k)), 0.0)
            prefix = ("L", li) if k.startswith("U") else (("in",) if li == 0 else ("L", li - 1))
            mats.append((prefix, M))
        loads.append(neuron_loads(li, mats))
    wb = prof.weight_bits or 32
    lim = CoreLimits(prof.neurons_per_core, prof.synapses_per_core, prof.synapse_memory_bits_per_core,
                     prof.fan_in_max, wb)
    if prof.layers_per_core == 1:  # e.g. Speck: every layer gets cores of its own
        cores, oversized = [], []
        for ld in loads:
            cs, ov = place([ld], lim)
            for c in cs:
                c.index = len(cores)
                cores.append(c)
            oversized += ov
    else:
        cores, oversized = place(loads, lim) if loads else ([], [])
    for nl in oversized:
        V.append(Violation("core_capacity", nl.layer, f"neuron {nl.index} needs {nl.synapses} synapses "
                           f"({nl.synapses * wb} bits) and {len(nl.sources)} input axons: more than one empty "
                           f"core holds", nl.synapses, prof.synapses_per_core or prof.synapse_memory_bits_per_core))
    if cores and prof.cores_per_chip is not None and len(cores) > prof.cores_per_chip:
        V.append(Violation("cores_per_chip", None, f"placement needs {len(cores)} cores, the chip has "
                           f"{prof.cores_per_chip} ({math.ceil(len(cores) / prof.cores_per_chip)} chips)",
                           len(cores), prof.cores_per_chip))
    n_neurons = sum(net.layers[li].n for li in placed_layers)
    if prof.neurons_per_chip is not None and n_neurons > prof.neurons_per_chip:
        V.append(Violation("neurons_per_chip", None, f"{n_neurons} neurons, the chip has {prof.neurons_per_chip}",
                           n_neurons, prof.neurons_per_chip))
    n_syn = sum(c.synapses for c in cores)
    if prof.synapses_per_chip is not None and n_syn > prof.synapses_per_chip:
        V.append(Violation("synapses_per_chip", None, f"{n_syn} synapses, the chip has {prof.synapses_per_chip}",
                           n_syn, prof.synapses_per_chip))
    placement = [np.full(l.n, -1, int) for l in net.layers]
    usage = []
    for c in cores:
        for (li, i) in c.neurons:
            placement[li][i] = c.index
        util = {}
        if prof.neurons_per_core:
            util["neurons"] = len(c.neurons) / prof.neurons_per_core
        if prof.synapses_per_core:
            util["synapses"] = c.synapses / prof.synapses_per_core
        if prof.synapse_memory_bits_per_core:
            util["synapse_memory"] = c.synapses * wb / prof.synapse_memory_bits_per_core
        if prof.fan_in_max:
            util["input_axons"] = len(c.axons) / prof.fan_in_max
        usage.append(CoreUsage(c.index, len(c.neurons), c.synapses, c.synapses * wb, len(c.axons),
                               tuple(sorted({li for li, _ in c.neurons})), util))

    report = MappingReport(prof, V, usage, placement, qlayers, Network(qnet_layers), warnings=Wn)
    if x is not None:
        if not hasattr(x, "detach") and not isinstance(model, Network):  # numpy input: the model's dtype
            import torch
            p0 = next(iter(model.parameters()), None)
            x = torch.as_tensor(np.asarray(x), dtype=p0.dtype if p0 is not None else torch.float64)
        chip = _chip_run(net, prof, regs, V, x)
        report.simulation = (_compare(model, report, x, loss_fn, labels, predict) if chip is None
                             else _compare_chip(model, net, chip, x, loss_fn, labels, predict))
    return report


# --------------------------------------------------------------------------- simulation

def quantized_model(model, report: MappingReport):
    """A copy of ``model`` carrying the quantised weights, thresholds and time constants."""
    cells = []
    for cell, ql in zip(list(getattr(model, "layers", None) or [model]), report.quantized_network.layers):
        changes = ({"tau_mem": float(ql.tau_mem), "tau_syn": float(ql.tau_syn), "v_th": float(ql.v_th)}
                   if ql.kind == "lif" else {})
        new = cell_spec(cell).rebuild(cell, **changes)
        with torch.no_grad():
            for k in ql.weight_names():
                p = getattr(new, k)
                p.copy_(torch.as_tensor(np.asarray(ql.weight(k)), dtype=p.dtype))
        cells.append(new)
    return cells[0] if len(cells) == 1 else Stack(*cells)


def compare_spikes(sf: np.ndarray, sq: np.ndarray) -> dict:
    """Count and timing agreement of two spike rasters (T, B, n)."""
    bf, bq = sf != 0, sq != 0
    nf, nq = int(bf.sum()), int(bq.sum())
    union = int((bf | bq).sum())
    cf, cq = bf.sum(axis=(0, 1)).astype(float), bq.sum(axis=(0, 1)).astype(float)
    corr = float(np.corrcoef(cf, cq)[0, 1]) if cf.std() > 0 and cq.std() > 0 else float("nan")
    near = bq.copy()
    near[1:] |= bq[:-1]
    near[:-1] |= bq[1:]
    return dict(spikes_float=nf, spikes_quant=nq, count_rel_diff=abs(nq - nf) / max(nf, 1),
                per_neuron_count_corr=corr, timing_jaccard=1.0 if union == 0 else int((bf & bq).sum()) / union,
                timing_within_1=1.0 if nf == 0 else int((bf & near).sum()) / nf)


#: violations after which no register file can be built (the chip simulation is then not run)
_UNBUILDABLE = {"min_neuron_layers", "recurrent_outputs", "threshold_bits", "threshold_range", "decay_code",
                "weight_shift", "neuron_model"}


def _chip_run(net: Network, prof: HardwareProfile, regs, V: list, x):
    """Integer chip simulation of the registers (chipsim.py), or None where it cannot run."""
    if regs is None or any(v.rule in _UNBUILDABLE for v in V):
        return None
    xc = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if np.any(xc < 0) or np.any(xc != np.round(xc)):
        return None  # the chips take spike counts
    from .chipsim import NetxLayer, simulate_loihi, simulate_xylo
    from .registers import xylo_specification

    if prof.register_format == "xylo":
        run = simulate_xylo(xylo_specification(regs, float(net.layers[0].dt)), xc)
        sizes = [l.n for l in net.layers[:-1]]
        cuts = np.cumsum(sizes)[:-1]
        run.spikes = list(np.split(run.spikes[0], cuts, axis=2)) + [run.spikes[1]]
        run.layer_delays = list(range(len(net.layers)))
        return run
    if any(np.unique(a).size > 1 for r in regs for a in (r.threshold, r.decay_mem, r.decay_syn)):
        return None  # netx holds one threshold and decay per layer
    layers = [NetxLayer(r.weights["W"], r.weights.get("U"), int(r.decay_syn[0]), int(r.decay_mem[0]),
                        int(r.threshold[0])) for r in regs]
    if any(not np.any(L.weight) for L in layers):
        return None
    return simulate_loihi(layers, xc)


def _align(z: np.ndarray, shift: int) -> np.ndarray:
    """``out[t] = z[t + shift]`` with zeros where that index is outside the run."""
    out = np.zeros_like(z)
    T = z.shape[0]
    if shift >= 0:
        out[:T - shift] = z[shift:]
    else:
        out[-shift:] = z[:T + shift]
    return out


def _compare_chip(model, net: Network, chip, x, loss_fn, labels, predict=None) -> SimulationComparison:
    """Spike drift and accuracy of the chip simulation against the float model (chip layers aligned in time)."""
    import torch
    import evrtrl

    if isinstance(model, Network):
        raise ConfigError("simulation needs a models cell or Stack, not a bare Network")
    with torch.no_grad():
        of = evrtrl.simulate(model, x)
    delays = [d - ((li + 1) if L.integration == "exact" else 0)
              for li, (d, L) in enumerate(zip(chip.layer_delays, net.layers))]
    zs = [_align(z, d) for z, d in zip(chip.spikes, delays)]
    per = []
    for li, z in enumerate(zs):
        sf = of.layers[li].spikes.detach().cpu().numpy()
        c = compare_spikes(sf, z)
        c["spikes_quant"] = int(z.sum())  # spike counts (Xylo hidden neurons may fire several per step)
        c["count_rel_diff"] = abs(c["spikes_quant"] - c["spikes_float"]) / max(c["spikes_float"], 1)
        per.append(c)
    res = dict(per[-1])
    sf = of.spikes.detach().cpu().numpy()
    zq = zs[-1]
    if loss_fn is not None:
        yq = torch.as_tensor(zq, dtype=of.outputs.dtype)
        res["loss_float"] = float(sum(float(loss_fn(of.outputs[t], t)) for t in range(of.outputs.shape[0])))
        res["loss_quant"] = float(sum(float(loss_fn(yq[t], t)) for t in range(yq.shape[0])))
    if labels is not None:
        lab = np.asarray(labels)
        if predict is None:
            pf, pq = sf.sum(0).argmax(-1), zq.sum(0).argmax(-1)
        else:
            with torch.no_grad():
                pf = np.asarray(torch.as_tensor(predict(of.spikes)).cpu())
                pq = np.asarray(torch.as_tensor(predict(torch.as_tensor(zq, dtype=of.spikes.dtype))).cpu())
        res["acc_float"] = float((pf == lab).mean())
        res["acc_quant"] = float((pq == lab).mean())
    return SimulationComparison(**res, source="chip", layers=per, saturations=chip.saturations, delays=delays)


def _compare(model, report, x, loss_fn, labels, predict=None) -> SimulationComparison:
    import torch
    import evrtrl

    if isinstance(model, Network):
        raise ConfigError("simulation needs a models cell or Stack, not a bare Network")
    qm = quantized_model(model, report)
    with torch.no_grad():
        of, oq = evrtrl.simulate(model, x), evrtrl.simulate(qm, x)
    sf, sq = of.spikes.detach().cpu().numpy(), oq.spikes.detach().cpu().numpy()
    res = compare_spikes(sf, sq)
    if loss_fn is not None:
        def total(out):
            y = out.outputs
            return float(sum(float(loss_fn(y[t], t)) for t in range(y.shape[0])))
        res["loss_float"], res["loss_quant"] = total(of), total(oq)
    if labels is not None:
        lab = np.asarray(labels)
        if predict is None:
            pf, pq = sf.sum(0).argmax(-1), sq.sum(0).argmax(-1)
        else:
            with torch.no_grad():
                pf, pq = (np.asarray(torch.as_tensor(predict(o.spikes)).cpu()) for o in (of, oq))
        res["acc_float"] = float((pf == lab).mean())
        res["acc_quant"] = float((pq == lab).mean())
    return SimulationComparison(**res)
