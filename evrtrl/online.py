r"""Online learning: follow the gradient while the streams run (Williams & Zipser 1989).

:class:`OnlineLearner` feeds a batch of streams step by step. With an RTRL engine it
holds the influence matrix and accumulates the exact gradient of
:math:`\sum_t L_t`; every ``k`` steps it hands the gradient to the optimizer, updates
the weights and carries on with the *same* influence matrix (RTRL then follows the
online gradient; with ``k >= T`` there is one update per sequence and it equals BPTT
exactly). With ``method="bptt"`` it runs truncated BPTT over windows of ``k`` steps.

Parameters outside the recurrent model (a readout inside ``loss_fn``) are passed as
``extra_parameters``: their gradient is exact from the current step alone.
``layer_loss(l, y^l_t, t)`` adds a per-layer term on every layer's output (the activity
regulariser, :mod:`evrtrl.regularizers`), included exactly in every method.

``run(x, carry=True)`` continues the previous call's streams (same network state and
influence matrix): one long stream can be fed in chunks, with memory independent of its
length (examples/long_stream.py).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from evrtrl.api import METHODS, accumulate_layer_loss, make_engine
from evrtrl.errors import ConfigError, UnknownMethodError
from evrtrl.network import check_parameters, check_sequence, layers_of

__all__ = ["OnlineLearner"]


class OnlineLearner:
    """``OnlineLearner(model, optimizer, loss_fn, k=1, method="event")``.

    ``loss_fn(y_t, t)`` returns a scalar tensor or None (no loss at that step).
    ``run(x)`` processes one batch of sequences ``(T, B, d)`` from a fresh state and
    returns the per-step losses of ``loss_fn`` (``layer_loss`` terms are in
    ``layer_losses``, one sum over layers per step); ``updates`` counts optimizer steps
    so far. With the event engine, ``active`` holds the last run's per-sequence active-set
    sizes ``|K_{t,b}|`` as a ``(T, L, B)`` tensor (for beta per sequence and layer).
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
        layer_loss: Callable[[int, torch.Tensor, int], Any] | None = None,
    ) -> None:
        if method not in METHODS:
            raise UnknownMethodError(f"unknown method {method!r}; expected one of {METHODS}")
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"OnlineLearner: k must be a positive int, got {k!r}")
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.k, self.method = k, method
        self.layer_loss = layer_loss
        self.extra = list(extra_parameters)
        self.params = {
            ref.prefix + n: p
            for ref in layers_of(model)
            for n, p in ref.layer.named_parameters(recurse=False)
        }
        self.updates = 0
        self.engine: Any = None
        self.stats: list[Any] = []
        self.layer_losses: list[float] = []
        self.active: torch.Tensor | None = None
        self._t = 0  # steps of the current stream (carried over by run(x, carry=True))
        self._bptt_states: list[Any] | None = None

    # ----------------------------------------------------------------- helpers
    def _apply(self) -> None:
        """Hand the accumulated gradient to the optimizer and update the weights."""
        if self.method != "bptt":
            for name, g in self.engine.gradients().items():
                self.params[name].grad = g.to(self.params[name].dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        if self.method != "bptt":
            self.engine.zero_grad()
            self.engine.refresh()

    # --------------------------------------------------------------------- run
    def run(self, x: torch.Tensor, *, carry: bool = False) -> list[float]:
        """Learn online on ``x`` ``(T, B, d)``; returns the loss of each step (nan if none).

        ``carry=True`` continues the streams of the previous call (state, influence
        matrix and step counter ``t``) instead of starting from a fresh state.
        """
        check_sequence(self.model, x)
        check_parameters(self.model)
        T, B = x.shape[:2]
        losses: list[float] = []
        self.layer_losses = []
        self.optimizer.zero_grad(set_to_none=True)
        if not carry:
            self._t, self.engine, self._bptt_states = 0, None, None
        if self.method == "bptt":
            return self._run_bptt(x)
        fresh = self.engine is None
        if fresh:
            self.engine = make_engine(self.model, B, self.method)
        active = []
        pending = 0
        for i in range(T):
            t = self._t + i
            y = self.engine.step(x[i])
            if getattr(self.engine, "seq_active", None) is not None:
                active.append(torch.stack(self.engine.seq_active))
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
            if self.layer_loss is not None:
                self.layer_losses.append(self._layer_loss_value(t))
                accumulate_layer_loss(self.engine, self.layer_loss, t)
            losses.append(float(loss.detach()) if loss is not None else float("nan"))
            pending += 1
            if pending == self.k:
                self._apply()
                pending = 0
        if pending:
            self._apply()
        self._t += T
        self.active = torch.stack(active) if active else None
        if fresh:
            self.stats.append(self.engine.stats)
        return losses

    @torch.no_grad()
    def _layer_loss_value(self, t: int) -> float:
        total = 0.0
        for l, state in enumerate(self.engine.states):
            v = self.layer_loss(l, state.y, t)
            total += float(v) if v is not None else 0.0
        return total

    def _run_bptt(self, x: torch.Tensor) -> list[float]:
        refs = layers_of(self.model)
        T, B = x.shape[:2]
        states = self._bptt_states or [r.layer.initial_state(B) for r in refs]
        losses: list[float] = []
        total = None
        weights = [r.layer.weights() for r in refs]
        pending = 0
        for i in range(T):
            t = self._t + i
            inp = x[i]
            reg_t = 0.0
            for l, ref in enumerate(refs):
                states[l], _ = ref.layer.step(weights[l], states[l], inp)
                inp = states[l].y
                reg = self.layer_loss(l, inp, t) if self.layer_loss is not None else None
                if reg is not None:
                    total = reg if total is None else total + reg
                    reg_t += float(reg.detach())
            if self.layer_loss is not None:
                self.layer_losses.append(reg_t)
            loss = self.loss_fn(inp, t)
            if loss is not None:
                total = loss if total is None else total + loss
            losses.append(float(loss.detach()) if loss is not None else float("nan"))
            pending += 1
            if pending == self.k or i == T - 1:
                if total is not None and total.requires_grad:
                    total.backward()
                self._apply()
                total, pending = None, 0
                states = [type(s)(*(v.detach() for v in s)) for s in states]
                weights = [r.layer.weights() for r in refs]
        self._t += T
        self._bptt_states = states
        return losses
