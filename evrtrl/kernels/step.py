r"""The compiled path of :class:`evrtrl.EventRTRL`: one C++ call per layer and step.

:class:`CompiledStep` runs the same step as the engine's pure-torch methods
(``_propagate`` + ``_emission``; the arithmetic is in ``engine_kernel.cpp`` beside this
file) on the engine's own data (the layout of :mod:`evrtrl.event_engine`'s docstring), so
the two paths can be swapped at any step. Per layer and step:

1. the cell step and its local Jacobian pieces: the cell's compiled kernel when one is
   registered for the layer (:func:`register_cell_kernel`; EGRU and LIF in
   :mod:`evrtrl.models.kernels`, next to their pure steps) and covers its configuration,
   else the layer's pure Python ``step`` + ``local_jacobian``;
2. births of new sources (Python: the column bookkeeping of :mod:`evrtrl.influence`);
3. one call of ``layer_update``: lazy transforms, coupling through the active units of
   each sequence, the immediate table, the output-influence rows.

Coverage: every cell on CPU in float32 or float64 (the engine kernel only sees the
:class:`~evrtrl.layer.LocalJacobian` data). Other devices and dtypes run the pure-torch path.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any, Callable, NamedTuple

import torch

from evrtrl.errors import UnsupportedError
from evrtrl.kernels.build import kernel_mode, load, require

__all__ = ["CompiledStep", "CellKernel", "register_cell_kernel", "cell_kernel_for", "kernel_module",
           "COMPILED_LAYOUT",
           "engine_module", "ENGINE_SOURCE", "registered_cell_kernels"]

ENGINE_SOURCE = Path(__file__).with_name("engine_kernel.cpp")
ENGINE_MODULE = "evrtrl_engine_kernel"
#: dtypes the compiled kernels are built for
DTYPES = (torch.float32, torch.float64)


class CellKernel:
    """A cell's compiled step (interface; implementations live beside the cells in models/).

    ``refresh(weights)`` re-packs the weights; ``step(prev, x, first)`` returns
    ``(new_state, diag, phis, gain, gain_direct)`` with ``phis`` ``(B, n, G m)`` in the
    engine's group order and ``gain_direct`` ``(U, B, n)`` for the per-unit parameters
    named in :attr:`direct`.
    """

    #: the per-unit parameters with a direct output gain, in the order of ``gain_direct``
    direct: tuple[str, ...] = ()

    def refresh(self, weights: Any) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def step(self, prev: Any, x: torch.Tensor, first: bool) -> tuple:  # pragma: no cover
        raise NotImplementedError


#: layer class -> factory(layer) returning a CellKernel, or None when the configuration is
#: not covered (then the layer's pure step runs and the engine kernel does the rest)
_CELL_KERNELS: dict[type, tuple[Callable[[Any], CellKernel | None], str]] = {}


def register_cell_kernel(cls: type, factory: Callable[[Any], CellKernel | None],
                         covers: str = "") -> None:
    """Register the compiled step of cell class ``cls`` (``covers``: what it covers, for doctor)."""
    _CELL_KERNELS[cls] = (factory, covers)


def registered_cell_kernels() -> dict[str, str]:
    """Cell class name -> what its compiled step covers."""
    return {c.__name__: covers for c, (_, covers) in _CELL_KERNELS.items()}


def cell_kernel_for(layer: Any) -> CellKernel | None:
    """The compiled step of ``layer``, None when none covers it."""
    entry = _CELL_KERNELS.get(type(layer))
    return entry[0](layer) if entry is not None else None


def engine_module(required: bool = False) -> ModuleType | None:
    """The compiled engine kernel (built on first use)."""
    if required:
        return require(ENGINE_MODULE, [ENGINE_SOURCE])
    return load(ENGINE_MODULE, [ENGINE_SOURCE])


#: the influence layout of the compiled path under ``layout="auto"``: its rank-k update skips
#: the zeros of A row by row, which beat the BLAS on the transposed layout at every size
#: measured (docs/benchmarks.md, "compiled path")
COMPILED_LAYOUT = "rows"


def kernel_module(device: torch.device, dtype: torch.dtype, mode: str | None = None) -> ModuleType | None:
    """The compiled engine kernel for a run on ``device`` in ``dtype``; None for pure torch.

    ``mode`` (default ``$EVRTRL_KERNEL``): ``"torch"`` gives None; ``"auto"`` gives None
    where the kernels do not apply (not CPU, not float32/float64) or cannot be built;
    ``"compiled"`` raises :class:`UnsupportedError` there instead.
    """
    mode = kernel_mode(mode)
    if mode == "torch":
        return None
    why = None
    if torch.device(device).type != "cpu":
        why = f"the compiled kernels run on CPU; the model is on {device}"
    elif dtype not in DTYPES:
        why = f"the compiled kernels are built for float32 and float64, not {dtype}"
    if why is not None:
        if mode == "compiled":
            raise UnsupportedError(why)
        return None
    return engine_module(required=(mode == "compiled"))


class _LayerStep(NamedTuple):
    """What a queued step keeps of one layer: its local Jacobian pieces, its input and
    previous output, the length of its immediate table and the per-unit columns."""

    diag: torch.Tensor
    phis: torch.Tensor
    gain: torch.Tensor
    gain_direct: torch.Tensor
    x: torch.Tensor
    y_prev: torch.Tensor
    entries: int
    ucol: torch.Tensor


class _Deferred(NamedTuple):
    """A queued step: per layer a :class:`_LayerStep` and the summed upstream gradient
    (None: none), the born columns of every block before and after the step's births, and
    the step's position in the statistics' per-step lists."""

    layers: list[_LayerStep]
    e: list[torch.Tensor | None]
    first: bool
    P_before: list[int]
    P_after: list[int]
    index: int


class CompiledStep:
    """The event engine's step and gradient accumulation through the compiled kernels."""

    def __init__(self, mod: ModuleType, engine: Any, defer: int = 1,
                 scratch: list[torch.Tensor] | None = None) -> None:
        self.mod = mod
        self.cells = [cell_kernel_for(r.layer) for r in engine.refs]
        B, dt, dev = engine.B, engine.dtype, engine.device
        self.empty = torch.empty(0, 0, 0, dtype=dt, device=dev)
        self.no_idx = torch.empty(B, 0, dtype=torch.long, device=dev)
        self.all_rows = torch.empty(0, dtype=torch.long, device=dev)  # counts: every row active
        self.struct = [[co * run.m + ci for co, ci in r.layer.diag_structure]
                       for r, run in zip(engine.refs, engine.runs)]
        self.runs = engine.runs
        self._ucols: dict[tuple, torch.Tensor] = {}
        self.no_direct = [torch.empty(0, B, run.n, dtype=dt, device=dev) for run in engine.runs]
        # the queued steps (flush), oldest first; several only in the row layout
        self.defer = max(1, int(defer)) if all(run.layout == "rows" for run in engine.runs) else 1
        self.queue: list[_Deferred] = []
        self.no_e = torch.empty(0, dtype=dt, device=dev)
        # layer_update's spike count (alpha) is taken in step(): it gets no output to count
        self.no_y = torch.empty(0, dtype=dt, device=dev)
        # chunk_update's reach sets (engine_kernel.cpp, reach_couple): per layer l and block
        # j <= l, a bitset over block j's units for every row of M^{l,j}, (B, R_l, words_j);
        # at the start a row reaches only its own unit's segment (M is zero)
        self.seg = [blk.seg_ptr for blk in engine.blocks]
        self.reach: list[list[torch.Tensor]] = []
        for l, run in enumerate(engine.runs):
            row = []
            for j, blk in enumerate(engine.blocks[: l + 1]):
                words = (blk.layer.hidden_size + 63) // 64
                bits = torch.zeros(B, run.n, run.m, words, dtype=torch.long, device=dev)
                if j == l:
                    unit = torch.arange(run.n, device=dev)
                    own = torch.zeros(run.n, words, dtype=torch.long, device=dev)
                    own[unit, unit // 64] = torch.bitwise_left_shift(torch.ones_like(unit), unit % 64)
                    bits[:] = own[None, :, None, :]
                row.append(bits.view(B, run.R, words))
            self.reach.append(row)
        # chunk_update's buffers (rows of N in the chunk, the panels' aligned copies of M),
        # kept over flushes, and over resets (``scratch``: the previous step's), so that a
        # long run or a training run allocates them once; grown by the kernel
        NL = len(engine.runs)
        count = NL * (NL + 1) + NL
        self.scratch = scratch if scratch is not None and len(scratch) == count else \
            [torch.empty(0, dtype=torch.uint8) for _ in range(count)]

    @property
    def covered(self) -> list[bool]:
        """Per layer: True when its cell step is compiled too (else its pure step runs)."""
        return [c is not None for c in self.cells]

    def refresh(self, engine: Any) -> None:
        for cell, w in zip(self.cells, engine.w):
            if cell is not None:
                cell.refresh(w)

    def _local(self, engine: Any, l: int, prev: Any, x: torch.Tensor) -> tuple:
        cell = self.cells[l]
        if cell is not None:
            new, diag, phis, gain, gd = cell.step(prev, x, engine.first)
            return new, diag, phis, gain, (self.no_direct[l] if gd is None else gd), cell.direct
        run, layer, w = engine.runs[l], engine.refs[l].layer, engine.w[l]
        new, aux = layer.step(w, prev, x)
        lj = layer.local_jacobian(w, prev, x, new, aux, engine.first)
        parts = [lj.phi[g] for g in run.rec] + [lj.phi[g] for g in run.inp] + \
            [lj.unit_phi[u] for u in run.units]
        phis = torch.cat(parts, -1)
        names = tuple(lj.gain_direct)
        gd = torch.stack([lj.gain_direct[u] for u in names]) if names else self.no_direct[l]
        return new, lj.diag, phis, lj.gain, gd, names

    def _ucol(self, l: int, names: tuple) -> torch.Tensor:
        """Columns ``(U, n)`` of the per-unit parameters ``names`` in block ``l``."""
        key = (l, names)
        cols = self._ucols.get(key)
        if cols is None:
            run = self.runs[l]
            cols = torch.stack([run.block.unit_cols[u] for u in names]) if names else \
                torch.empty(0, run.n, dtype=torch.long, device=self.no_idx.device)
            self._ucols[key] = cols
        return cols

    def _source(self, N: tuple | None) -> tuple:
        """``(Kp, k, [N_j], counts)`` of an output influence ``engine._N[l]`` for the kernel
        (the padding rows ``Kp[b, counts[b]:]`` are skipped; empty counts: none padded)."""
        if N is None:
            return self.no_idx, 0, [], self.all_rows
        return N[0], N[1], N[2], N[6] if N[6] is not None else self.all_rows

    def step(self, engine: Any, x: torch.Tensor, channels: Any) -> torch.Tensor:
        """One step of every layer (``x`` dense); same effects as the pure-torch step. The
        forward parts (cell steps, births, active sets, statistics) run now; the influence
        update is queued and run by :meth:`flush`, at the latest when ``defer`` steps wait."""
        stats = engine._stats
        P_before = [b.width for b in engine.blocks]
        layers = []
        alpha = beta = 0
        if self.defer > 1:  # queued past this call: the caller (or xbuf) may reuse its buffer
            x = x.clone(memory_format=torch.contiguous_format)
        for l, run in enumerate(engine.runs):
            prev = engine.states[l]
            new, diag, phis, gain, gd, direct = self._local(engine, l, prev, x)
            engine._births(run, x, prev.y, channels if l == 0 else None)
            act = gain.any(-1)  # the active set per sequence (seq_active), as active_units()
            engine._act[l] = act = act | (gd != 0).any(0) if gd.numel() else act
            layers.append(_LayerStep(diag, phis, gain, gd, x, prev.y, run.entries,
                                     self._ucol(l, direct)))
            engine.states[l] = new
            x = new.y
            alpha += int(torch.count_nonzero(x))  # host reads are free on the CPU
            beta += int(act.sum())
        self.queue.append(_Deferred(layers, [None] * len(layers), engine.first, P_before,
                                    [b.width for b in engine.blocks], len(stats.macs_per_step)))
        engine.first = False
        born = sum(b.p_born for b in engine.blocks)
        stats.end_step(alpha, beta, born / max(1, stats.p_live), divisor=engine.B * engine.n_units)
        if len(self.queue) >= self.defer:
            self.flush(engine)
        return x

    def flush(self, engine: Any) -> None:
        """Run the queued steps' influence updates and gradient terms: one step through
        ``layer_update`` per layer, several through one ``chunk_update`` (sequence by sequence,
        each panel of M's columns through all of them while it stays in cache)."""
        q = self.queue
        if not q:
            return
        self.queue = []
        if len(q) == 1:
            return self._update_one(engine, q[0])
        runs = engine.runs
        NL = len(runs)
        Kp0, k0, N0, C0 = [], [], [], []
        for l in range(NL):
            Kp, k, Ns, cnt = self._source(engine._N[l])
            Kp0.append(Kp)
            k0.append(k)
            N0.append(Ns)
            C0.append(cnt)
        col = lambda f: [[getattr(s.layers[l], f) for s in q] for l in range(NL)]  # noqa: E731
        es = [[s.e[l] if s.e[l] is not None else self.no_e for s in q] for l in range(NL)]
        layers, macs = self.mod.chunk_update(
            engine.M, engine.T, self.struct, [run.c0 for run in runs],
            [len(run.rec) for run in runs],
            [W if W is not None else self.empty for W in engine.Wrec],
            [len(run.inp) for run in runs],
            [W if W is not None else self.empty for W in engine.Win],
            [run.phi_idx for run in runs], [run.src_idx for run in runs],
            [run.dest for run in runs], [q[-1].layers[l].ucol for l in range(NL)],
            Kp0, k0, N0, C0, col("diag"), col("phis"), col("gain"), col("gain_direct"), col("x"),
            col("y_prev"), es, col("entries"),
            [s.P_before for s in q], [s.P_after for s in q], [s.first for s in q], engine.grad,
            self.seg, self.reach, self.scratch)
        P_last = q[-1].P_after
        for l, (Kp, k, Ns, cnt, count) in enumerate(layers):
            engine._N[l] = (Kp, k, Ns, P_last[: l + 1] if k else [], count, False, cnt)
        for s, per_step in zip(q, macs):
            for kind, v in zip(("diag", "immediate", "coupling", "emission", "gradient"), per_step):
                if v:
                    engine._stats.add_macs(kind, v, step=s.index)

    def _update_one(self, engine: Any, s: _Deferred) -> None:
        """The influence update and gradient terms of one queued step (``layer_update``)."""
        lower = None
        for l, run in enumerate(engine.runs):
            diag, phis, gain, gd, x, y_prev, _, ucol = s.layers[l]  # a _LayerStep
            # the columns of block l before this step's births (blocks below: after theirs)
            P_mat = s.P_after[:l] + [s.P_before[l]]
            P_born = s.P_after[: l + 1]
            Krec, krec, Nrec, Crec = self._source(engine._N[l])
            Klow, klow, Nlow, Clow = self._source(lower)
            Wrec = engine.Wrec[l] if engine.Wrec[l] is not None else self.empty
            Win = engine.Win[l] if engine.Win[l] is not None else self.empty
            Kp, k, Ns, cnt, count, _, macs = self.mod.layer_update(
                engine.M[l], run.layout == "cols", P_mat, P_born, engine.T[l], diag,
                self.struct[l], s.first, phis, len(run.rec), Wrec, Krec, krec, Nrec, Crec,
                len(run.inp), Win, Klow, klow, Nlow, Clow, run.phi_idx, run.src_idx, run.dest,
                x, y_prev, gain, gd, ucol, run.c0, self.no_y)
            for kind, v in zip(("diag", "immediate", "coupling", "emission"), macs):
                if v:
                    engine._stats.add_macs(kind, v, step=s.index)
            lower = engine._N[l] = (Kp, k, Ns, P_born if k else [], count, False, cnt)
        for l, e in enumerate(s.e):
            if e is not None:
                self._accumulate_now(engine, e, l, s.index)
        for row in self.reach:  # layer_update keeps no reach sets: every row may reach all
            for bits in row:
                bits.fill_(-1)

    def accumulate(self, engine: Any, dL_dy: torch.Tensor, layer: int = -1) -> None:
        """Add :math:`(dL_t/dy^l_t)^T N^l_t` of layer ``layer`` (default: the last) to the gradient
        (at the next :meth:`flush` when the step is queued)."""
        if self.queue:
            slot = self.queue[-1].e
            layer %= len(slot)
            e = dL_dy.detach()
            e = (e if e.dtype == engine.dtype else e.to(engine.dtype)).contiguous()
            slot[layer] = e if slot[layer] is None else slot[layer] + e
            return
        self._accumulate_now(engine, dL_dy.detach(), layer)

    def _accumulate_now(self, engine: Any, e: torch.Tensor, layer: int, step: int | None = None) -> None:
        Kp, k, Ns, Ps, _, _, cnt = engine._N[layer]
        if not k:
            return
        self.mod.accumulate(engine.grad, e, Kp, k, Ns, cnt if cnt is not None else self.all_rows)
        for P in Ps:
            if P:
                engine._stats.add_macs("gradient", engine.B * k * P, step=step)
