"""The public entry points: :func:`simulate`, :func:`gradients` and :func:`make_engine`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from evrtrl.bptt import bptt_gradients
from evrtrl.dense_engine import DenseRTRL
from evrtrl.errors import ShapeError, UnknownMethodError
from evrtrl.event_engine import EventRTRL
from evrtrl.network import check_parameters, check_sequence, layers_of
from evrtrl.stats import EngineStats

__all__ = ["simulate", "gradients", "make_engine", "Gradients", "SimulationResult", "LayerTrace",
           "METHODS", "accumulate_layer_loss"]

#: gradient methods: the event engine, dense RTRL (all or live columns) and BPTT
METHODS = ("event", "dense", "dense-live", "bptt")

LossFn = Callable[[torch.Tensor, int], Any]
#: ``layer_loss(l, y^l_t, t)``: a per-layer term on the output of every layer (evrtrl.regularizers)
LayerLossFn = Callable[[int, torch.Tensor, int], Any]


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
    """An RTRL engine for ``batch`` streams: ``"event"``, ``"dense"`` or ``"dense-live"``."""
    if method == "event":
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


def accumulate_layer_loss(engine: Any, layer_loss: LayerLossFn, t: int) -> None:
    """Hand ``d layer_loss(l, y^l_t, t)/dy^l_t`` of every layer ``l`` to an RTRL engine."""
    for l, state in enumerate(engine.states):
        g = loss_gradient(lambda y, t, l=l: layer_loss(l, y, t), state.y, t)
        if g is not None:
            engine.accumulate(g, layer=l)


def gradients(model: Any, x: torch.Tensor, loss_fn: LossFn, method: str = "event", *,
              layer_loss: LayerLossFn | None = None) -> Gradients:
    """Exact gradient of :math:`\\sum_t` ``loss_fn(y_t, t)`` with respect to every parameter.

    ``x``: ``(T, B, d)``; ``y_t``: the last layer's output ``(B, n)``; ``method``: one of
    :data:`METHODS`. ``layer_loss(l, y^l_t, t)`` (optional, e.g.
    :class:`evrtrl.regularizers.ActivityRegularizer`) adds a term on the output of every
    layer ``l`` at every step; the gradient includes it exactly. Returns
    :class:`Gradients` (a dict name -> tensor shaped like the parameter, exactly 0 at
    masked entries) with the engine's statistics in ``.stats``.
    """
    if method not in METHODS:
        raise UnknownMethodError(f"unknown method {method!r}; expected one of {METHODS}")
    check_sequence(model, x)
    check_parameters(model)
    if method == "bptt":
        return Gradients(*bptt_gradients(model, x, loss_fn, layer_loss=layer_loss))
    engine = make_engine(model, x.shape[1], method)
    for t in range(x.shape[0]):
        y = engine.step(x[t])
        g = loss_gradient(loss_fn, y, t)
        if g is not None:
            engine.accumulate(g)
        if layer_loss is not None:
            accumulate_layer_loss(engine, layer_loss, t)
    return Gradients(engine.gradients(), engine.stats)
