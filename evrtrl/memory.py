r"""Memory planning: the influence-matrix bytes of one process, before anything is allocated.

The influence matrix is what limits exact RTRL. For a stack of layers ``l`` (``n_l`` units,
``m_l`` state components) whose layer ``j`` has ``c_j`` influence columns in this process,
a process with ``b`` sequences holds

.. math::

    \text{influence} = b \cdot s \sum_l \sum_{j \le l} n_l m_l\, c_j \quad\text{bytes}

(``s`` the item size), for the event engine (all live columns are allocated up front; the
born prefix only decides which are worked on) and the dense engine alike (dense: ``c_j``
counts every entry, dense-live the live ones). With a process grid of ``data x columns``
processes, ``b = ceil(B / data)`` and ``c_j`` is the largest column shard of layer ``j``
(:mod:`evrtrl.shards`; balanced to within one column).

Beside it the plan states (worst case, so that a plan that passes cannot run out later):

* ``working``: the per-step transients. Event engine: the output influence rows
  ``N[K]`` with every unit active, ``b s \sum_l \sum_{j\le l} n_l c_j``, counted twice (the
  previous step's rows live until the new ones are made) and twice more for cells with
  ``m > 1`` (the per-component temporaries of the emission). Dense engine: the
  new ``M`` and the scattered immediate Jacobian (each as large as ``M`` of that layer), the
  full-width immediate Jacobian ``b n_l m_l p_l`` and ``J_t`` (``b (n_l m_l)^2``), for the
  largest layer.
* ``index``: the column bookkeeping (int64 tables: ``9 p`` bytes per layer for the entry
  maps plus ``24`` per tracked column).

:func:`check_memory` refuses a plan whose total exceeds what the machine has available
(``MemAvailable`` of ``/proc/meminfo``, bounded by a cgroup limit; free device memory on
CUDA), raising :class:`~evrtrl.errors.MemoryBudgetError` with the numbers, unless
``allow=True`` (the CLI's ``--allow-memory``). The engines call it before allocating.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from evrtrl.errors import ConfigError, MemoryBudgetError, UnknownMethodError
from evrtrl.network import layers_of
from evrtrl.shards import ColumnShard, shard_size

__all__ = ["LayerSize", "MemoryPlan", "layer_sizes", "plan_memory", "available_memory",
           "check_memory", "format_bytes"]

_ENGINES = ("event", "dense", "dense-live")


@dataclass(frozen=True)
class LayerSize:
    """What the planner needs of one layer: ``n`` units, ``m`` state components,
    ``p_total`` parameter entries of which ``p_live`` are live (unmasked)."""

    n: int
    m: int
    p_total: int
    p_live: int

    @staticmethod
    def of(layer: Any) -> "LayerSize":
        p_total = sum(p.numel() for p in layer.parameters(recurse=False))
        return LayerSize(int(layer.hidden_size), int(layer.state_size), int(p_total),
                         int(layer.live_parameter_count))


def layer_sizes(model: Any) -> list[LayerSize]:
    """:class:`LayerSize` of every layer of a model (a layer or a stack)."""
    return [LayerSize.of(r.layer) for r in layers_of(model)]


def format_bytes(b: float) -> str:
    """``1.50 GiB`` style (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(b) < 1024 or unit == "PiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.2f} {unit}"
        b /= 1024
    return f"{b:.2f} PiB"  # pragma: no cover


@dataclass(frozen=True)
class MemoryPlan:
    """Predicted bytes of one process (module docstring); ``total_bytes`` is what is checked."""

    method: str
    batch: int  # global batch
    data: int
    columns: int
    local_batch: int
    itemsize: int
    layer_columns: tuple[int, ...]  # influence columns per layer in this process
    influence_bytes: int
    working_bytes: int
    index_bytes: int
    unsharded_influence_bytes: int = 0
    layers: tuple[LayerSize, ...] = field(default=(), repr=False)

    @property
    def total_bytes(self) -> int:
        return self.influence_bytes + self.working_bytes + self.index_bytes

    def describe(self) -> str:
        """Several lines naming every figure (what ``evrtrl plan`` prints)."""
        units = ", ".join(f"n={s.n} m={s.m} p_live={s.p_live}" for s in self.layers)
        return "\n".join([
            f"engine {self.method}; grid {self.data} data x {self.columns} column processes; "
            f"batch {self.batch} ({self.local_batch} per process); itemsize {self.itemsize} B",
            f"layers: {units}",
            f"columns per process: {list(self.layer_columns)}",
            f"influence matrix per process: {format_bytes(self.influence_bytes)} "
            f"({self.influence_bytes} B; unsharded {format_bytes(self.unsharded_influence_bytes)})",
            f"per-step working set (worst case): {format_bytes(self.working_bytes)}",
            f"column bookkeeping: {format_bytes(self.index_bytes)}",
            f"total per process: {format_bytes(self.total_bytes)} ({self.total_bytes} B)",
        ])


def plan_memory(
    model: Any | Sequence[LayerSize], batch: int, method: str = "event", *,
    data: int = 1, columns: int = 1, partition: str = "strided",
    shard: ColumnShard | None = None, dtype: torch.dtype | None = None,
) -> MemoryPlan:
    """Predict one process's bytes for ``method`` on a ``data x columns`` grid.

    ``model``: a layer or stack, or a list of :class:`LayerSize` (for sizes that are not
    built, e.g. n = 4096). ``batch``: the global batch (split over ``data``). ``shard``: the
    exact column shard of this process (default: the largest shard of ``partition`` over
    ``columns`` processes). ``dtype``: default the model's, float32 for sizes.
    """
    if method not in _ENGINES:
        raise UnknownMethodError(f"plan_memory: method {method!r}: expected one of {_ENGINES}")
    for name, v in (("batch", batch), ("data", data), ("columns", columns)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"plan_memory: {name} must be a positive int, got {v!r}")
    if isinstance(model, (list, tuple)) and all(isinstance(s, LayerSize) for s in model):
        sizes = list(model)
        dtype = dtype or torch.float32
    else:
        sizes = layer_sizes(model)
        dtype = dtype or layers_of(model)[0].layer.dtype
    if shard is not None:
        columns, partition = shard.count, shard.partition
    itemsize = torch.empty((), dtype=dtype).element_size()
    b = -(-batch // data)
    candidates = [s.p_total if method == "dense" else s.p_live for s in sizes]

    def influence(cols: Sequence[int]) -> int:
        return b * itemsize * sum(s.n * s.m * sum(cols[: l + 1]) for l, s in enumerate(sizes))

    shards = [shard] if shard is not None else ColumnShard.all(columns, partition)
    per_shard = [tuple(shard_size(c, k) for c in candidates) for k in shards]
    cols = max(per_shard, key=influence)
    if method == "event":
        working = b * itemsize * sum((2 if s.m == 1 else 4) * s.n * sum(cols[: l + 1])
                                     for l, s in enumerate(sizes))
    else:
        working = max(
            b * itemsize * (2 * s.n * s.m * sum(cols[: l + 1]) + s.n * s.m * s.p_total
                            + (s.n * s.m) ** 2)
            for l, s in enumerate(sizes)
        )
    index = sum(9 * s.p_total + 24 * c for s, c in zip(sizes, cols))
    return MemoryPlan(method, batch, data, columns, b, itemsize, cols, influence(cols), working,
                      index, influence(candidates), tuple(sizes))


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
            else:
                return None
    except OSError:
        return None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                raw = f.read().strip()
            if raw.isdigit():
                avail = min(avail, int(raw))
        except OSError:
            continue
    return avail


def available_memory(device: Any = "cpu") -> int | None:
    """Bytes available to a new allocation on ``device`` (None where it cannot be read)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    return _meminfo_available()


def check_memory(plan: MemoryPlan, *, allow: bool = False, available: int | None = None,
                 device: Any = "cpu") -> None:
    """Raise :class:`MemoryBudgetError` if ``plan.total_bytes`` exceeds the memory available
    (``available`` bytes, default :func:`available_memory`), unless ``allow``."""
    if allow:
        return
    avail = available_memory(device) if available is None else int(available)
    if avail is None or plan.total_bytes <= avail:
        return
    raise MemoryBudgetError(
        f"the {plan.method} engine would need {format_bytes(plan.total_bytes)} per process "
        f"(influence matrix {format_bytes(plan.influence_bytes)} for {plan.local_batch} "
        f"sequences x {sum(plan.layer_columns)} columns, working set "
        f"{format_bytes(plan.working_bytes)}, bookkeeping {format_bytes(plan.index_bytes)}) but "
        f"only {format_bytes(avail)} is available on {torch.device(device)}; use a smaller "
        "batch, more column shards (--shard-columns) or more data processes, or pass "
        "--allow-memory (allow_memory=True) to try anyway"
    )

