r"""Column shards: which influence columns one engine tracks.

The columns of the influence matrix evolve independently,

.. math:: M_t[:, c] = J_t M_{t-1}[:, c] + \bar M_t[:, c],

so an engine may track any subset of them, given the same forward trajectory, and return
exactly the gradient entries of that subset. A :class:`ColumnShard` names one part of a
partition of every layer's columns into ``count`` parts; engines built with shards
``0 .. count-1`` of one partition track disjoint column sets whose union is all of them,
so the sum of their gradients is the unsharded gradient (each entry comes from exactly one
shard; the others hold exactly zero there).

A shard is *not* a pruning mask: the forward pass still uses every live weight; only the
influence columns of entries outside the shard are not kept by this engine.

Partitions (applied per layer, to the layer's candidate columns in parameter order: the
live entries for the event and dense-live engines, every entry for dense):

``"strided"`` (default)
    shard ``k`` takes candidates ``k, k + P, k + 2P, ...``: balanced by count (sizes differ
    by at most one) and every shard gets the same mix of parameter kinds (input weights,
    recurrent weights, per-unit parameters), hence of columns born early and late. Measured
    (``python -m evrtrl.training.shard_bench``, docs/training.md): the per-process peak
    is within 1.2 % of (unsharded - forward) / 2 + forward for P = 2.
``"contiguous"``
    shard ``k`` takes the candidates ``[floor(k c / P), floor((k + 1) c / P))`` of the
    ``c`` candidates: contiguous blocks balanced by count. Equal influence memory per
    process, but the shard holding the input weights (born at the first input event) carries
    more born columns, so its transient rows and peak run ~20 % above the other's (same
    benchmark): every process must be sized for that one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from evrtrl.errors import ConfigError, UnknownMethodError

__all__ = ["ColumnShard", "PARTITIONS", "shard_size"]

#: supported partitions (module docstring)
PARTITIONS = ("contiguous", "strided")


@dataclass(frozen=True)
class ColumnShard:
    """Part ``index`` of ``count`` of each layer's influence columns (module docstring)."""

    index: int
    count: int
    partition: str = "strided"

    def __post_init__(self) -> None:
        for name in ("index", "count"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(f"ColumnShard.{name} must be an int, got {v!r}")
        if self.count < 1 or not (0 <= self.index < self.count):
            raise ConfigError(
                f"ColumnShard: need 0 <= index < count, got index={self.index}, count={self.count}"
            )
        if self.partition not in PARTITIONS:
            raise UnknownMethodError(
                f"ColumnShard.partition {self.partition!r}: expected one of {PARTITIONS}"
            )

    def take(self, columns: torch.Tensor) -> torch.Tensor:
        """This shard's part of ``columns`` (1-D: a layer's candidate columns, in order)."""
        c = columns.numel()
        if self.partition == "strided":
            return columns[self.index :: self.count]
        return columns[(c * self.index) // self.count : (c * (self.index + 1)) // self.count]

    @staticmethod
    def all(count: int, partition: str = "strided") -> list["ColumnShard"]:
        """Every shard of one partition (their columns are disjoint and cover all)."""
        return [ColumnShard(k, count, partition) for k in range(count)]


def shard_size(candidates: int, shard: ColumnShard | None) -> int:
    """Number of a layer's ``candidates`` columns that ``shard`` takes (``None``: all)."""
    if shard is None:
        return candidates
    k, P = shard.index, shard.count
    if shard.partition == "strided":
        return max(0, (candidates - k + P - 1) // P)
    return (candidates * (k + 1)) // P - (candidates * k) // P
