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
from evrtrl.errors import ConfigError, UnknownMethodError
from evrtrl.finite import check_finite
from evrtrl.network import check_parameters, check_sequence, layers_of

__all__ = ["OnlineLearner"]


class OnlineLearner:
    """``OnlineLearner(model, optimizer, loss_fn, k=1, method="event")``.

    ``loss_fn(y_t, t)`` returns a scalar tensor or None (no loss at that step).
    ``run(x)`` processes one batch of sequences ``(T, B, d)`` from a fresh state and
    returns the per-step losses; ``updates`` counts optimizer steps so far.
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
    ) -> None:
        if method not in METHODS:
            raise UnknownMethodError(f"unknown method {method!r}; expected one of {METHODS}")
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"OnlineLearner: k must be a positive int, got {k!r}")
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.k, self.method = k, method
        self.extra = list(extra_parameters)
        self.params = {
            ref.prefix + n: p
            for ref in layers_of(model)
            for n, p in ref.layer.named_parameters(recurse=False)
        }
        self.updates = 0
        self.engine: Any = None
        self.stats: list[Any] = []

    # ----------------------------------------------------------------- helpers
    def _apply(self, t: int) -> None:
        """Hand the accumulated gradient to the optimizer and update the weights (after step ``t``)."""
        if self.method != "bptt":
            for name, g in self.engine.gradients().items():
                self.params[name].grad = g.to(self.params[name].dtype)
        reduce = getattr(self.optimizer, "all_reduce_gradients", None)
        if reduce is not None:
            reduce()
        named = list(self.params.items()) + [(f"extra_parameters[{i}]", p) for i, p in enumerate(self.extra)]
        when = f" at update {self.updates + 1} (after step t={t})"
        check_finite(((n, p.grad) for n, p in named), "gradient of parameter", when + "; weights not updated")
        self.optimizer.step()
        check_finite(named, "parameter", when + " after the optimizer step (learning rate too large?)")
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        if self.method != "bptt":
            self.engine.zero_grad()
            self.engine.refresh()

    # --------------------------------------------------------------------- run
    def run(self, x: torch.Tensor) -> list[float]:
        """Learn online on ``x`` ``(T, B, d)``; returns the loss of each step (nan if none)."""
        check_sequence(self.model, x)
        check_parameters(self.model)
        T, B = x.shape[:2]
        losses: list[float] = []
        self.optimizer.zero_grad(set_to_none=True)
        if self.method == "bptt":
            return self._run_bptt(x)
        self.engine = make_engine(self.model, B, self.method)
        pending = 0
        for t in range(T):
            y = self.engine.step(x[t])
            with torch.enable_grad():
                yl = y.detach().requires_grad_(True)
                loss = self.loss_fn(yl, t)
                if loss is not None and loss.requires_grad:
                    grads = torch.autograd.grad(loss, [yl] + self.extra, allow_unused=True)
                    if grads[0] is not None:
                        self.engine.accumulate(grads[0])
                    for p, g in zip(self.extra, grads[1:]):
                        if g is not None:
                            p.grad = g if p.grad is None else p.grad + g
            losses.append(float(loss.detach()) if loss is not None else float("nan"))
            pending += 1
            if pending == self.k:
                self._apply(t)
                pending = 0
        if pending:
            self._apply(T - 1)
        self.stats.append(self.engine.stats)
        return losses

    def _run_bptt(self, x: torch.Tensor) -> list[float]:
        refs = layers_of(self.model)
        T, B = x.shape[:2]
        states = [r.layer.initial_state(B) for r in refs]
        losses: list[float] = []
        total = None
        weights = [r.layer.weights() for r in refs]
        pending = 0
        for t in range(T):
            inp = x[t]
            for l, ref in enumerate(refs):
                states[l], _ = ref.layer.step(weights[l], states[l], inp)
                inp = states[l].y
            loss = self.loss_fn(inp, t)
            if loss is not None:
                total = loss if total is None else total + loss
            losses.append(float(loss.detach()) if loss is not None else float("nan"))
            pending += 1
            if pending == self.k or t == T - 1:
                if total is not None and total.requires_grad:
                    total.backward()
                self._apply(t)
                total, pending = None, 0
                states = [type(s)(*(v.detach() for v in s)) for s in states]
                weights = [r.layer.weights() for r in refs]
        return losses
