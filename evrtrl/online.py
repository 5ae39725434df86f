r"""Online learning: follow the gradient while the streams run (Williams & Zipser 1989).

:class:`OnlineLearner` feeds a batch of streams step by step. With an RTRL engine it
holds the influence matrix and accumulates the exact gradient of
:math:`\sum_t L_t`; every ``k`` steps it hands the gradient to the optimizer, updates
the weights and carries on with the *same* influence matrix (RTRL then follows the
online gradient; with ``k >= T`` there is one update per sequence and it equals BPTT
exactly). With ``method="bptt"`` it runs truncated BPTT over windows of ``k`` steps.

Parameters outside the recurrent model (a readout inside ``loss_fn``) are passed as
``extra_parameters``: their gradient is exact from the current step alone.

Finite numbers or a named error: at every update (not every step) the gradients are checked
before the optimizer sees them, and the parameters after it stepped; NaN or inf raises
:class:`~evrtrl.errors.NonFiniteError` naming the parameter, the update and the step.
With an optimizer that sums gradients over processes (``all_reduce_gradients()``, as
:class:`evrtrl.training.distributed.AllReduceOptimizer`), the check runs on the summed
gradients, so every process raises the same error.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from evrtrl.api import METHODS, make_engine
from evrtrl.engine import Engine, LayerLossFn, run_engine
from evrtrl.errors import ConfigError, UnknownMethodError
from evrtrl.events import InputSequence, check_input
from evrtrl.finite import check_finite
from evrtrl.network import check_parameters, layers_of

__all__ = ["OnlineLearner"]


class OnlineLearner:
    """``OnlineLearner(model, optimizer, loss_fn, k=1, method="event")``.

    ``loss_fn(y_t, t)`` returns a scalar tensor or None (no loss at that step);
    ``layer_loss(l, y^l_t, t)`` (optional, e.g. :class:`evrtrl.regularizers.ActivityRegularizer`)
    adds a term on the output of every layer. ``run(x)`` processes one batch of sequences
    ``(T, B, d)`` from a fresh state (``run(x, carry=True)`` continues the streams of the
    previous call: state, influence matrix and step counter) and returns the per-step
    losses of ``loss_fn``; ``layer_losses`` holds the per-step sum of the layer terms of
    the last run; with the event engine ``active`` holds the last run's per-sequence
    active-set sizes ``|K^l_{t,b}|`` as a ``(T, L, B)`` tensor (beta per sequence and
    layer). ``updates`` counts optimizer steps so far; ``engine`` is the
    :class:`~evrtrl.engine.Engine` of the last run and ``stats`` its statistics, one per
    fresh run. Every method goes through the same loop (:func:`evrtrl.engine.run_engine`).
    ``engine_options``: keyword arguments of :func:`evrtrl.make_engine` (``shard``,
    ``allow_memory``). ``reuse``: the engine of an earlier learner on the same model, method
    and options; the first fresh run restarts it (its ``reset()``) instead of allocating a
    new one where it has that method and the batch size fits (the event engine keeps its
    influence tensors). A fresh run of this learner restarts its own engine the same way.
    """

    def __init__(
        self,
        model: Any,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[torch.Tensor, int], Any],
        *,
        k: int = 1,
        method: str = "event",
        extra_parameters: Iterable[torch.nn.Parameter] = (),
        engine_options: dict[str, Any] | None = None,
        layer_loss: LayerLossFn | None = None,
        reuse: Engine | None = None,
    ) -> None:
        if method not in METHODS:
            raise UnknownMethodError(f"unknown method {method!r}; expected one of {METHODS}")
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"OnlineLearner: k must be a positive int, got {k!r}")
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.k, self.method = k, method
        self.extra = list(extra_parameters)
        self.layer_loss = layer_loss
        # keyword arguments of make_engine: a column shard, allow_memory (evrtrl.shards, .memory)
        self.engine_options = dict(engine_options or {})
        self.params = {
            ref.prefix + n: p
            for ref in layers_of(model)
            for n, p in ref.layer.named_parameters(recurse=False)
        }
        self.updates = 0
        self._t = 0
        self._t_last = 0  # the last step run (named by the finite check)
        self.active: torch.Tensor | None = None
        self.layer_losses: list[float] = []
        self.engine: Engine | None = None
        self._reuse = reuse
        self.stats: list[Any] = []

    def _apply(self) -> None:
        """Hand the accumulated gradient to the optimizer, update the weights, go on.

        Gradients (after an all-reduce, where the optimizer does one) and the updated
        weights are checked once per update (:class:`~evrtrl.errors.NonFiniteError` naming
        the parameter, the update and the step)."""
        assert self.engine is not None
        for name, g in self.engine.gradients().items():
            self.params[name].grad = g.to(self.params[name].dtype)
        reduce = getattr(self.optimizer, "all_reduce_gradients", None)
        if reduce is not None:
            reduce()
        named = list(self.params.items()) + [(f"extra_parameters[{i}]", p) for i, p in enumerate(self.extra)]
        when = f" at update {self.updates + 1} (after step t={self._t_last})"
        check_finite(((n, p.grad) for n, p in named), "gradient of parameter", when + "; weights not updated")
        self.optimizer.step()
        check_finite(named, "parameter", when + " after the optimizer step (learning rate too large?)")
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        self.engine.zero_grad()
        self.engine.refresh()

    def _restart(self, batch: int) -> Engine | None:
        """The engine to reuse for a fresh run of ``batch`` streams, reset; None: build one."""
        prior = self.engine if self.engine is not None else self._reuse
        self._reuse = None
        reset = getattr(prior, "reset", None)
        if prior is None or reset is None or prior.name != self.method or \
                getattr(prior, "B", None) != batch:
            return None
        if [r.layer for r in getattr(prior, "refs", ())] != [r.layer for r in layers_of(self.model)]:
            return None
        reset()
        return prior

    def run(self, x: InputSequence, *, carry: bool = False) -> list[float]:
        """Learn online on ``x`` ``(T, B, d)``; returns the loss of each step (nan if none).

        ``x``: a dense tensor or a :class:`~evrtrl.events.SparseSequence` (read sparse by the
        event engine, densified one step at a time for the other methods). ``carry=True``
        continues the streams of the previous call (state, influence matrix and step counter
        ``t``) instead of starting from a fresh state.
        """
        check_input(self.model, x)
        check_parameters(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        fresh = not carry or self.engine is None
        engine: Engine
        if fresh or self.engine is None:
            engine = self._restart(x.shape[1]) or \
                make_engine(self.model, x.shape[1], self.method, **self.engine_options)
            self.engine, self._t = engine, 0
        else:
            engine = self.engine
        seq_active = getattr(type(engine), "seq_active", None)  # the event engine's property
        active: list[torch.Tensor] = []
        terms: list[Any] = []

        def on_step(t: int, layer_term: Any) -> None:
            self._t_last = t
            if seq_active is not None:
                active.append(torch.stack(seq_active.fget(engine)))
            terms.append(layer_term)

        losses = run_engine(engine, x, self.loss_fn, extra_parameters=self.extra,
                            every=self.k, on_update=self._apply, layer_loss=self.layer_loss,
                            t0=self._t, on_step=on_step)
        self._t += x.shape[0]
        self.active = torch.stack(active) if active else None
        self.layer_losses = [float(v) if v is not None else 0.0 for v in terms] \
            if self.layer_loss is not None else []
        if fresh:
            self.stats.append(engine.stats)
        return losses
