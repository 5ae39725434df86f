"""The public entry points: :func:`simulate`, :func:`gradients` and :func:`make_engine`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from evrtrl.bptt import bptt_gradients
from evrtrl.dense_engine import DenseRTRL
from evrtrl.errors import ShapeError, UnknownMethodError, UnsupportedError
from evrtrl.event_engine import EventRTRL
from evrtrl.finite import check_finite
from evrtrl.network import check_parameters, check_sequence, layers_of
from evrtrl.stats import EngineStats

__all__ = ["simulate", "gradients", "make_engine", "Gradients", "SimulationResult", "LayerTrace",
           "METHODS"]

#: gradient methods: the event engine, dense RTRL (all or live columns) and BPTT
METHODS = ("event", "dense", "dense-live", "bptt")

LossFn = Callable[[torch.Tensor, int], Any]


@dataclass
class LayerTrace:
    """One layer's run: ``spikes`` (events e_t), ``outputs`` (y_t), ``states`` (T, B, n)."""

    spikes: torch.Tensor
    outputs: torch.Tensor
    states: dict[str, torch.Tensor]


@dataclass
class SimulationResult:
    """Result of :func:`simulate`; the top-level fields are the last layer's."""

    spikes: torch.Tensor
    outputs: torch.Tensor
    states: dict[str, torch.Tensor]
    layers: list[LayerTrace] = field(default_factory=list)


class Gradients(dict):
    """``{parameter name: gradient}`` with the engine's :class:`EngineStats` as ``.stats``."""

    def __init__(self, grads: dict[str, torch.Tensor], stats: EngineStats) -> None:
        super().__init__(grads)
        self.stats = stats


@torch.no_grad()
def simulate(model: Any, x: torch.Tensor) -> SimulationResult:
    """Run ``model`` on ``x`` of shape ``(T, B, d)``; no gradients are tracked."""
    check_sequence(model, x)
    check_parameters(model)
    refs = layers_of(model)
    T, B = x.shape[:2]
    weights = [r.layer.weights() for r in refs]
    states = [r.layer.initial_state(B) for r in refs]
    rec: list[dict[str, list[torch.Tensor]]] = [
        {"spikes": [], "outputs": []} for _ in refs
    ]
    for t in range(T):
        inp = x[t]
        for l, ref in enumerate(refs):
            states[l], _ = ref.layer.step(weights[l], states[l], inp)
            inp = states[l].y
            rec[l]["spikes"].append(states[l].e)
            rec[l]["outputs"].append(states[l].y)
            for k, v in ref.layer.state_traces(weights[l], states[l]).items():
                rec[l].setdefault("state:" + k, []).append(v)
    traces = [
        LayerTrace(
            torch.stack(r["spikes"]), torch.stack(r["outputs"]),
            {k[6:]: torch.stack(v) for k, v in r.items() if k.startswith("state:")},
        )
        for r in rec
    ]
    last = traces[-1]
    return SimulationResult(last.spikes, last.outputs, last.states, traces)


def make_engine(model: Any, batch: int, method: str = "event") -> EventRTRL | DenseRTRL:
    """An RTRL engine for ``batch`` streams: ``"event"``, ``"dense"`` or ``"dense-live"``.

    float16 models are refused for ``"event"`` (:class:`~evrtrl.errors.UnsupportedError`): its
    lazy transforms keep factors up to 2^(+-40), outside float16's range, and the
    gradients turned NaN after 11-20 steps (docs/reliability.md); bfloat16 (float32's range)
    stays within 1-2.4x of bfloat16 BPTT's own error, float32 within 0.7-7x of float32 BPTT's.
    """
    if method == "event":
        dtype = layers_of(model)[0].layer.dtype
        if dtype == torch.float16:
            raise UnsupportedError(
                "the event engine does not support float16 parameters: its lazy transforms need "
                "float32's exponent range (float16 gradients become NaN after ~11 steps); use "
                "model.to(torch.bfloat16) or model.float() (or method='dense'/'bptt' in float16)")
        return EventRTRL(model, batch)
    if method in ("dense", "dense-live"):
        return DenseRTRL(model, batch, columns="all" if method == "dense" else "live")
    raise UnknownMethodError(
        f"unknown RTRL method {method!r}; expected one of 'event', 'dense', 'dense-live'"
        + (" ('bptt' is not an online engine; use gradients(..., method='bptt'))"
           if method == "bptt" else "")
    )


def loss_gradient(loss_fn: LossFn, y: torch.Tensor, t: int) -> torch.Tensor | None:
    """``dL_t/dy_t`` of one step's loss (None where the loss is None or constant)."""
    with torch.enable_grad():
        yl = y.detach().requires_grad_(True)
        loss = loss_fn(yl, t)
        if loss is None:
            return None
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ShapeError(
                f"loss_fn(y_t, t) must return a scalar tensor (or None), got "
                f"{type(loss).__name__}{'' if not isinstance(loss, torch.Tensor) else tuple(loss.shape)} at t={t}"
            )
        if not loss.requires_grad:
            return None
        (g,) = torch.autograd.grad(loss, yl, allow_unused=True)
    return g


def gradients(model: Any, x: torch.Tensor, loss_fn: LossFn, method: str = "event") -> Gradients:
    """Exact gradient of :math:`\\sum_t` ``loss_fn(y_t, t)`` with respect to every parameter.

    ``x``: ``(T, B, d)``; ``y_t``: the last layer's output ``(B, n)``; ``method``: one of
    :data:`METHODS`. Returns :class:`Gradients` (a dict name -> tensor shaped like the
    parameter, exactly 0 at masked entries) with the engine's statistics in ``.stats``.
    A NaN or inf gradient (a NaN loss, exploding states) raises
    :class:`~evrtrl.errors.NonFiniteError` naming the parameter (checked once, at the end).
    """
    if method not in METHODS:
        raise UnknownMethodError(f"unknown method {method!r}; expected one of {METHODS}")
    check_sequence(model, x)
    check_parameters(model)
    if method == "bptt":
        result = Gradients(*bptt_gradients(model, x, loss_fn))
    else:
        engine = make_engine(model, x.shape[1], method)
        for t in range(x.shape[0]):
            y = engine.step(x[t])
            g = loss_gradient(loss_fn, y, t)
            if g is not None:
                engine.accumulate(g)
        result = Gradients(engine.gradients(), engine.stats)
    check_finite(result.items(), "gradient of parameter", f" ({method}, {x.shape[0]} steps)")
    return result
