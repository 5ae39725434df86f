"""Assertions for users' own tests: gradient agreement and cross-simulator agreement.

>>> import torch, evrtrl.validation.testing as et
>>> from evrtrl.models import LIF
>>> m = LIF(3, 4, tau_mem=20e-3, tau_syn=10e-3, dt=1e-3, weight_scale=3.0, dtype=torch.float64)
>>> x = (torch.rand(50, 2, 3) < 0.3).double()
>>> errs = et.assert_gradients_match(m, x, lambda y, t: y.sum())   # event, dense, bptt

``assert_matches_brian2`` / ``assert_matches_norse`` import the simulators lazily, so this
module imports without them. Every failure message names the parameter (gradients) or the
layer, batch entry, neuron and step (simulators) that differ, and by how much.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from evrtrl.api import gradients, simulate
from evrtrl.network import layers_of
from evrtrl.spikecompare import SpikeComparison, compare_spikes, match_count, spike_times
from evrtrl.validation.brian2_bridge import run_brian2
from evrtrl.validation.norse_bridge import run_norse

__all__ = [
    "assert_gradients_match", "gradient_errors", "GradientError",
    "assert_matches_brian2", "assert_matches_norse", "compare_with_reference",
]


@dataclass
class GradientError:
    """Relative norm-wise difference of one parameter's gradient between two methods."""

    parameter: str
    method_a: str
    method_b: str
    relative_error: float
    index: tuple[int, ...]
    value_a: float
    value_b: float

    def describe(self) -> str:
        return (
            f"gradient of parameter '{self.parameter}': method '{self.method_a}' vs "
            f"'{self.method_b}' differ by relative error {self.relative_error:.3e} "
            f"(||g_a - g_b|| / max(||g_a||, ||g_b||)); largest difference at index "
            f"{list(self.index)}: {self.value_a!r} vs {self.value_b!r} "
            f"(|diff| {abs(self.value_a - self.value_b):.3e})"
        )


def gradient_errors(model: Any, x: torch.Tensor, loss_fn: Callable,
                    methods: Sequence[str] = ("event", "dense", "bptt")) -> list[GradientError]:
    """One :class:`GradientError` per parameter and pair of ``methods``."""

    if len(methods) < 2:
        raise ValueError(f"need at least two methods to compare, got {list(methods)}")
    grads = {m: gradients(model, x, loss_fn, method=m) for m in methods}
    out = []
    for a, b in itertools.combinations(methods, 2):
        ga, gb = grads[a], grads[b]
        if set(ga) != set(gb):
            raise AssertionError(
                f"methods '{a}' and '{b}' return different parameters: "
                f"{sorted(set(ga) ^ set(gb))}"
            )
        for name in ga:
            x1, x2 = ga[name].detach().double(), gb[name].detach().double()
            d = (x1 - x2).abs()
            scale = max(float(x1.norm()), float(x2.norm()))
            dn = float((x1 - x2).norm())
            rel = 0.0 if dn == 0.0 else (dn / scale if scale > 0 else float("inf"))
            if not torch.isfinite(d).all():
                rel = float("inf")
            flat = int(torch.nan_to_num(d, nan=float("inf")).flatten().argmax()) if d.numel() else 0
            idx = tuple(int(v) for v in torch.unravel_index(torch.tensor(flat), d.shape)) if d.numel() else ()
            out.append(GradientError(name, a, b, rel, idx,
                                     float(x1[idx]) if d.numel() else 0.0,
                                     float(x2[idx]) if d.numel() else 0.0))
    return out


def assert_gradients_match(model: Any, x: torch.Tensor, loss_fn: Callable,
                           methods: Sequence[str] = ("event", "dense", "bptt"),
                           rtol: float = 1e-10) -> list[GradientError]:
    """Assert that every pair of ``methods`` gives the same gradient for every parameter.

    Relative norm-wise per parameter: ``||g_a - g_b|| <= rtol * max(||g_a||, ||g_b||)``.
    Raises AssertionError naming the parameter, the two methods, the relative error and the
    largest-differing index (all failures are listed, worst first). Returns the errors.
    """
    errs = gradient_errors(model, x, loss_fn, methods)
    bad = sorted((e for e in errs if not e.relative_error <= rtol),
                 key=lambda e: -e.relative_error if e.relative_error == e.relative_error else 0)
    if bad:
        raise AssertionError(
            f"{len(bad)} gradient comparison(s) exceed rtol={rtol:.1e}:\n  "
            + "\n  ".join(e.describe() for e in bad)
        )
    return errs


# ----------------------------------------------------------------- simulators
def compare_with_reference(model: Any, x: torch.Tensor, ref, *, name: str = "reference",
                           batch_index: Sequence[int] | None = None) -> list[SpikeComparison]:
    """Per layer, :func:`compare_spikes` of ``evrtrl.simulate(model, x)`` against ``ref``."""

    return _compare(simulate(model, x), ref, name, batch_index, x.shape[1])


def _compare(sim, ref, name: str, batch_index: Sequence[int] | None,
             batch: int) -> list[SpikeComparison]:
    bidx = list(batch_index) if batch_index is not None else list(range(batch))
    out = []
    for lt, rt in zip(sim.layers, ref.layers):
        states = {k: v[:, bidx] for k, v in lt.states.items()}
        out.append(compare_spikes(
            lt.spikes[:, bidx], rt.spikes, states_a=states, states_b=rt.states,
            names=("evrtrl", name),
        ))
    return out


def _value(states: dict, key: str, t: int, b: int, k: int) -> str:
    return f"{float(states[key][t, b, k]):.17g}" if key in states else "?"


def _check(model, x, ref, who: str, max_step_shift: int, state_atol: float | None,
           batch_index: Sequence[int] | None) -> list[SpikeComparison]:

    sim = simulate(model, x)
    comps = _compare(sim, ref, who, batch_index, x.shape[1])
    bidx = list(batch_index) if batch_index is not None else list(range(x.shape[1]))
    for l, c in enumerate(comps):
        lib_st = {k: v[:, bidx] for k, v in sim.layers[l].states.items()}
        ref_st = ref.layers[l].states
        lib_sp, ref_sp = sim.layers[l].spikes[:, bidx], ref.layers[l].spikes
        if max_step_shift == 0 and not c.identical:
            t, b, k = c.first_mismatch
            raise AssertionError(
                f"evrtrl and {who} disagree: layer {l}, batch {bidx[b]}, neuron {k}, step {t}: "
                f"evrtrl spike={int(lib_sp[t, b, k])} (end-of-step v={_value(lib_st, 'v', t, b, k)},"
                f" i={_value(lib_st, 'i', t, b, k)}) vs {who} spike={int(ref_sp[t, b, k])} "
                f"(v={_value(ref_st, 'v', t, b, k)}, i={_value(ref_st, 'i', t, b, k)}); "
                f"{c.n_mismatch} entries differ in all; spike counts {c.total_a} vs {c.total_b}"
            )
        if max_step_shift > 0:
            mf = c.matched.get(max_step_shift)
            if mf is None:
                c = compare_spikes(lib_sp, ref_sp, windows=(0, max_step_shift), names=("evrtrl", who))
                mf = c.matched[max_step_shift]
            if mf < 1.0:
                import numpy as np

                ta, tb = spike_times(lib_sp), spike_times(ref_sp)
                for b in range(len(ta)):
                    for k in range(len(ta[b])):
                        m = match_count(ta[b][k], tb[b][k], max_step_shift)
                        if m < max(len(ta[b][k]), len(tb[b][k])):
                            raise AssertionError(
                                f"evrtrl and {who} disagree beyond {max_step_shift} step(s): "
                                f"layer {l}, batch {bidx[b]}, neuron {k}: evrtrl spikes at steps "
                                f"{np.asarray(ta[b][k]).tolist()} vs {who} at "
                                f"{np.asarray(tb[b][k]).tolist()} ({m} matched within "
                                f"{max_step_shift}); matched fraction over all neurons {mf:.4f}"
                            )
        if state_atol is not None and c.identical:
            for key, mx in c.state_max_abs.items():
                if mx > state_atol:
                    t, b, k = c.state_argmax[key]
                    raise AssertionError(
                        f"evrtrl and {who} state '{key}' differ by {mx:.3e} > {state_atol:.1e}: "
                        f"layer {l}, batch {bidx[b]}, neuron {k}, step {t}: evrtrl "
                        f"{_value(lib_st, key, t, b, k)} vs {who} {_value(ref_st, key, t, b, k)}"
                    )
    return comps


def assert_matches_brian2(model: Any, x: torch.Tensor, *, max_step_shift: int = 0,
                          state_atol: float | None = 1e-9,
                          batch_index: int | Sequence[int] | None = None) -> list[SpikeComparison]:
    """Assert that ``evrtrl.simulate`` and Brian2 (``method='exact'``) give the same spikes.

    ``max_step_shift=0``: identical rasters (same step labels); ``> 0``: the same spike counts
    and every spike matched one-to-one within that many steps. ``state_atol``: bound on the
    end-of-step ``v``/``i`` difference, checked where the rasters are identical (None: skip).
    Returns one :class:`SpikeComparison` per layer.
    """

    ref = run_brian2(model, x, batch_index=batch_index)
    return _check(model, x, ref, "Brian2", max_step_shift, state_atol, ref.batch_index)


def assert_matches_norse(model: Any, x: torch.Tensor, *, max_step_shift: int = 0,
                         state_atol: float | None = None,
                         parameter_dtype: torch.dtype | None = None) -> list[SpikeComparison]:
    """Assert that ``evrtrl.simulate`` (``integration='euler'``) and Norse give the same spikes.

    As :func:`assert_matches_brian2`; ``state_atol`` defaults to 1e-9 for float64 models and
    1e-4 otherwise. ``parameter_dtype`` is passed to :func:`evrtrl.validation.norse_bridge.run_norse`.
    """

    if state_atol is None:
        state_atol = 1e-9 if layers_of(model)[0].layer.dtype == torch.float64 else 1e-4
    ref = run_norse(model, x, parameter_dtype=parameter_dtype)
    return _check(model, x, ref, "Norse", max_step_shift, state_atol, None)
