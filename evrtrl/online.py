r"""Online learning: follow the gradient while the streams run (Williams & Zipser 1989).

:class:`OnlineLearner` feeds a batch of streams step by step. With an RTRL engine it
holds the influence matrix and accumulates the exact gradient of
:math:`\sum_t L_t`; every ``k`` steps it hands the gradient to the optimizer, updates
the weights and carries on with the *same* influence matrix (RTRL then follows the
online gradient; with ``k >= T`` there is one update per sequence and it equals BPTT
exactly). With ``method="bptt"`` it runs truncated BPTT over windows of ``k`` steps.

Parameters outside the recurrent model (a readout inside ``loss_fn``) are passed as
``extra_parameters``: their gradient is exact from the current step alone.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from evrtrl.api import METHODS, make_engine
from evrtrl.engine import Engine, run_engine
from evrtrl.errors import ConfigError, UnknownMethodError
from evrtrl.network import check_parameters, check_sequence, layers_of

__all__ = ["OnlineLearner"]


class OnlineLearner:
    """``OnlineLearner(model, optimizer, loss_fn, k=1, method="event")``.

    ``loss_fn(y_t, t)`` returns a scalar tensor or None (no loss at that step).
    ``run(x)`` processes one batch of sequences ``(T, B, d)`` from a fresh state and
    returns the per-step losses; ``updates`` counts optimizer steps so far; ``engine`` is
    the :class:`~evrtrl.engine.Engine` of the last run and ``stats`` its statistics, one
    per run. Every method goes through the same loop (:func:`evrtrl.engine.run_engine`).
    ``engine_options``: keyword arguments of :func:`evrtrl.make_engine` (``shard``,
    ``allow_memory``).
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
    ) -> None:
        if method not in METHODS:
            raise UnknownMethodError(f"unknown method {method!r}; expected one of {METHODS}")
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"OnlineLearner: k must be a positive int, got {k!r}")
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.k, self.method = k, method
        self.extra = list(extra_parameters)
        # keyword arguments of make_engine: a column shard, allow_memory (evrtrl.shards, .memory)
        self.engine_options = dict(engine_options or {})
        self.params = {
            ref.prefix + n: p
            for ref in layers_of(model)
            for n, p in ref.layer.named_parameters(recurse=False)
        }
        self.updates = 0
        self.engine: Engine | None = None
        self.stats: list[Any] = []

    def _apply(self) -> None:
        """Hand the accumulated gradient to the optimizer, update the weights, go on."""
        assert self.engine is not None
        for name, g in self.engine.gradients().items():
            self.params[name].grad = g.to(self.params[name].dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        self.engine.zero_grad()
        self.engine.refresh()

    def run(self, x: torch.Tensor) -> list[float]:
        """Learn online on ``x`` ``(T, B, d)``; returns the loss of each step (nan if none)."""
        check_sequence(self.model, x)
        check_parameters(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        self.engine = make_engine(self.model, x.shape[1], self.method, **self.engine_options)
        losses = run_engine(self.engine, x, self.loss_fn, extra_parameters=self.extra,
                            every=self.k, on_update=self._apply)
        self.stats.append(self.engine.stats)
        return losses
