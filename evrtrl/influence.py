r"""Influence columns and the storage layout of the influence matrix.

Columns. Each layer's parameters form one *block* of columns. Columns exist only for live
(unmasked) entries, and are allocated in *birth order*: a per-unit parameter (bias,
threshold) is born at step 0; a weight ``W[i, j]`` is born the first time its source
``j`` carries an event (an input channel fires, or a unit emits a non-zero output).
Until then its column is exactly zero, so the engines work on the prefix
``M[..., :p_born]`` only. The dense engine uses :meth:`ColumnBlock.natural_columns`
instead (every entry, or every live entry, in parameter order).

Column orders. ``order="birth"`` (the pure-torch path) is the above. ``order="unit"`` (the
compiled path) gives every live entry its column at construction, grouped by the unit ``i``
the parameter belongs to (row ``i`` of a projection, entry ``i`` of a per-unit parameter):
unit ``i``'s columns are ``seg_ptr[i]:seg_ptr[i+1]``. Births still happen (they tabulate the
immediate entries and count ``p_born``), but born columns are no prefix, so the engines
work on every live column (:attr:`ColumnBlock.width`). What the grouping buys: row ``r`` of
``M`` is non-zero only in the segments of the units whose parameters have reached ``r``
through the active units, and the compiled kernel skips the other segments
(:mod:`evrtrl.kernels`, "reach").

Shards (:class:`evrtrl.shards.ColumnShard`): a block built with ``shard`` has columns only
for the shard's part of the candidates (:meth:`ColumnBlock.natural_columns` applies it), so
``p_live`` counts this shard's live columns, ``tracked`` marks them (a flat bool over the
block's entries) and a per-unit parameter's ``unit_cols[u][i]`` is ``-1`` for the units
``i`` whose column another shard tracks.

Layout. The event engine stores the influence of layer ``l``'s state on block ``j``
(``R = n_l m_l`` state rows, capacity ``C = p_live`` of block ``j``, ``B`` sequences) as one
contiguous tensor in one of two layouts:

``"rows"``
    ``(B, R, C)``, row ``r = i m + c`` (unit ``i``, state component ``c``) holds
    :math:`\tilde M[i, c, :]`; the flat offset of entry ``(b, r, col)`` is ``(b R + r) C + col``.
``"cols"``
    ``(B, C, R)`` (the transpose): the flat offset is ``(b C + col) R + r``; the born
    prefix ``[:, :p_born, :]`` is one contiguous slab.

The coupling update is a rank-``|K|`` update of the prefix, ``(R x |K|)(|K| x P)`` in the
row layout and ``(P x |K|)(|K| x R)`` in the column layout; which one the BLAS runs
faster depends on the size of M: :func:`choose_layout` holds the rule, measured by
``benchmarks/layout.py`` (docs/benchmarks.md).
"""
from __future__ import annotations

import torch

from evrtrl.errors import UnknownMethodError
from evrtrl.layer import Layer
from evrtrl.shards import ColumnShard

__all__ = ["ColumnBlock", "ragged_arange", "LAYOUTS", "COLUMN_ORDERS", "choose_layout"]

#: storage layouts of the influence matrix (module docstring)
LAYOUTS = ("rows", "cols")
#: column orders of a block (module docstring)
COLUMN_ORDERS = ("birth", "unit")

#: ``"cols"`` from this many influence entries per sequence (``n m x p_live``) on: measured
#: crossover by ``python -m evrtrl.benchmarks.layout`` (docs/benchmarks.md, "Influence layout")
COLS_FROM_ENTRIES = 1_500_000


def choose_layout(rows: int, columns: int, layout: str = "auto") -> str:
    """The influence layout for ``rows = n m`` state rows and ``columns`` live columns.

    ``layout="auto"`` picks ``"cols"`` when the matrix has at least
    :data:`COLS_FROM_ENTRIES` entries (per sequence) and ``"rows"`` otherwise; ``"rows"``
    or ``"cols"`` are returned as given. Small matrices favour the row layout (its
    emission gathers contiguous rows and the whole matrix sits in cache); large ones the
    column layout (the BLAS runs the rank-``|K|`` update ``(P x k)(k x R)`` faster).
    """
    if layout == "auto":
        return "cols" if rows * columns >= COLS_FROM_ENTRIES else "rows"
    if layout not in LAYOUTS:
        raise UnknownMethodError(f"influence layout must be 'auto' or one of {LAYOUTS}, got {layout!r}")
    return layout


def ragged_arange(ptr: torch.Tensor, sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate ``range(ptr[s], ptr[s+1])`` for ``s`` in ``sel`` (vectorised).

    Returns the positions and, for each, the index into ``sel`` it came from.
    """
    starts = ptr[sel]
    ends = torch.cumsum(ptr[sel + 1] - starts, 0)
    total = int(ends[-1]) if ends.numel() else 0
    pos = torch.arange(total, device=sel.device)
    # owner of each position: searchsorted (repeat_interleave is far slower on CPU here)
    owner = torch.searchsorted(ends, pos, right=True)
    pos += starts[owner] - (ends[owner] - (ptr[sel + 1] - starts)[owner])
    return pos, owner


class _ProjectionColumns:
    """Live entries of one weight, grouped by source (CSC), with their flat indices."""

    def __init__(self, name: str, source: str, mask: torch.Tensor, offset: int) -> None:
        self.name, self.source = name, source
        n, n_src = mask.shape
        self.n_src = n_src
        srcs, rows = mask.t().nonzero(as_tuple=True)
        # entries sorted by source j, then row i
        self.rows, self.srcs = rows, srcs
        self.flat = offset + rows * n_src + srcs
        counts = torch.bincount(srcs, minlength=n_src)
        self.ptr = torch.zeros(n_src + 1, dtype=torch.long, device=mask.device)
        self.ptr[1:] = torch.cumsum(counts, 0)


class ColumnBlock:
    """Columns of one layer's parameters (see module docstring)."""

    def __init__(self, layer: Layer, prefix: str, shard: ColumnShard | None = None,
                 order: str = "birth") -> None:
        self.layer, self.prefix, self.shard = layer, prefix, shard
        dev = layer.device
        self.names: list[str] = []
        self.shapes: list[torch.Size] = []
        self.offsets: dict[str, int] = {}
        off = 0
        for name, p in layer.named_parameters(recurse=False):
            self.names.append(name)
            self.shapes.append(p.shape)
            self.offsets[name] = off
            off += p.numel()
        self.p_total = off
        masks = layer.masks
        # shard hook: the live entries whose columns this block keeps (all without a shard)
        self.tracked = torch.zeros(self.p_total, dtype=torch.bool, device=dev)
        self.tracked[self.natural_columns(live_only=True)] = True
        self.projections = [
            _ProjectionColumns(pr.name, pr.source, masks[pr.name] & self._tracked(pr.name),
                               self.offsets[pr.name])
            for pr in layer.projections
        ]
        self.p_live = int(self.tracked.sum())
        # the masks this block was made for (matches)
        self._masks = {name: m.clone() for name, m in masks.items()}
        self.col_of = torch.full((self.p_total,), -1, dtype=torch.long, device=dev)
        self.order = torch.empty(self.p_live, dtype=torch.long, device=dev)
        self.p_born = 0
        n = layer.hidden_size
        if order not in COLUMN_ORDERS:
            raise UnknownMethodError(f"column order must be one of {COLUMN_ORDERS}, got {order!r}")
        self.column_order = order
        #: ``"unit"`` order: the columns of unit ``i``'s parameters are ``seg_ptr[i]:seg_ptr[i+1]``
        self.seg_ptr: torch.Tensor | None = None
        if order == "unit":
            flat = self.tracked.nonzero(as_tuple=True)[0]
            unit = self._unit_of(flat)
            rank = torch.argsort(unit * self.p_total + flat)  # by unit, then parameter order
            self.order[:] = flat[rank]
            self.col_of[self.order] = torch.arange(self.p_live, device=dev)
            self.seg_ptr = torch.zeros(n + 1, dtype=torch.long, device=dev)
            self.seg_ptr[1:] = torch.cumsum(torch.bincount(unit, minlength=n), 0)
        self.unit_cols: dict[str, torch.Tensor] = {}
        self.restart()

    def restart(self) -> None:
        """No source born: the state of a new run. The per-unit parameters are born at
        step 0 (first in birth order)."""
        self.p_born = 0
        if self.column_order == "birth":
            self.col_of.fill_(-1)
        n, dev = self.layer.hidden_size, self.layer.device
        for u in self.layer.unit_parameters:
            flat = self.offsets[u] + torch.arange(n, device=dev)
            keep = self.tracked[flat]
            self.unit_cols[u] = torch.full((n,), -1, dtype=torch.long, device=dev)
            self.unit_cols[u][keep] = self._allocate(flat[keep])

    def matches(self, layer: Layer, shard: ColumnShard | None, order: str) -> bool:
        """Whether this block's columns are those of ``layer`` (same masks), ``shard`` and
        ``order``: then :meth:`restart` makes it a new block of them."""
        masks = layer.masks
        return (layer is self.layer and shard is self.shard and order == self.column_order
                and masks.keys() == self._masks.keys()
                and all(torch.equal(masks[k], m) for k, m in self._masks.items()))

    def _tracked(self, name: str) -> torch.Tensor:
        """``tracked`` restricted to parameter ``name``, in its shape."""
        o, shape = self.offsets[name], self.shapes[self.names.index(name)]
        return self.tracked[o : o + torch.Size(shape).numel()].view(shape)

    def _unit_of(self, flat: torch.Tensor) -> torch.Tensor:
        """The unit (row ``i``) each flat parameter entry belongs to."""
        unit = torch.empty_like(flat)
        for name, shape in zip(self.names, self.shapes):
            o, size = self.offsets[name], torch.Size(shape).numel()
            sel = (flat >= o) & (flat < o + size)
            # a projection (n, n_src) is row-major; a per-unit parameter is (n,)
            unit[sel] = (flat[sel] - o) // (shape[1] if len(shape) == 2 else 1)
        return unit

    @property
    def width(self) -> int:
        """The columns the engines work on: the born prefix ``p_born`` in birth order, every
        live column in unit order (born columns are not a prefix there)."""
        return self.p_born if self.column_order == "birth" else self.p_live

    def add_born(self, count: int) -> None:
        """Unit order: ``count`` more columns are born (they exist from the start)."""
        self.p_born += count

    def _allocate(self, flat: torch.Tensor) -> torch.Tensor:
        if self.column_order == "unit":  # the columns exist from the start
            self.p_born += flat.numel()
            return self.col_of[flat]
        cols = torch.arange(self.p_born, self.p_born + flat.numel(), device=flat.device)
        self.col_of[flat] = cols
        self.order[self.p_born : self.p_born + flat.numel()] = flat
        self.p_born += flat.numel()
        return cols

    def birth(self, proj: _ProjectionColumns, sources: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sources ``j`` fire for the first time: give their live entries columns.

        ``sources`` must not have been born before. Returns ``(rows, srcs, cols)`` of the
        newborn entries: unit row ``i``, source ``j`` and the column allocated to ``W[i, j]``.
        """
        pos, _ = ragged_arange(proj.ptr, sources)
        return proj.rows[pos], proj.srcs[pos], self._allocate(proj.flat[pos])

    def natural_columns(self, live_only: bool) -> torch.Tensor:
        """Flat indices of the dense engine's columns, in parameter order (this shard's part)."""
        dev = self.layer.device
        if not live_only:
            cols = torch.arange(self.p_total, device=dev)
        else:
            keep = torch.ones(self.p_total, dtype=torch.bool, device=dev)
            masks = self.layer.masks
            for name in self.names:
                if name in masks:
                    o = self.offsets[name]
                    keep[o : o + masks[name].numel()] = masks[name].flatten()
            cols = keep.nonzero(as_tuple=True)[0]
        return cols if self.shard is None else self.shard.take(cols)

    def unflatten(self, flat_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a length-``p_total`` vector into ``{prefix + name: tensor}``."""
        out = {}
        for name, shape in zip(self.names, self.shapes):
            o = self.offsets[name]
            out[self.prefix + name] = flat_values[o : o + torch.Size(shape).numel()].view(shape)
        return out
