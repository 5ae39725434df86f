r"""Exact event-driven RTRL (arXiv 2303.05641, with the lazy diagonal pass below), restructured for few torch calls per step.

For layer ``l`` and each parameter block ``j <= l`` the engine holds
:math:`M^{l,j}_t = ds^l_t / d\theta^j` (``n m`` state rows x live columns of block j, used up to
the born prefix) for each of the ``B`` sequences, and per step applies, in place,

.. math::

    M^{l,j} \leftarrow D_t M^{l,j}
        + A^{\rm rec}_t[:, K^l_{t-1}]\, N^{l,j}_{t-1}[K^l_{t-1}]
        + A^{\rm in}_t[:, K^{l-1}_t]\, N^{l-1,j}_t[K^{l-1}_t] + \bar M_t,

with :math:`A_t = \sum_g \phi^g_t \odot W^g` over the recurrent (input) projections and
:math:`N^{l,j}_t[K] = G_t M^{l,j}_t[K] + G^\theta_t`, the output influence of the active
units K only. The savings are exact zeros, skipped for real:

1. only the rows K of N exist and only the columns K of :math:`A_t` are formed, with one
   active set *per sequence* (:math:`K_b`; padded to the largest :math:`|K_b|` of the batch
   with inactive units, whose rows of N are exactly zero);
2. :math:`\bar M_t` is non-zero only for born entries (a weight's column is born the first
   time its source fires); pruned entries have no column, unborn columns are outside the
   prefix;
3. the gradient :math:`e_t^T N_t` is accumulated from the rows K alone.

Data layout (the contract of a compiled kernel; see also docs/engine.md):

* ``M[l][j]``: one contiguous tensor per (layer, block), ``(B, R, C)`` ("rows") or
  ``(B, C, R)`` ("cols") with ``R = n m`` rows ``r = i m + c`` and ``C = p_live`` columns of
  block ``j`` (:mod:`evrtrl.influence`): in birth order on the pure-torch path (columns
  ``>= p_born`` are zero), grouped by unit on the compiled path (``seg_ptr``; the kernel
  keeps per row the set of units whose segments can be non-zero, its reach set).
* ``T[l]``: the lazy diagonal transforms, ``(B, n, 1)`` for ``m = 1`` and ``(B, n, m, m)``
  upper triangular otherwise; the true influence is :math:`M[i] = T_i \tilde M[i]`.
* the scaled local factors ``phis``: ``(B, n, G m)`` = :math:`T_i^{-1}\phi^g_i` for the
  ``G`` groups in the order recurrent projections, input projections, per-unit parameters.
* the immediate table of layer ``l`` (rebuilt only when a source is born):
  ``phi_idx`` into ``phis.view(B, -1)``, ``src_idx`` into ``src = [x_t | y_{t-1} | 1]``
  ``(B, d + n + 1)``, ``dest`` into ``M[l][l].view(B, -1)``, one entry per born
  (weight entry, state component); one gather-multiply-``index_add_`` applies them all:
  ``M.view(B, -1).index_add_(1, dest, phis[:, phi_idx] * src[:, src_idx])``.
* ``N[l] = (Kp, k, [N_j], [P_j], count, cols, counts)``: ``Kp (B, k)`` the padded active units
  of each sequence, ``count`` their total over the batch and, where the rows are ordered
  active-first, ``counts (B,)`` how many of each sequence's are active (the rest pad with
  inactive units whose rows of ``N_j`` are zero, which the compiled kernel skips); None
  otherwise (this module's pure-torch step), ``N_j`` the output influence rows on the born prefix of block ``j``,
  ``(B, k, P_j)`` in the row layout and transposed ``(B, P_j, k)`` in the column layout
  (``cols`` True; gathered with one ``gather`` along the contiguous dimension).

Lazy diagonal pass. The diagonal pass :math:`M \leftarrow D_t M` would touch every entry
of M at every step. Instead each unit ``i`` keeps a small upper-triangular ``m x m``
transform :math:`T_i` with

.. math::

    M[i] = T_i\, \tilde M[i], \qquad T_i \leftarrow D_{t,i} T_i \quad (O(n m^2) \text{ per step}),

and every contribution :math:`C` to row block ``i`` (coupling, immediate Jacobian) is added as
:math:`\tilde M[i] \mathrel{+}= T_i^{-1} C[i]`; the engine applies :math:`T_i^{-1}` to the
small factors :math:`\phi^g_i` once per step, never to a ``p``-wide row. Readers use
:math:`N[K] = (G T)[K]\, \tilde M[K]`. Units are *materialised* (:math:`\tilde M[i]
\leftarrow T_i \tilde M[i]`, :math:`T_i \leftarrow I`) when some :math:`T_i` becomes
ill-conditioned: a diagonal entry outside :math:`[2^{-40}, 2^{40}]` (this includes a
singular :math:`D`, e.g. the zero reset of a spiking LIF unit, and non-finite values) or an
off-diagonal entry larger than :math:`2^{8}` times the diagonal entry of its column
(bounding the cancellation in :math:`T\tilde M` to a factor 256). With hysteresis: when
that happens, every unit outside the narrower band :math:`[2^{-20}, 2^{20}]` (off-diagonal
ratio :math:`2^4`) is materialised with it, so materialisations are rare events rather than
a per-step cost. The results are the same up to rounding.

Statistics and checks cost no host synchronisation per step: ``alpha``/``beta`` are kept as
device scalars and read once per update (:mod:`evrtrl.stats`); non-finite gradients are
reported by :meth:`EventRTRL.gradients`. The remaining per-step host reads are the sizes
of the active sets, the conditioning test of ``T`` and, while some source is unborn, its
birth test.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from evrtrl.engine import check_step_input, check_upstream, nonzero_fraction
from evrtrl.errors import ShapeError
from evrtrl.events import SparseStep
from evrtrl.influence import ColumnBlock, choose_layout
from evrtrl.kernels import COMPILED_LAYOUT, CompiledStep, kernel_module
from evrtrl.layer import Layer, LocalJacobian
from evrtrl.memory import check_memory, plan_memory
from evrtrl.network import check_parameters, layers_of
from evrtrl.shards import ColumnShard
from evrtrl.stats import EngineStats

__all__ = ["EventRTRL", "DegradesToDenseWarning", "DEFER_STEPS", "diag_pass_macs", "active_units"]


#: the most steps the compiled path defers (EventRTRL ``defer``): their influence updates run
#: together, each panel of M's columns through all of them while it stays in cache
#: (docs/engine.md, "Deferred steps")
DEFER_STEPS = 32


class DegradesToDenseWarning(UserWarning):
    """The pseudo-derivative has infinite support: every unit is always active."""


#: conditioning bounds of the lazy transforms T that trigger a materialisation ...
_T_LO, _T_HI, _T_OFF = 2.0 ** -40, 2.0 ** 40, 2.0 ** 8
#: ... and the narrower band that every materialised unit is outside of (hysteresis)
_R_LO, _R_HI, _R_OFF = 2.0 ** -20, 2.0 ** 20, 2.0 ** 4


def _absorb(T: torch.Tensor, diag: torch.Tensor, struct_flat: torch.Tensor | None) -> torch.Tensor:
    """``T <- D T`` per unit; ``struct_flat`` holds the flat positions ``c m + c'`` of D's entries."""
    if struct_flat is None:  # m = 1: T and diag are (B, n, 1)
        return diag * T
    B, n, m, _ = T.shape
    D = diag.new_zeros(B, n, m * m)
    D[:, :, struct_flat] = diag
    return D.view(B, n, m, m) @ T


def active_units(lj: LocalJacobian) -> torch.Tensor:
    """The active set K per sequence, ``(B, n)`` bool: units whose output derivative (``G_t``
    or a direct ``G^theta_t``) is non-zero, i.e. spiking or inside the pseudo-derivative window."""
    act = lj.gain.any(-1)
    for gd in lj.gain_direct.values():
        act = act | (gd != 0)
    return act


def _ill(T: torch.Tensor, m: int) -> bool:
    """True when some transform left the trigger band (module docstring); one host read."""
    if m == 1:  # a negative T (rare: D < 0) counts as ill, which only costs a materialisation
        lo, hi = torch.aminmax(T)
        return not (_T_LO <= float(lo) and float(hi) <= _T_HI)
    d = torch.diagonal(T, dim1=-2, dim2=-1).abs()
    lo, hi = torch.aminmax(d)
    off = float((T.triu(1).abs() / d[:, :, None, :]).amax())
    return not (_T_LO <= float(lo) and float(hi) <= _T_HI and off <= _T_OFF)


def _outside_reset_band(T: torch.Tensor, m: int) -> torch.Tensor:
    """Units (any sequence) outside the hysteresis band: the ones to materialise."""
    d = T if m == 1 else torch.diagonal(T, dim1=-2, dim2=-1).abs()
    bad = ~((d >= _R_LO) & (d <= _R_HI)).all(-1)
    if m > 1:
        bad |= ~(T.triu(1).abs() <= _R_OFF * d[:, :, None, :]).all(-1).all(-1)
    return bad.any(0).nonzero(as_tuple=True)[0]


def _full_pass(k: int, n: int, m: int) -> bool:
    """Materialise by one in-place pass over all rows (m = 1, at least n/4 units)."""
    return m == 1 and 4 * k >= n


def _struct_flat(layer: Layer) -> torch.Tensor | None:
    m = layer.state_size
    if m == 1:
        return None
    return torch.tensor([co * m + ci for co, ci in layer.diag_structure], device=layer.device)


def _identity_T(B: int, n: int, m: int, dtype, device) -> torch.Tensor:
    if m == 1:
        return torch.ones(B, n, 1, dtype=dtype, device=device)
    return torch.eye(m, dtype=dtype, device=device).expand(B, n, m, m).clone()


def diag_pass_macs(layer: Layer, lj: LocalJacobian, P: int, state: Any = None) -> tuple[int, Any]:
    """Multiply-adds of one step's lazy diagonal pass over ``P`` born columns (benchmarks).

    Replays the engine's transforms: ``B n nd`` for ``T <- D T`` plus ``B nd P`` per
    materialised unit, or per unit when the whole prefix is passed
    (``nd = len(diag_structure)``). ``state`` is the transform tensor,
    None before the first step. Returns ``(macs, state)``.
    """
    B, n, m = lj.diag.shape[0], layer.hidden_size, layer.state_size
    nd = len(layer.diag_structure)
    if state is None:
        state = _identity_T(B, n, m, lj.diag.dtype, lj.diag.device)
    T = _absorb(state, lj.diag, _struct_flat(layer))
    macs = B * n * nd
    if _ill(T, m):
        rows = _outside_reset_band(T, m)
        T[:, rows] = 1.0 if m == 1 else torch.eye(m, dtype=T.dtype, device=T.device)
        macs += B * nd * (n if _full_pass(rows.numel(), n, m) else rows.numel()) * P
    return macs, T


class _LayerRun:
    """Static plan and per-run tables of one layer (module docstring, "Data layout")."""

    def __init__(self, layer: Layer, block: ColumnBlock, B: int, layout: str) -> None:
        self.layer, self.block, self.layout, self.B = layer, block, layout, B
        self.n, self.m, self.d = layer.hidden_size, layer.state_size, layer.input_size
        self.nd = len(layer.diag_structure)
        self.rec = [p.name for p in layer.projections if p.source == "recurrent"]
        self.inp = [p.name for p in layer.projections if p.source == "input"]
        self.units = list(layer.unit_parameters)
        self.G = len(self.rec) + len(self.inp) + len(self.units)
        self.group = {name: g for g, name in enumerate(self.rec + self.inp + self.units)}
        self.struct = _struct_flat(layer)
        self.c0 = min(layer.gain_structure)
        self.comp = torch.arange(self.c0, self.m, device=layer.device)
        dev = layer.device
        self.R, self.C = self.n * self.m, block.p_live
        self.ones = torch.ones(B, 1, dtype=layer.dtype, device=dev)
        # gain_direct: the column of p_i for each unit, (n, 1); a unit whose p_i column another
        # shard tracks points at column 0 with a zero factor (an exact no-op)
        self.ucol = {u: c.clamp(min=0)[:, None] for u, c in block.unit_cols.items()}
        self.ukeep = {u: (c >= 0).to(layer.dtype)[:, None] for u, c in block.unit_cols.items()
                      if bool((c < 0).any())}
        # unit column order (static columns): every weight entry's table rows, by source, on
        # the host; a birth copies its sources' rows into the tables (_birth_static)
        self._static: dict[str, tuple[np.ndarray, ...]] = {}
        self.restart()
        if block.column_order == "unit":
            self._static = {kind: self._source_table(kind) for kind in ("input", "recurrent")}
            units = [t.numpy() for t in (self.phi_idx, self.src_idx, self.dest)]
            cap = self.entries + sum(len(t[1]) for t in self._static.values())
            self._buf = [np.empty(cap, dtype=np.int64) for _ in range(3)]
            for buf, u in zip(self._buf, units):
                buf[: self.entries] = u
            self._units_end = self.entries

    def restart(self) -> None:
        """The per-run state of a new run: no source born, the tables of the per-unit
        parameters only."""
        dev = self.layer.device
        # born sources (host) and the unborn ones (device, for the dense birth test)
        self.born_in = np.zeros(self.d, dtype=bool)
        self.born_rec = np.zeros(self.n, dtype=bool)
        self.unborn_in = torch.arange(self.d, device=dev)
        self.unborn_rec = torch.arange(self.n, device=dev)
        self._takes: tuple[torch.Tensor, torch.Tensor] | None = None
        if self._static:
            self._tables(self._units_end)
            return
        e = torch.empty(0, dtype=torch.long, device=dev)
        self.phi_idx, self.src_idx, self.dest = e, e, e
        self.entries = 0
        for u, cols in self.block.unit_cols.items():
            units = (cols >= 0).nonzero(as_tuple=True)[0]  # shard: the p_i tracked here
            self._add(self.group[u], units,
                      torch.full((units.numel(),), self.d + self.n, dtype=torch.long, device=dev),
                      cols[units])

    def _tables(self, entries: int) -> None:
        """Unit order: the tables are the first ``entries`` rows of the host buffers."""
        self.phi_idx, self.src_idx, self.dest = (torch.from_numpy(b[:entries]) for b in self._buf)
        self.entries = entries

    def _rows(self, g: int, rows: torch.Tensor, src: torch.Tensor, cols: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Table rows ``(phi, src, dest)`` for weight entries ``(rows, src)`` of group ``g`` at
        ``cols``: ``m`` per entry, one per state component."""
        m, G = self.m, self.G
        comp = torch.arange(m, device=rows.device)
        r = (rows * m)[:, None] + comp  # state rows (i, c)
        phi = ((rows * G + g) * m)[:, None] + comp
        if self.layout == "rows":
            dest = r * self.C + cols[:, None]
        else:
            dest = cols[:, None] * self.R + r
        return phi.flatten(), src[:, None].expand(-1, m).flatten(), dest.flatten()

    def _source_table(self, kind: str) -> tuple[np.ndarray, ...]:
        """Unit order: ``(ptr, phi, src, dest)`` of every weight entry of the projections from
        ``kind`` sources, grouped by source ``j`` (``ptr[j]:ptr[j+1]``)."""
        offset = 0 if kind == "input" else self.d
        parts = [self._rows(self.group[p.name], p.rows, p.srcs + offset, self.block.col_of[p.flat])
                 for p in self.block.projections if p.source == kind]
        n_src = self.d if kind == "input" else self.n
        if not parts:
            return (np.zeros(n_src + 1, dtype=np.int64),) + (np.empty(0, dtype=np.int64),) * 3
        phi, src, dest = (torch.cat(t).cpu().numpy() for t in zip(*parts))
        key = src - offset
        order = np.argsort(key, kind="stable")
        ptr = np.zeros(n_src + 1, dtype=np.int64)
        ptr[1:] = np.cumsum(np.bincount(key, minlength=n_src))
        return ptr, phi[order], src[order], dest[order]

    def _birth_static(self, source: str, new: np.ndarray) -> None:
        """Unit order: append the table rows of the sources ``new`` (their columns exist)."""
        ptr, phi, src, dest = self._static[source]
        starts = ptr[new]
        lengths = ptr[new + 1] - starts
        total = int(lengths.sum())
        pos = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(total)
        e0, e1 = self.entries, self.entries + total
        for buf, tab in zip(self._buf, (phi, src, dest)):
            buf[e0:e1] = tab[pos]
        self._tables(e1)
        self.block.add_born(total // self.m)

    def _add(self, g: int, rows: torch.Tensor, src: torch.Tensor, cols: torch.Tensor) -> None:
        """Append table entries for weight entries ``(rows, src)`` of group ``g`` at ``cols``."""
        phi, src, dest = self._rows(g, rows, src, cols)
        self.phi_idx = torch.cat((self.phi_idx, phi))
        self.src_idx = torch.cat((self.src_idx, src))
        self.dest = torch.cat((self.dest, dest))
        self._takes = None
        self.entries = self.dest.numel()

    @property
    def takes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sequence flat positions of the table for ``Tensor.take`` (the pure-torch step):
        into phis ``(B, n G m)`` and into src ``(B, d + n + 1)``; made when first read after a birth."""
        if self._takes is None:
            b = torch.arange(self.B, device=self.dest.device)[:, None]
            self._takes = (b * (self.n * self.G * self.m) + self.phi_idx,
                           b * (self.d + self.n + 1) + self.src_idx)
        return self._takes

    def birth(self, source: str, new: torch.Tensor) -> None:
        """Sources ``new`` of kind ``source`` fire for the first time: allocate and tabulate."""
        new_np = new.cpu().numpy()
        if self._static:
            self._birth_static(source, new_np)
        else:
            offset = 0 if source == "input" else self.d
            for proj in self.block.projections:
                if proj.source == source:
                    rows, srcs, cols = self.block.birth(proj, new)
                    self._add(self.group[proj.name], rows, srcs + offset, cols)
        born = self.born_in if source == "input" else self.born_rec
        born[new_np] = True
        left = torch.from_numpy(np.flatnonzero(~born)).to(new.device)
        if source == "input":
            self.unborn_in = left
        else:
            self.unborn_rec = left


class EventRTRL:
    """Event-driven exact RTRL over a layer or a stack; one instance per run of ``B`` streams.

    Use: ``y = eng.step(x_t)`` then ``eng.accumulate(dL/dy_t)``; ``eng.gradients()``.
    ``x_t`` is a dense ``(B, d)`` tensor or a :class:`evrtrl.events.SparseStep`.
    ``layout``: storage of the influence matrix, ``"auto"`` (by size,
    :func:`evrtrl.influence.choose_layout`), ``"rows"`` or ``"cols"``.
    ``shard``: track only that column shard (:mod:`evrtrl.shards`; the forward pass is
    unchanged, the gradient is exactly zero outside the shard). ``allow_memory``: skip the
    refusal of an influence matrix larger than the memory available (:mod:`evrtrl.memory`).
    ``kernel``: ``"auto"``, ``"torch"`` or ``"compiled"`` (default: ``$EVRTRL_KERNEL``, else
    auto): whether the step runs through the compiled CPU kernels (:mod:`evrtrl.kernels`;
    their ``layout="auto"`` is ``"rows"``); :attr:`kernel` says which path runs.
    ``defer``: on the compiled path in the row layout, how many steps' influence updates may
    wait and then run together (:data:`DEFER_STEPS`; 1: each at its step). The forward pass,
    outputs, active sets and statistics are never deferred; :meth:`gradients`,
    :meth:`influence`, :meth:`zero_grad` and :meth:`refresh` finish the waiting updates
    first (:meth:`settle`). Change weights in place only between an update and
    :meth:`refresh`, as always. Results agree with ``defer=1`` up to rounding.
    """

    name = "event"

    def __init__(self, model: Any, batch: int, layout: str = "auto", *,
                 shard: ColumnShard | None = None, allow_memory: bool = False,
                 kernel: str | None = None, defer: int = DEFER_STEPS) -> None:
        self.refs = layers_of(model)
        check_parameters(model)
        check_memory(plan_memory(model, int(batch), "event", shard=shard), allow=allow_memory,
                     device=self.refs[0].layer.device)
        for ref in self.refs:
            _check_structure(ref.layer)
            if not getattr(ref.layer.pseudo_derivative, "compact", False):
                warnings.warn(
                    f"layer {ref.index} ({type(ref.layer).__name__}) uses "
                    f"{type(ref.layer.pseudo_derivative).__name__}, whose support is infinite: "
                    "every unit is always active and the event engine degrades to dense work "
                    "(results stay exact). Use a compact pseudo-derivative such as Triangle.",
                    DegradesToDenseWarning,
                    stacklevel=3,
                )
        self.B = int(batch)
        layer0 = self.refs[0].layer
        self.dtype, self.device = layer0.dtype, layer0.device
        self._shard = shard
        kmod = kernel_module(self.device, self.dtype, kernel)  # None: the pure-torch path
        if kmod is not None and layout == "auto":
            layout = COMPILED_LAYOUT
        self._layout, self._kmod, self._defer = layout, kmod, defer
        self.M: list[list[torch.Tensor]] = []
        self.blocks: list[ColumnBlock] = []
        self.bcol = torch.arange(self.B, device=self.device)[:, None]
        self.n_units = sum(r.layer.hidden_size for r in self.refs)
        self.compiled = None
        self.reset()

    def reset(self) -> None:
        """Start ``B`` new sequences (also the start of a new engine): fresh states, no source
        born, zero influence and gradient, new :attr:`stats`, the weights re-read; queued
        steps are dropped with the old compiled step. The influence tensors are kept and
        zeroed where their shapes still fit (a fresh large allocation costs a page fault per
        4 KiB on first touch: about 20 ms for 37 MB)."""
        B, shard, layout = self.B, self._shard, self._layout
        prev, self.compiled = self.compiled, None  # drops the queue: refresh() has nothing to settle
        # the compiled path groups each block's columns by unit (it skips the segments that
        # are structurally zero); the pure-torch path keeps the born prefix (evrtrl.influence)
        order = "unit" if self._kmod is not None else "birth"
        if len(self.blocks) == len(self.refs) and \
                all(b.matches(r.layer, shard, order) for b, r in zip(self.blocks, self.refs)):
            for blk, run in zip(self.blocks, self.runs):  # same columns: the births start again
                blk.restart()
                run.restart()
        else:
            self.blocks = [ColumnBlock(r.layer, r.prefix, shard, order) for r in self.refs]
            self.runs = [
                _LayerRun(r.layer, b, B, choose_layout(
                    r.layer.hidden_size * r.layer.state_size,
                    sum(blk.p_live for blk in self.blocks[: l + 1]), layout))
                for l, (r, b) in enumerate(zip(self.refs, self.blocks))
            ]
        zeros = lambda *s: torch.zeros(*s, dtype=self.dtype, device=self.device)  # noqa: E731
        old = self.M

        def influence(l: int, j: int, shape: tuple[int, ...]) -> torch.Tensor:
            if l < len(old) and j < len(old[l]) and tuple(old[l][j].shape) == shape:
                return old[l][j].zero_()
            return zeros(*shape)

        self.M = [
            [influence(l, j, (B, run.R, self.blocks[j].p_live) if run.layout == "rows"
                       else (B, self.blocks[j].p_live, run.R)) for j in range(l + 1)]
            for l, run in enumerate(self.runs)
        ]
        # views used every step (made once: a view is a torch call)
        self.Mflat = [Ms[l].view(B, -1) for l, Ms in enumerate(self.M)]
        self.Mv = [[M.view(B, run.n, run.m, -1) if run.layout == "rows"
                    else M.view(B, -1, run.n, run.m) for M in Ms]
                   for run, Ms in zip(self.runs, self.M)]
        self.grad = [zeros(b.p_live) for b in self.blocks]
        self.T = [_identity_T(B, run.n, run.m, self.dtype, self.device) for run in self.runs]
        with torch.no_grad():  # a trained v_leak would attach the initial LIF state to autograd
            self.states = [r.layer.initial_state(B) for r in self.refs]
        # the active set of each layer at the last step, (B, n) bool (see seq_active)
        self._act: list[torch.Tensor | None] = [None] * len(self.refs)
        self.xbuf = zeros(B * self.runs[0].d)
        # output influence of each layer's last step: (Kp, k, [N_j], [P_j])
        self._N: list[tuple | None] = [None] * len(self.refs)
        self.first = True
        self._prefixes: dict = {}
        self._stats = EngineStats(
            "event",
            p_live=sum(b.p_live for b in self.blocks),
            p_total=sum(b.p_total for b in self.blocks),
            influence_bytes=sum(m.numel() * m.element_size() for row in self.M for m in row),
        )
        self.refresh()
        if self._kmod is not None:
            self.compiled = CompiledStep(self._kmod, self, self._defer,
                                         scratch=prev.scratch if prev is not None else None)
            self.compiled.refresh(self)

    def refresh(self) -> None:
        """Re-read the (masked) weights, e.g. after an optimizer step (queued steps are
        finished with the weights they started with)."""
        self.settle()
        with torch.no_grad():
            # detached: unmasked parameters come back as the Parameters themselves
            self.w = [type(w)(*(v.detach() if isinstance(v, torch.Tensor) else v for v in w))
                      for w in (r.layer.weights() for r in self.refs)]
            # stacked projections (G_src, n, n_src), in the order of the phis groups
            self.Wrec = [torch.stack([getattr(w, g) for g in run.rec]) if run.rec else None
                         for w, run in zip(self.w, self.runs)]
            self.Win = [torch.stack([getattr(w, g) for g in run.inp]) if run.inp else None
                        for w, run in zip(self.w, self.runs)]
            if self.compiled is not None:
                self.compiled.refresh(self)

    @property
    def stats(self) -> EngineStats:
        """The engine's :class:`~evrtrl.stats.EngineStats` (deferred steps finished first)."""
        self.settle()
        return self._stats

    @property
    def N(self) -> list[tuple | None]:
        """The output influence of each layer's last step (module docstring, "Data layout";
        deferred steps finished first)."""
        self.settle()
        return self._N

    def settle(self) -> None:
        """Finish the influence updates of deferred steps (the compiled path defers up to
        ``defer`` steps; every reader of the influence or the gradient calls this first)."""
        if self.compiled is not None:
            self.compiled.flush(self)

    @property
    def kernel(self) -> str:
        """The path the step runs: ``"compiled"`` or ``"torch"``."""
        return "torch" if self.compiled is None else "compiled"

    @property
    def layouts(self) -> list[str]:
        """The influence layout of each layer."""
        return [run.layout for run in self.runs]

    # ----------------------------------------------------------------- stepping
    def step(self, x: torch.Tensor | SparseStep) -> torch.Tensor:
        """Advance all layers by one step on input ``x``; returns the last layer's output.

        Nothing is recorded for autograd: the weights are read under ``no_grad`` and an
        input that requires grad is detached, so every tensor of the step is grad-free.
        """
        check_step_input("EventRTRL", x, self.B, self.refs[0].layer.input_size)
        if torch.is_grad_enabled():
            if isinstance(x, SparseStep):
                x = x._replace(values=x.values.detach())
            elif x.requires_grad:
                x = x.detach()
        return self._step(x)

    def _step(self, x: torch.Tensor | SparseStep) -> torch.Tensor:
        stats = self._stats
        stats.begin_step()
        channels = None
        if isinstance(x, SparseStep):
            channels = x.channels
            x = self._densify(x)
        if self.compiled is not None:  # the compiled path (evrtrl.kernels.step)
            return self.compiled.step(self, x, channels)
        lower = None
        alphas, betas = [], []
        for l, ref in enumerate(self.refs):
            run, layer, w, prev = self.runs[l], ref.layer, self.w[l], self.states[l]
            new, aux = layer.step(w, prev, x)
            lj = layer.local_jacobian(w, prev, x, new, aux, self.first)
            self._propagate(l, run, lj, x, prev.y, lower, channels if l == 0 else None)
            lower = self._N[l] = self._emission(l, run, lj)
            self.states[l] = new
            x = new.y
            alphas.append(torch.count_nonzero(x))
            betas.append(lower[4])
        self.first = False
        born = sum(b.p_born for b in self.blocks)
        alpha = alphas[0] if len(alphas) == 1 else sum(alphas)
        beta = betas[0] if len(betas) == 1 else sum(betas)
        stats.end_step(alpha, beta, born / max(1, stats.p_live), divisor=self.B * self.n_units)
        return x

    def _densify(self, x: SparseStep) -> torch.Tensor:
        if x.batch != self.B or x.d != self.runs[0].d:
            raise ShapeError(f"SparseStep of {x.batch} sequences x {x.d} channels; the engine "
                             f"runs {self.B} x {self.runs[0].d}")
        buf = self.xbuf
        buf.zero_()
        buf[x.index] = x.values
        return buf.view(self.B, -1)

    def _births(self, run: _LayerRun, x: torch.Tensor, y_prev: torch.Tensor,
                channels: np.ndarray | None) -> None:
        """Give columns to the entries of sources that fire for the first time."""
        if run.inp and not run.born_in.all():
            if channels is not None:
                new = channels[~run.born_in[channels]]
                if new.size:
                    run.birth("input", torch.from_numpy(new).to(self.device))
            else:
                fired = x.index_select(1, run.unborn_in)
                if bool(fired.any()):
                    run.birth("input", run.unborn_in[fired.any(0)])
        if run.rec and not self.first and not run.born_rec.all():
            fired = y_prev.index_select(1, run.unborn_rec)
            if bool(fired.any()):
                run.birth("recurrent", run.unborn_rec[fired.any(0)])

    def _propagate(self, l: int, run: _LayerRun, lj: LocalJacobian, x: torch.Tensor,
                   y_prev: torch.Tensor, lower: tuple | None, channels: np.ndarray | None) -> None:
        B, n, m, stats = self.B, run.n, run.m, self._stats
        # 1. lazy diagonal pass (leak, reset): T <- D T; materialise ill-conditioned units.
        #    At the first step M is zero, so D has nothing to act on: T stays I (this keeps the
        #    structural zeros of the first step exact instead of zero up to rounding).
        if self.first:
            T = self.T[l]
        else:
            T = _absorb(self.T[l], lj.diag, run.struct)
            stats.add_macs("diag", B * n * run.nd)
            if _ill(T, m):
                T = self._materialise(l, run, T)
        self.T[l] = T
        # births after the diagonal pass: newborn columns are zero, nothing to materialise
        self._births(run, x, y_prev, channels)
        # 2. the local factors of all groups, scaled by T^{-1} once: (B, n, G m)
        phi = lj.phi
        parts = [phi[g] for g in run.rec] + [phi[g] for g in run.inp] + \
            [lj.unit_phi[u] for u in run.units]
        phis = torch.cat(parts, -1)
        if m == 1:
            phis = phis / T
        else:
            phis = torch.linalg.solve_triangular(
                T.unsqueeze(2), phis.view(B, n, run.G, m, 1), upper=True).reshape(B, n, -1)
        stats.add_macs("immediate", B * n * run.G * run.nd)
        # 3. recurrent coupling through the previous step's active units only
        Rr, Ri = len(run.rec), len(run.inp)
        if self._N[l] is not None and Rr:
            self._couple(l, run, phis[..., : Rr * m], self.Wrec[l], Rr, self._N[l])
        # 4. input coupling from the layer below (same step, its active units only)
        if lower is not None and Ri:
            self._couple(l, run, phis[..., Rr * m : (Rr + Ri) * m], self.Win[l], Ri, lower)
        # 5. immediate Jacobian of every born entry: one gather-multiply-index_add_
        src = torch.cat((x, y_prev, run.ones), 1)
        phi_take, src_take = run.takes
        vals = phis.take(phi_take) * src.take(src_take)
        self.Mflat[l].index_add_(1, run.dest, vals)
        stats.add_macs("immediate", B * run.entries)

    def _materialise(self, l: int, run: _LayerRun, T: torch.Tensor) -> torch.Tensor:
        """``Mt[i] <- T_i Mt[i]``, ``T_i <- I`` for the units outside the hysteresis band.

        For ``m = 1`` and at least a quarter of the units, one in-place pass over the whole
        prefix (factor 1 for the others) is cheaper than gathering and scattering the rows.
        """
        B, m = self.B, run.m
        rows = _outside_reset_band(T, m)
        k = rows.numel()
        full = _full_pass(k, run.n, m)
        if full:
            F = torch.ones_like(T)
            F[:, rows] = T[:, rows]
        for j, Mv in enumerate(self.Mv[l]):
            P = self.blocks[j].p_born
            if not P:
                continue
            if full:
                self._prefix(l, j, P).mul_(F if run.layout == "rows" else F.view(B, 1, -1))
            elif run.layout == "rows":  # Mv (B, n, m, C)
                Tk, sel = T[:, rows], Mv[:, rows, :, :P]
                Mv[:, rows, :, :P] = Tk[..., None] * sel if m == 1 else Tk @ sel
            else:  # Mv (B, C, n, m)
                Tk, sel = T[:, rows], Mv[:, :P, rows, :]
                Mv[:, :P, rows, :] = Tk[:, None] * sel if m == 1 else \
                    torch.einsum("bkcd,bpkd->bpkc", Tk, sel)
            self._stats.add_macs("diag", B * (run.n if full else k) * run.nd * P)
        T[:, rows] = 1.0 if m == 1 else torch.eye(m, dtype=T.dtype, device=T.device)
        return T

    def _couple(self, l: int, run: _LayerRun, phis: torch.Tensor, W: torch.Tensor, G: int,
                src: tuple) -> None:
        """``Mt[j] += (sum_g T^{-1} phi_g * W_g[:, K_b]) @ N[j]`` for one source layer."""
        Kp, k, Ns, Ps, _, src_cols, _ = src
        if not k:
            return
        B, n, m = self.B, run.n, run.m
        WK = W[:, :, Kp]  # (G, n, B, k)
        if m == 1:
            A = torch.einsum("big,gibk->bik", phis, WK)
        else:
            A = torch.einsum("bigc,gibk->bick", phis.reshape(B, n, G, m), WK).reshape(B, n * m, k)
        self._stats.add_macs("coupling", B * n * m * k * G)
        for j, (Nj, P) in enumerate(zip(Ns, Ps)):
            if not P:
                continue
            if run.layout == "rows":  # (R x k)(k x P)
                self._prefix(l, j, P).baddbmm_(A, Nj.transpose(1, 2) if src_cols else Nj)
            else:  # (P x k)(k x R)
                self._prefix(l, j, P).baddbmm_(Nj if src_cols else Nj.transpose(1, 2),
                                               A.transpose(1, 2))
            self._stats.add_macs("coupling", B * n * m * k * P)

    def _emission(self, l: int, run: _LayerRun, lj: LocalJacobian) -> tuple:
        """Rows ``K_b`` of ``N = G M + G_direct`` for every block (the output influence)."""
        B, n, m = self.B, run.n, run.m
        act = self._act[l] = active_units(lj)
        if B == 1:
            _, K = act.nonzero(as_tuple=True)
            k = len(K)
            Kp = K[None]
            count = k
        else:
            cnt = act.sum(1)
            k = int(cnt.max())
            Kp = act.to(self.dtype).topk(k, 1, sorted=False).indices
            count = cnt.sum()
        cols = run.layout == "cols"
        if not k:
            return (Kp, 0, [], [], count, cols, None)
        T = self.T[l]
        gT = lj.gain * T if m == 1 else (lj.gain.unsqueeze(-2) @ T).squeeze(-2)
        gTK = gT[self.bcol, Kp]  # (B, k, m)
        if run.c0:
            gTK = gTK[..., run.c0 :]
        Ns, Ps = [], []
        if cols:  # gather the columns (r = i m + c) of the active units: N^T (B, P, k)
            mc = m - run.c0
            idx = (Kp[:, :, None] * m + run.comp).view(B, 1, k * mc)
            gTK = gTK.view(B, 1, k, mc)
        for j, Mv in enumerate(self.Mv[l]):
            P = self.blocks[j].p_born
            if cols:
                sel = self._prefix(l, j, P).gather(2, idx.expand(B, P, k * mc))
                Nj = (sel * gTK.view(B, 1, k)) if mc == 1 else \
                    torch.einsum("bpkc,bpkc->bpk", sel.view(B, P, k, mc), gTK.expand(B, P, k, mc))
            elif m == 1:
                Nj = self.M[l][j][self.bcol, Kp, :P] * gTK
            else:
                Nj = torch.einsum("bkc,bkcp->bkp", gTK, Mv[self.bcol, Kp, run.c0 :, :P])
            Ns.append(Nj)
            Ps.append(P)
            self._stats.add_macs("emission", B * k * (m - run.c0) * P)
        self._stats.add_macs("emission", B * n * m * m)
        for u, gd in lj.gain_direct.items():
            if Ns[l].shape[1 if cols else 2] == 0:  # shard without columns in this block
                continue
            vals = gd[self.bcol, Kp]
            if u in run.ukeep:  # per-unit columns another shard tracks contribute nothing here
                vals = vals * run.ukeep[u][Kp].squeeze(-1)
            if cols:
                Ns[l].scatter_add_(1, run.ucol[u][Kp].view(B, 1, k), vals.view(B, 1, k))
            else:
                Ns[l].scatter_add_(2, run.ucol[u][Kp], vals[..., None])
            self._stats.add_macs("emission", B * k)
        return (Kp, k, Ns, Ps, count, cols, None)  # topk does not order active units first

    # ---------------------------------------------------------------- gradients
    @property
    def seq_active(self) -> list[torch.Tensor]:
        """``|K^l_{t,b}|`` of the last step per layer, ``(B,)`` each: what exact RTRL of
        sequence ``b`` needs (beta per sequence); computed when read, not per step."""
        return [a.sum(-1) for a in self._act]

    def layer_outputs(self) -> list[torch.Tensor]:
        """The outputs ``y^l_t`` of every layer at the last step, ``(B, n_l)`` each."""
        return [s.y for s in self.states]

    def accumulate(self, dL_dy: torch.Tensor, layer: int = -1) -> None:
        """Add :math:`(dL_t/dy^l_t)^T N^l_t` (rows K only) to the gradient; ``layer`` is the
        layer ``l`` whose output the loss term reads (default: the last). A per-layer term
        (:mod:`evrtrl.regularizers`) reaches the parameter blocks ``j <= l``."""
        layer = check_upstream("EventRTRL", dL_dy, self.B, [r.n for r in self.runs], layer)
        if self.compiled is not None:
            return self.compiled.accumulate(self, dL_dy, layer)
        Kp, k, Ns, Ps, _, cols, _ = self._N[layer]
        if not k:
            return
        eq = "bk,bpk->p" if cols else "bk,bkp->p"
        e = dL_dy.gather(1, Kp)
        for j, (Nj, P) in enumerate(zip(Ns, Ps)):
            if P:
                g = self._grad_prefix(j, P)
                try:
                    g.add_(torch.einsum(eq, e, Nj))
                except RuntimeError:
                    if e.dtype == self.dtype:
                        raise
                    e = e.to(self.dtype)
                    g.add_(torch.einsum(eq, e, Nj))
                self._stats.add_macs("gradient", self.B * k * P)

    def _prefix(self, l: int, j: int, P: int) -> torch.Tensor:
        """The born prefix of ``M[l][j]`` (a view, cached until a birth widens it)."""
        key = (l, j)
        view = self._prefixes.get(key)
        if view is None or view[0] != P:
            M = self.M[l][j]
            view = (P, M[:, :, :P] if self.runs[l].layout == "rows" else M[:, :P])
            self._prefixes[key] = view
        return view[1]

    def _grad_prefix(self, j: int, P: int) -> torch.Tensor:
        view = self._prefixes.get(("grad", j))
        if view is None or view[0] != P:
            view = (P, self.grad[j][:P])
            self._prefixes[("grad", j)] = view
        return view[1]

    def influence(self, l: int, j: int) -> torch.Tensor:
        """The influence matrix ``M^{l,j} = T^l Mt^{l,j}`` materialised (B, n m, p_live of block j)."""
        self.settle()
        run = self.runs[l]
        B, n, m = self.B, run.n, run.m
        M = self.M[l][j] if run.layout == "rows" else self.M[l][j].transpose(1, 2)
        T = self.T[l] if m > 1 else self.T[l][..., None]
        return (T @ M.reshape(B, n, m, -1)).reshape(B, n * m, -1)

    def gradients(self) -> dict[str, torch.Tensor]:
        """Accumulated gradient, ``{parameter name: tensor of its shape}``.

        Not checked here: :func:`evrtrl.gradients` and :class:`evrtrl.OnlineLearner` check it
        once per update (:func:`evrtrl.finite.check_finite`, naming parameter, update and step),
        as for every engine.
        """
        self.settle()
        out: dict[str, torch.Tensor] = {}
        for blk, g in zip(self.blocks, self.grad):
            flat = torch.zeros(blk.p_total, dtype=self.dtype, device=self.device)
            flat[blk.order[: blk.width]] = g[: blk.width]
            out.update(blk.unflatten(flat))
        return out

    def zero_grad(self) -> None:
        self.settle()
        for g in self.grad:
            g.zero_()

    def influence_density(self) -> float:
        """Fraction of non-zero entries of the stored influence tensors (all blocks)."""
        self.settle()
        return nonzero_fraction(m for row in self.M for m in row)


def _check_structure(layer: Layer) -> None:
    for co, ci in layer.diag_structure:
        if ci < co:
            raise ValueError(
                f"{type(layer).__name__}.diag_structure must be upper triangular "
                f"(entry {(co, ci)}); the in-place diagonal pass relies on it"
            )
