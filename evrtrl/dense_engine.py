r"""Dense RTRL, the reference: explicit :math:`J_t` and :math:`\bar M_t`, nothing skipped.

For layer ``l`` (state size ``n m``) with columns for the parameters of layers ``<= l``:

.. math::

    J_t = D_t + A^{\rm rec}_t G_{t-1}, \qquad
    J^{x}_t = A^{\rm in}_t G^{l-1}_t, \\
    M^l_t = J_t M^l_{t-1} + J^x_t M^{l-1}_t + \bar M_t,

with :math:`D_t` block diagonal, :math:`A_t = \sum_g \phi^g_t \odot W^g` and
:math:`G = \partial y/\partial s` (block ``n x n m``), all built as dense matrices.
:math:`\bar M_t` holds the immediate derivatives and the direct paths of per-unit
parameters through :math:`y_{t-1}` (and :math:`y^{l-1}_t`). ``columns="all"`` gives every
parameter entry a column, pruned or not (textbook RTRL, O(n^4)); ``columns="live"``
drops the pruned ones ("dense-live").
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch

from evrtrl.engine import check_step_input, check_upstream, nonzero_fraction
from evrtrl.errors import UnknownMethodError
from evrtrl.influence import ColumnBlock
from evrtrl.layer import Layer, LocalJacobian
from evrtrl.memory import check_memory, plan_memory
from evrtrl.network import check_parameters, layers_of
from evrtrl.shards import ColumnShard
from evrtrl.stats import EngineStats

__all__ = ["DenseRTRL", "dense_step_jacobians", "StepJacobians"]


def _block_diag(diag: torch.Tensor, structure, n: int, m: int) -> torch.Tensor:
    """``D`` as a dense ``(B, n m, n m)`` matrix from its per-unit structural entries."""
    B = diag.shape[0]
    D = diag.new_zeros(B, n, m, n, m)
    units = torch.arange(n, device=diag.device)
    for k, (co, ci) in enumerate(structure):
        D[:, units, co, units, ci] = diag[:, :, k]
    return D.reshape(B, n * m, n * m)


def _gain_matrix(gain: torch.Tensor) -> torch.Tensor:
    """``G`` as a dense ``(B, n, n m)`` matrix: ``G[b, k, k m + c] = gain[b, k, c]``."""
    B, n, m = gain.shape
    G = gain.new_zeros(B, n, n, m)
    units = torch.arange(n, device=gain.device)
    G[:, units, units, :] = gain
    return G.reshape(B, n, n * m)


def _coupling(layer: Layer, lj: LocalJacobian, w: Any, source: str) -> torch.Tensor | None:
    """``A = sum_g phi_g * W_g`` over projections from ``source``: ``(B, n m, n_src)``."""
    A = None
    for proj in layer.projections:
        if proj.source == source:
            t = lj.phi[proj.name][:, :, :, None] * getattr(w, proj.name)[None, :, None, :]
            A = t if A is None else A + t
    if A is None:
        return None
    B, n, m, n_src = A.shape
    return A.reshape(B, n * m, n_src)


def _immediate(layer: Layer, lj: LocalJacobian, w: Any, x: torch.Tensor, y_prev: torch.Tensor,
               block: ColumnBlock) -> torch.Tensor:
    """Immediate Jacobian over every entry of the layer's parameters: ``(B, n m, p_total)``."""
    B, n, m = lj.gain.shape
    Mbar = lj.gain.new_zeros(B, n, m, block.p_total)
    masks = layer.masks
    for proj in layer.projections:
        src = x if proj.source == "input" else y_prev
        n_src = src.shape[1]
        o = block.offsets[proj.name]
        region = Mbar[..., o : o + n * n_src].view(B, n, m, n, n_src)
        diag = torch.diagonal(region, dim1=1, dim2=3)  # (B, m, n_src, n)
        diag.copy_(
            lj.phi[proj.name].permute(0, 2, 1)[:, :, None, :]
            * src[:, None, :, None]
            * masks[proj.name].t().to(src.dtype)[None, None]
        )
    for u in layer.unit_parameters:
        o = block.offsets[u]
        torch.diagonal(Mbar[..., o : o + n], dim1=1, dim2=3).copy_(lj.unit_phi[u].permute(0, 2, 1))
    return Mbar.reshape(B, n * m, block.p_total)


class StepJacobians(NamedTuple):
    """Explicit Jacobians of one step of one layer (batch-first)."""

    J: torch.Tensor  # (B, nm, nm): ds_t/ds_{t-1}, coupling through y_{t-1} included
    A_in: torch.Tensor | None  # (B, nm, d): ds_t/dx_t
    Mbar: torch.Tensor  # (B, nm, p_total): ds_t/dtheta of this layer, s_{t-1} held fixed
    lj: LocalJacobian


def dense_step_jacobians(
    layer: Layer, w: Any, prev: Any, x: torch.Tensor, new: Any, aux: Any, first: bool,
    prev_lj: LocalJacobian | None, block: ColumnBlock | None = None,
) -> StepJacobians:
    """Explicit ``J_t``, ``A^in_t`` and ``Mbar_t`` of one step, built from the local pieces.

    ``prev_lj`` is the previous step's :class:`LocalJacobian` (None at t = 0, where
    ``y_{-1}`` is a constant). ``Mbar_t`` includes the direct paths of per-unit
    parameters through ``y_{t-1}`` (``A^rec_t G^theta_{t-1}``). The dense engine uses
    exactly this; the tests compare it with ``torch.func.jacrev`` of ``layer.step``.
    """
    block = block or ColumnBlock(layer, "")
    lj = layer.local_jacobian(w, prev, x, new, aux, first)
    n, m = layer.hidden_size, layer.state_size
    J = _block_diag(lj.diag, layer.diag_structure, n, m)
    Mbar = _immediate(layer, lj, w, x, prev.y, block)
    A = _coupling(layer, lj, w, "recurrent")
    if A is not None and prev_lj is not None:
        J = J + A @ _gain_matrix(prev_lj.gain)
        for u, gd in prev_lj.gain_direct.items():
            o = block.offsets[u]
            Mbar[:, :, o : o + n] += A * gd[:, None, :]
    return StepJacobians(J, _coupling(layer, lj, w, "input"), Mbar, lj)


class DenseRTRL:
    """Dense RTRL over a layer or a stack (see module docstring); same use as EventRTRL.

    ``shard`` and ``allow_memory`` as for :class:`~evrtrl.event_engine.EventRTRL`; with
    ``columns="all"`` the shard splits every entry's column, with ``"live"`` the live ones.
    """

    def __init__(self, model: Any, batch: int, columns: str = "all", *,
                 shard: ColumnShard | None = None, allow_memory: bool = False) -> None:
        if columns not in ("all", "live"):
            raise UnknownMethodError(f"columns must be 'all' or 'live', got {columns!r}")
        self.name = "dense" if columns == "all" else "dense-live"
        self.refs = layers_of(model)
        check_parameters(model)
        check_memory(plan_memory(model, int(batch), self.name, shard=shard), allow=allow_memory,
                     device=self.refs[0].layer.device)
        self.B = int(batch)
        layer0 = self.refs[0].layer
        self.dtype, self.device = layer0.dtype, layer0.device
        self.blocks = [ColumnBlock(r.layer, r.prefix, shard) for r in self.refs]
        self.cols = [b.natural_columns(columns == "live") for b in self.blocks]
        self.widths = [c.numel() for c in self.cols]
        self.starts = [sum(self.widths[:j]) for j in range(len(self.widths) + 1)]
        # position of each per-unit parameter's column k within its block's columns; with a
        # shard only for the units ``sel`` whose column is here (all: a slice)
        self.unit_pos = []
        for b, cols in zip(self.blocks, self.cols):
            inv = torch.full((b.p_total,), -1, dtype=torch.long, device=self.device)
            inv[cols] = torch.arange(cols.numel(), device=self.device)
            n = b.layer.hidden_size
            pos = {}
            for u in b.layer.unit_parameters:
                at = inv[b.offsets[u] + torch.arange(n, device=self.device)]
                units = (at >= 0).nonzero(as_tuple=True)[0]
                pos[u] = (slice(None) if units.numel() == n else units, at[units])
            self.unit_pos.append(pos)
        self.M = [
            torch.zeros(self.B, r.layer.hidden_size * r.layer.state_size, self.starts[l + 1],
                        dtype=self.dtype, device=self.device)
            for l, r in enumerate(self.refs)
        ]
        self.states = [r.layer.initial_state(self.B) for r in self.refs]
        self.prev_lj: list[LocalJacobian | None] = [None] * len(self.refs)
        self.first = True
        self.grad = torch.zeros(self.starts[-1], dtype=self.dtype, device=self.device)
        self.stats = EngineStats(
            self.name,
            p_live=sum(b.p_live for b in self.blocks),
            p_total=sum(b.p_total for b in self.blocks),
            influence_bytes=sum(t.numel() * t.element_size() for t in self.M),
        )
        self.refresh()

    def refresh(self) -> None:
        with torch.no_grad():
            self.w = [r.layer.weights() for r in self.refs]

    def _direct(self, l: int, lj: LocalJacobian, A: torch.Tensor, out: torch.Tensor) -> None:
        """``out[:, :, cols of p_k] += A[:, :, k] * dy_k/dp_k`` for per-unit params of layer l."""
        base = self.starts[l]
        for u, gd in lj.gain_direct.items():
            sel, pos = self.unit_pos[l][u]
            out[:, :, base + pos] += A[:, :, sel] * gd[:, None, sel]

    @torch.no_grad()
    def step(self, x: torch.Tensor) -> torch.Tensor:
        check_step_input(self.name, x, self.B, self.refs[0].layer.input_size)
        self.stats.begin_step()
        B = self.B
        inp = x
        alpha = 0.0
        lj_below: LocalJacobian | None = None
        for l, ref in enumerate(self.refs):
            layer, w, prev = ref.layer, self.w[l], self.states[l]
            n, m = layer.hidden_size, layer.state_size
            nm = n * m
            new, aux = layer.step(w, prev, inp)
            sj = dense_step_jacobians(
                layer, w, prev, inp, new, aux, self.first, self.prev_lj[l], self.blocks[l]
            )
            lj, P = sj.lj, self.starts[l + 1]
            Mbar = x.new_zeros(B, nm, P)
            Mbar[:, :, self.starts[l]:] = sj.Mbar[:, :, self.cols[l]]
            self.stats.add_macs("immediate", B * nm * self.widths[l])
            if self.prev_lj[l] is not None and any(p.source == "recurrent" for p in layer.projections):
                self.stats.add_macs("jacobian", B * nm * n * nm)
            M_new = torch.bmm(sj.J, self.M[l]) + Mbar
            self.stats.add_macs("propagate", B * nm * nm * P)
            if l > 0:
                below = self.refs[l - 1].layer
                assert lj_below is not None and sj.A_in is not None
                nb = below.hidden_size * below.state_size
                Jx = sj.A_in @ _gain_matrix(lj_below.gain)
                self.stats.add_macs("jacobian", B * nm * below.hidden_size * nb)
                M_new[:, :, : self.starts[l]] += torch.bmm(Jx, self.M[l - 1])
                self.stats.add_macs("propagate", B * nm * nb * self.starts[l])
                self._direct(l - 1, lj_below, sj.A_in, M_new)
            self.M[l] = M_new
            self.prev_lj[l] = lj
            lj_below = lj
            self.states[l] = new
            inp = new.y
            alpha += float((new.y != 0).sum()) / B
        self.first = False
        n_units = sum(r.layer.hidden_size for r in self.refs)
        self.stats.end_step(alpha / n_units, 1.0, 1.0)
        return inp

    @torch.no_grad()
    def accumulate(self, dL_dy: torch.Tensor, layer: int = -1) -> None:
        """``grad += sum_b (dL/dy G) M + dL/dy G_direct`` for layer ``layer`` (default: last)."""
        l = check_upstream(self.name, dL_dy, self.B, [r.layer.hidden_size for r in self.refs], layer)
        lj = self.prev_lj[l]
        e = dL_dy.to(self.dtype)
        eG = torch.bmm(e[:, None, :], _gain_matrix(lj.gain))  # (B, 1, nm)
        self.grad[: self.starts[l + 1]] += torch.bmm(eG, self.M[l]).sum(dim=(0, 1))
        B, nm, P = self.M[l].shape
        self.stats.add_macs("gradient", B * e.shape[1] * nm + B * nm * P)
        for u, gd in lj.gain_direct.items():
            sel, pos = self.unit_pos[l][u]
            self.grad[self.starts[l] + pos] += (e * gd)[:, sel].sum(0)

    def gradients(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for j, (blk, cols) in enumerate(zip(self.blocks, self.cols)):
            flat = torch.zeros(blk.p_total, dtype=self.dtype, device=self.device)
            flat[cols] = self.grad[self.starts[j] : self.starts[j + 1]]
            out.update(blk.unflatten(flat))
        return out

    def zero_grad(self) -> None:
        self.grad.zero_()

    def layer_outputs(self) -> list[torch.Tensor]:
        """The outputs ``y^l_t`` of every layer at the last step, ``(B, n_l)`` each."""
        return [s.y for s in self.states]

    def influence_density(self) -> float:
        """Fraction of non-zero entries of the influence matrices."""
        return nonzero_fraction(self.M)
