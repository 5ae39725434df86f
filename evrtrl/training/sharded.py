r"""Column-sharded exact RTRL across processes, combinable with data parallelism.

The influence matrix is split by parameter columns (:mod:`evrtrl.shards`): on a grid of
``data x columns`` processes, process ``rank = d * columns + c`` takes the ``d``-th data
shard of every global batch and tracks column shard ``c`` of every layer. Columns evolve
independently given the forward trajectory, so

* **forward: replicated.** Every process runs the whole forward pass (cell steps and local
  Jacobians, ``O(B n^2)`` per step) and needs no message per step. Splitting it by units
  would need an all-gather per step and layer not only of ``y_t`` but of the local
  Jacobian pieces every column update reads (``phi``, ``D``, ``G`` for all rows), and
  measured on this machine the whole forward pass costs less than one such collective
  (``benchmarks/shard_bench.py``; docs/training.md, "Sharded training").
* **influence: sharded.** Each process holds ``1/columns`` of every layer's columns
  (``M``: ``B/data x n m x p/columns``) and produces exactly its entries of the gradient;
  no influence entry and no gradient of the recurrent parameters is ever reduced over the
  column axis (the other entries of its gradient are exactly zero).
* **update** (``exchange="weights"``, the default): the gradients are summed over the data
  axis (one all-reduce within each data group, as plain data parallelism does); every
  process then steps its optimizer and the owners' updated weights are **all-gathered**
  within the column group (``p_total`` values per update). The readout (outside the
  recurrent model) sees the same replicated outputs in a column group and steps
  identically everywhere. The optimizer must be element-wise (SGD, Adam, AdamW,
  RMSprop, ...): a process's optimizer state is exact for the entries it owns;
  :meth:`ShardedOptimizer.sync_state` gathers the owners' state before a checkpoint.
  ``exchange="gradients"``: one all-reduce of the gradient over the whole grid (the column
  shards are disjoint, so the sum assembles them; the readout's gradient is contributed
  by column rank 0 only) and a replicated optimizer step: any optimizer, twice the bytes
  of the all-gather on a ring.

Launch with ``torchrun`` and ``evrtrl train --shard-columns C`` (``WORLD_SIZE`` must be a
multiple of ``C``), or from Python with :func:`evrtrl.training.distributed.spawn_train` and
``TrainConfig(shard_columns=C)``. Custom loops use :func:`setup_grid`, the grid's
:meth:`~ShardGrid.engine_options` for :class:`evrtrl.OnlineLearner` and
:meth:`~ShardGrid.wrap_optimizer`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from evrtrl.errors import ConfigError, UnknownMethodError
from evrtrl.influence import ColumnBlock
from evrtrl.network import layers_of
from evrtrl.shards import ColumnShard
from evrtrl.training import distributed as ddp

__all__ = ["ShardGrid", "setup_grid", "ColumnOwnership", "ShardedOptimizer", "CommLog",
           "EXCHANGES"]

#: how a sharded update reaches every process (module docstring)
EXCHANGES = ("weights", "gradients")


@dataclass
class CommLog:
    """Measured collectives of one process: calls, payload bytes sent and received (the
    sizes of the tensors handed to and returned by torch.distributed) and seconds."""

    calls: dict[str, int] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, kind: str, sent: int, received: int, seconds: float) -> None:
        self.calls[kind] = self.calls.get(kind, 0) + 1
        self.sent[kind] = self.sent.get(kind, 0) + int(sent)
        self.received[kind] = self.received.get(kind, 0) + int(received)
        self.seconds[kind] = self.seconds.get(kind, 0.0) + float(seconds)

    def summary(self) -> dict[str, Any]:
        return {"calls": dict(self.calls), "sent_bytes": dict(self.sent),
                "received_bytes": dict(self.received), "seconds": dict(self.seconds)}


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class ColumnOwnership:
    """Which column rank owns which entries of the model's flat parameter vector.

    The flat vector concatenates every layer's parameters (``layers_of`` order, each
    layer's ``named_parameters`` order). Rank ``c`` owns the entries whose influence
    columns :class:`~evrtrl.shards.ColumnShard` ``(c, columns, partition)`` gives it: the
    live entries (event, dense-live) or every entry (dense). Entries nobody owns (pruned
    ones under a live partition) get a zero gradient everywhere and stay identical.
    """

    def __init__(self, model: Any, columns: int, method: str = "event",
                 partition: str = "strided") -> None:
        refs = layers_of(model)
        self.params = [p for r in refs for _, p in r.layer.named_parameters(recurse=False)]
        self.numel = sum(p.numel() for p in self.params)
        dev = self.params[0].device
        owned: list[list[torch.Tensor]] = [[] for _ in range(columns)]
        base = 0
        for r in refs:
            blk = ColumnBlock(r.layer, r.prefix)
            cand = blk.natural_columns(live_only=method != "dense")
            for c, s in enumerate(ColumnShard.all(columns, partition)):
                owned[c].append(base + s.take(cand))
            base += blk.p_total
        self.owned = [torch.cat(o) if o else torch.zeros(0, dtype=torch.long, device=dev)
                      for o in owned]
        self.width = max(o.numel() for o in self.owned)

    def flat(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.detach().reshape(-1) for t in tensors])

    def unflat(self, flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
        o = 0
        for t in tensors:
            t.copy_(flat[o:o + t.numel()].view_as(t))
            o += t.numel()

    def gather(self, flat: torch.Tensor, rank: int, group: Any, log: CommLog | None,
               kind: str = "all_gather") -> torch.Tensor:
        """Every owner's entries of ``flat`` (one padded all_gather within ``group``)."""
        mine = flat.new_zeros(self.width)
        mine[: self.owned[rank].numel()] = flat[self.owned[rank]]
        parts = [torch.empty_like(mine) for _ in self.owned]
        t0 = time.perf_counter()
        ddp.collective(lambda: torch.distributed.all_gather(parts, mine, group=group, async_op=True),
                       f"the {kind}")
        if log is not None:
            log.add(kind, _nbytes(mine), _nbytes(mine) * (len(parts) - 1),
                    time.perf_counter() - t0)
        out = flat.clone()
        for idx, part in zip(self.owned, parts):
            out[idx] = part[: idx.numel()]
        return out


@dataclass
class ShardGrid:
    """A ``data x columns`` process grid and its torch.distributed groups.

    ``rank = data_rank * columns + column_rank``: the processes of one column group (which
    all-gather weights every update) are consecutive ranks, i.e. on one node under torchrun.
    """

    data: int
    columns: int
    rank: int = 0
    partition: str = "strided"
    data_group: Any = None  # processes with this column rank (None: all, or alone)
    column_group: Any = None  # processes with this data rank
    log: CommLog = field(default_factory=CommLog)

    @property
    def data_rank(self) -> int:
        return self.rank // self.columns

    @property
    def column_rank(self) -> int:
        return self.rank % self.columns

    @property
    def shard(self) -> ColumnShard | None:
        """This process's column shard (None without column sharding)."""
        return ColumnShard(self.column_rank, self.columns, self.partition) if self.columns > 1 else None

    def data_shard(self, indices: Sequence[int]) -> list[int]:
        """This process's contiguous part of a global batch (split over the data axis)."""
        return ddp.shard(indices, self.data_rank, self.data)

    def engine_options(self, allow_memory: bool = False) -> dict[str, Any]:
        """Keyword arguments for :func:`evrtrl.make_engine` / ``OnlineLearner(engine_options=)``."""
        return {"shard": self.shard, "allow_memory": allow_memory}

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer, model: Any, method: str = "event",
                       exchange: str = "weights") -> Any:
        """The optimizer this grid needs: plain (1 process), data-parallel all-reduce
        (``columns == 1``) or :class:`ShardedOptimizer`."""
        if self.data * self.columns == 1:
            return optimizer
        if self.columns == 1:
            return ddp.AllReduceOptimizer(optimizer)
        return ShardedOptimizer(optimizer, model, self, method=method, exchange=exchange)


def setup_grid(columns: int = 1, partition: str = "strided") -> ShardGrid:
    """The grid of the initialised default group (collective: every process calls it).

    Raises :class:`ConfigError` unless the world size is a multiple of ``columns``.
    """
    if not isinstance(columns, int) or isinstance(columns, bool) or columns < 1:
        raise ConfigError(f"--shard-columns must be a positive int, got {columns!r}")
    ColumnShard(0, columns, partition)  # validates the partition name
    rank, world = ddp.rank_and_world()
    if world % columns:
        raise ConfigError(
            f"--shard-columns {columns} needs a multiple of {columns} processes (the grid is "
            f"data x columns), got WORLD_SIZE {world}; launch with torchrun "
            f"--nproc_per_node={columns} (docs/training.md)"
        )
    grid = ShardGrid(world // columns, columns, rank, partition)
    if columns > 1 and grid.data > 1:
        dist = torch.distributed
        # every process creates every group, in the same order (torch.distributed contract)
        for d in range(grid.data):
            g = dist.new_group([d * columns + c for c in range(columns)])
            if d == grid.data_rank:
                grid.column_group = g
        for c in range(columns):
            g = dist.new_group([d * columns + c for d in range(grid.data)])
            if c == grid.column_rank:
                grid.data_group = g
    elif columns > 1:  # one data rank: the column group is everybody; no data group
        grid.data_group = _ALONE
    return grid


#: marks a data group of this process alone (no collective needed)
_ALONE = "this process alone"


def reduce_metrics(grid: ShardGrid, values: Sequence[float]) -> list[float]:
    """Sum per-process figures over the data axis only (column replicas hold the same)."""
    if grid.data_group is _ALONE:
        return [float(v) for v in values]
    return ddp.all_reduce_sum(values, group=grid.data_group)


def sum_over_columns(grid: ShardGrid, values: Sequence[float]) -> list[float]:
    """Sum per-process figures over the column axis (work that the shards split)."""
    if grid.columns == 1:
        return [float(v) for v in values]
    return ddp.all_reduce_sum(values, group=grid.column_group)


class ShardedOptimizer(ddp.OptimizerWrapper):
    """Wraps an element-wise optimizer for a column-sharded grid (module docstring).

    ``step()``: (1) gradients summed over the data axis, (2) the local optimizer step,
    (3) the recurrent parameters' owned entries all-gathered in the column group
    (``exchange="weights"``); or one all-reduce over all processes and a replicated step
    (``exchange="gradients"``). Collectives are counted in ``grid.log``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: Any, grid: ShardGrid, *,
                 method: str = "event", exchange: str = "weights") -> None:
        if exchange not in EXCHANGES:
            raise UnknownMethodError(f"exchange {exchange!r}: expected one of {EXCHANGES}")
        self.optimizer, self.grid, self.exchange = optimizer, grid, exchange
        self.own = ColumnOwnership(model, grid.columns, method, grid.partition)
        recurrent = {id(p) for p in self.own.params}
        self.extra = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in recurrent]

    def _reduce(self, group: Any, kind: str) -> None:
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        red = ddp.AllReduceOptimizer(self.optimizer, group=group)
        t0 = time.perf_counter()
        red.all_reduce_gradients()
        nbytes = 8 * (sum(p.numel() for p in params) + len(params))
        self.grid.log.add(kind, nbytes, nbytes, time.perf_counter() - t0)

    @torch.no_grad()
    def all_reduce_gradients(self) -> None:
        """Step (1) now, once until the next ``step``/``zero_grad``: the gradients summed over
        the data axis (``exchange="weights"``) or over all processes (``"gradients"``), so
        the learner's finite check sees what the optimizer will see."""
        if self._reduced:
            return
        self._reduced = True
        g = self.grid
        if self.exchange == "gradients":
            if g.column_rank != 0:  # the readout's gradient is replicated over the columns
                for p in self.extra:
                    if p.grad is not None:
                        p.grad.zero_()
            self._reduce(None, "all_reduce_grad")
        elif g.data_group is not _ALONE:
            self._reduce(g.data_group, "all_reduce_grad_data")

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ConfigError("ShardedOptimizer.step: closures are not supported")
        self.all_reduce_gradients()
        self._reduced = False
        if self.exchange == "gradients":
            return self.optimizer.step()
        g = self.grid
        out = self.optimizer.step()
        flat = self.own.gather(self.own.flat(self.own.params), g.column_rank, g.column_group,
                               g.log, "all_gather_weights")
        self.own.unflat(flat, self.own.params)
        return out

    @torch.no_grad()
    def sync_state(self) -> None:
        """Give every process the owners' optimizer state (collective; before a checkpoint).

        Only for ``exchange="weights"`` (with "gradients" the state is replicated anyway):
        each state tensor shaped like its parameter (Adam's moments, momentum buffers) is
        gathered like the weights; scalar entries (step counts) are identical everywhere.
        """
        if self.exchange != "weights":
            return
        g, st = self.grid, self.optimizer.state
        keys = sorted({k for p in self.own.params for k, v in st.get(p, {}).items()
                       if isinstance(v, torch.Tensor) and v.shape == p.shape})
        for k in keys:
            if not all(k in st.get(p, {}) for p in self.own.params):
                continue
            tensors = [st[p][k] for p in self.own.params]
            flat = self.own.gather(self.own.flat(tensors), g.column_rank, g.column_group,
                                   g.log, "all_gather_state")
            self.own.unflat(flat, tensors)


def sync_state(optimizer: Any) -> None:
    """:meth:`ShardedOptimizer.sync_state` where the optimizer is one; else nothing."""
    if isinstance(optimizer, ShardedOptimizer):
        optimizer.sync_state()
