"""The event queue: per-step buckets of input events and of the network's own events.

A bucket lists the channels (or units) that carry a non-zero value at a step, in any
sequence of the batch, with the batch's values. The event engine is driven by buckets:
one step consumes the input bucket for ``t`` and each layer's own bucket from ``t-1``
(its recurrent events), and produces the buckets for ``t+1``. No work is done for a
channel or unit outside them.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["EventBucket", "EventQueue"]


class EventBucket(NamedTuple):
    """Channels with a non-zero value (``index``) and the step's values ``(B, d)``."""

    index: torch.Tensor
    values: torch.Tensor

    @staticmethod
    def of(values: torch.Tensor) -> "EventBucket":
        return EventBucket((values != 0).any(0).nonzero(as_tuple=True)[0], values)


class EventQueue:
    """Buckets of one run: the input stream and each layer's most recent own events.

    ``x`` is a dense ``(T, B, d)`` tensor (or any object with ``__getitem__`` over steps
    returning ``(B, d)``); the active channels of all steps are found in one pass.
    """

    def __init__(self, n_layers: int) -> None:
        self.own: list[EventBucket | None] = [None] * n_layers
        self._x: torch.Tensor | None = None
        self._active: torch.Tensor | None = None

    def feed(self, x: torch.Tensor) -> None:
        """Queue a whole input sequence ``(T, B, d)``."""
        self._x = x
        self._active = (x != 0).any(1)  # (T, d)

    def input(self, t: int) -> EventBucket:
        """The input bucket of step ``t`` of the queued sequence."""
        assert self._x is not None and self._active is not None
        return EventBucket(self._active[t].nonzero(as_tuple=True)[0], self._x[t])

    def emit(self, layer: int, values: torch.Tensor) -> EventBucket:
        """Store layer ``layer``'s output of this step as its bucket for the next step."""
        bucket = EventBucket.of(values)
        self.own[layer] = bucket
        return bucket

    def recurrent(self, layer: int) -> EventBucket | None:
        """Layer ``layer``'s own events of the previous step (None before the first)."""
        return self.own[layer]
