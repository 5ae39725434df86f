"""The public entry points: :func:`simulate`, :func:`gradients`, :func:`make_engine` and
:func:`relative_error`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from evrtrl.bptt import BPTT
from evrtrl.dense_engine import DenseRTRL
from evrtrl.engine import Engine, LayerLossFn, LossFn, run_engine
from evrtrl.errors import UnknownMethodError, UnsupportedError
from evrtrl.event_engine import EventRTRL
from evrtrl.events import InputSequence, check_input, step_input
from evrtrl.finite import check_finite
from evrtrl.network import Unroll, check_parameters, layers_of
from evrtrl.shards import ColumnShard
from evrtrl.stats import EngineStats

__all__ = ["simulate", "gradients", "make_engine", "Gradients", "SimulationResult", "LayerTrace",
           "METHODS", "relative_error"]

#: gradient methods: the event engine, dense RTRL (all or live columns) and BPTT
METHODS = ("event", "dense", "dense-live", "bptt")


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


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm-wise error of ``a`` relative to the reference ``b``: ``||a - b|| / ||b||`` in float64.

    Where ``b`` is exactly zero, the absolute error ``||a - b||``; ``inf`` if either holds
    NaN or inf. The one definition behind every "relative error" the library states
    (float64: event vs dense <= 1e-12, vs BPTT <= 1e-10).
    """
    a, b = a.detach().double(), b.detach().double()
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        return float("inf")
    diff, ref = float((a - b).norm()), float(b.norm())
    return diff / ref if ref > 0 else diff


class Gradients(dict):
    """``{parameter name: gradient}`` with the engine's :class:`EngineStats` as ``.stats``."""

    def __init__(self, grads: dict[str, torch.Tensor], stats: EngineStats) -> None:
        super().__init__(grads)
        self.stats = stats

    def relative_error(self, reference: dict[str, torch.Tensor]) -> dict[str, float]:
        """:func:`relative_error` of every parameter's gradient against ``reference``."""
        return {name: relative_error(g, reference[name]) for name, g in self.items()}


@torch.no_grad()
def simulate(model: Any, x: InputSequence) -> SimulationResult:
    """Run ``model`` on ``x`` of shape ``(T, B, d)``; no gradients are tracked.

    ``x``: a dense tensor or a :class:`~evrtrl.events.SparseSequence` (densified one step
    at a time)."""
    check_input(model, x)
    check_parameters(model)
    run = Unroll(model, x.shape[1])
    rec: list[dict[str, list[torch.Tensor]]] = [{"spikes": [], "outputs": []} for _ in run.refs]
    for t in range(x.shape[0]):
        run.step(step_input(x, t, sparse=False))
        for r, ref, w, s in zip(rec, run.refs, run.weights, run.states):
            r["spikes"].append(s.e)
            r["outputs"].append(s.y)
            for k, v in ref.layer.state_traces(w, s).items():
                r.setdefault("state:" + k, []).append(v)
    traces = [
        LayerTrace(
            torch.stack(r["spikes"]), torch.stack(r["outputs"]),
            {k[6:]: torch.stack(v) for k, v in r.items() if k.startswith("state:")},
        )
        for r in rec
    ]
    last = traces[-1]
    return SimulationResult(last.spikes, last.outputs, last.states, traces)


def make_engine(model: Any, batch: int, method: str = "event", *,
                shard: ColumnShard | None = None, allow_memory: bool = False) -> Engine:
    """An :class:`~evrtrl.engine.Engine` for ``batch`` streams; ``method`` is one of :data:`METHODS`.

    RTRL methods: ``shard`` tracks only one column shard (:mod:`evrtrl.shards`);
    ``allow_memory`` skips the refusal of an influence matrix above the memory available
    (:mod:`evrtrl.memory`).

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
        return EventRTRL(model, batch, shard=shard, allow_memory=allow_memory)
    if method in ("dense", "dense-live"):
        return DenseRTRL(model, batch, columns="all" if method == "dense" else "live", shard=shard,
                         allow_memory=allow_memory)
    if method == "bptt":
        if shard is not None:
            raise UnknownMethodError("column shards are for the RTRL engines, not method='bptt'")
        return BPTT(model, batch)
    raise UnknownMethodError(f"unknown method {method!r}; expected one of {METHODS}")


def gradients(model: Any, x: InputSequence, loss_fn: LossFn, method: str = "event", *,
              layer_loss: LayerLossFn | None = None,
              shard: ColumnShard | None = None, allow_memory: bool = False) -> Gradients:
    """Exact gradient of :math:`\\sum_t` ``loss_fn(y_t, t)`` with respect to every parameter.

    ``x``: ``(T, B, d)``, a dense tensor or a :class:`~evrtrl.events.SparseSequence`
    (read sparse by the event engine, densified one step at a time for dense RTRL and
    BPTT); ``y_t``: the last layer's output ``(B, n)``; ``method``: one of :data:`METHODS`.
    ``layer_loss(l, y^l_t, t)`` (optional, e.g. :class:`evrtrl.regularizers.ActivityRegularizer`)
    adds a term on the output of every layer ``l`` at every step; the gradient includes it
    exactly. Returns :class:`Gradients` (a dict name -> tensor shaped like the parameter,
    exactly 0 at masked entries) with the engine's statistics in ``.stats``.
    ``shard`` (RTRL methods): only that column shard's entries, exactly 0 elsewhere; the
    gradients of all shards of one partition sum to the unsharded gradient.
    A NaN or inf gradient (a NaN loss, exploding states) raises
    :class:`~evrtrl.errors.NonFiniteError` naming the parameter (checked once, at the end).
    """
    if method not in METHODS:
        raise UnknownMethodError(f"unknown method {method!r}; expected one of {METHODS}")
    check_input(model, x)
    check_parameters(model)
    engine = make_engine(model, x.shape[1], method, shard=shard, allow_memory=allow_memory)
    run_engine(engine, x, loss_fn, layer_loss=layer_loss)
    result = Gradients(engine.gradients(), engine.stats)
    check_finite(result.items(), "gradient of parameter", f" ({method}, {x.shape[0]} steps)")
    return result
