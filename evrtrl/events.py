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
    """Each layer's most recent own events: the recurrent bucket of the next step.

    The input bucket of a step is ``EventBucket.of(x_t)``; a layer's emitted bucket is the
    input bucket of the layer above in the same step and its own recurrent bucket in the
    next one.
    """

    def __init__(self, n_layers: int) -> None:
        self.own: list[EventBucket | None] = [None] * n_layers

    def emit(self, layer: int, values: torch.Tensor) -> EventBucket:
        """Store layer ``layer``'s output of this step as its bucket for the next step."""
        bucket = EventBucket.of(values)
        self.own[layer] = bucket
        return bucket

    def recurrent(self, layer: int) -> EventBucket | None:
        """Layer ``layer``'s own events of the previous step (None before the first)."""
        return self.own[layer]
