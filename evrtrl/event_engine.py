r"""Exact event-driven RTRL (DESIGN.md section 4).

For layer ``l`` and each parameter block ``j <= l`` the engine holds
:math:`M^{l,j}_t = ds^l_t / d\theta^j` (batch x n m x live columns of block j, used up to
the born prefix) and per step applies, in place,

.. math::

    M^{l,j} \leftarrow D_t M^{l,j}
        + A^{\rm rec}_t[:, K^l_{t-1}]\, N^{l,j}_{t-1}[K^l_{t-1}]
        + A^{\rm in}_t[:, K^{l-1}_t]\, N^{l-1,j}_t[K^{l-1}_t] + \bar M_t,

with :math:`A_t = \sum_g \phi^g_t \odot W^g` over the recurrent (input) projections and
:math:`N^{l,j}_t[K] = G_t M^{l,j}_t[K] + G^\theta_t`, the output influence of the active
units K only. The savings are exact zeros, each skipped for real:

1. only the rows K of N exist, and only the columns K of :math:`A_t` are formed;
2. :math:`\bar M_t` is scattered only for sources with an event in this step's buckets;
3. pruned entries have no column; unborn columns are outside the prefix;
4. the gradient :math:`e_t^T N_t` is accumulated from the rows K alone.

Lazy diagonal pass. The diagonal pass :math:`M \leftarrow D_t M` would touch every entry
of M at every step (``n m p`` multiply-adds, and on a CPU a full read and write of M,
which costs as much time as the coupling itself). Instead each unit ``i`` keeps a small
upper-triangular ``m x m`` transform :math:`T_i` with

.. math::

    M[i] = T_i\, \tilde M[i], \qquad T_i \leftarrow D_{t,i} T_i \quad (O(n m^2) \text{ per step}),

and every contribution :math:`C` to row block ``i`` (coupling, immediate Jacobian) is added as
:math:`\tilde M[i] \mathrel{+}= T_i^{-1} C[i]` (a triangular solve on the small factor ``A``
or the scattered values, never on a ``p``-wide row). Readers use
:math:`N[K] = (G T)[K]\, \tilde M[K]`. A unit is *materialised* (:math:`\tilde M[i]
\leftarrow T_i \tilde M[i]`, :math:`T_i \leftarrow I`) only when :math:`T_i` becomes
ill-conditioned: a diagonal entry outside :math:`[2^{-40}, 2^{40}]` (this includes a
singular :math:`D`, e.g. the zero reset of a spiking LIF unit) or an off-diagonal entry
larger than :math:`2^{8}` times the diagonal entry of its column (bounding the cancellation in
:math:`T\tilde M` to a factor 256). For EGRU (``m = 1``) ``T`` is a per-row scale; for LIF
it is the power of the constant block :math:`[[a, b], [0, \alpha]]` of silent units,
applied lazily as DESIGN.md section 4 suggests. The results are the same up to rounding.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch

from evrtrl.events import EventBucket, EventQueue
from evrtrl.influence import ColumnBlock
from evrtrl.layer import Layer, LocalJacobian
from evrtrl.network import check_parameters, layers_of
from evrtrl.stats import EngineStats

__all__ = ["EventRTRL", "DegradesToDenseWarning", "diag_pass_macs"]


class DegradesToDenseWarning(UserWarning):
    """The pseudo-derivative has infinite support: every unit is always active."""


#: conditioning bounds of the lazy transforms T (module docstring)
_T_LO, _T_HI, _T_OFF = 2.0 ** -40, 2.0 ** 40, 2.0 ** 8


def _diag_matrix(diag: torch.Tensor, structure, m: int) -> torch.Tensor:
    """Per-unit ``D`` as ``(B, n, m, m)`` from its structural entries."""
    D = diag.new_zeros(diag.shape[0], diag.shape[1], m, m)
    for k, (co, ci) in enumerate(structure):
        D[:, :, co, ci] = diag[:, :, k]
    return D


def _absorb(T: torch.Tensor, diag: torch.Tensor, structure) -> tuple[torch.Tensor, torch.Tensor]:
    """``T <- D T`` per unit; returns the new T and the units that must be materialised.

    A unit is flagged when, in any sequence of the batch, a diagonal entry of ``D T`` leaves
    ``[2^-40, 2^40]`` (or is not finite), or an off-diagonal entry exceeds ``2^8`` times the
    diagonal entry of its column.
    """
    m = T.shape[-1]
    Tn = _diag_matrix(diag, structure, m) @ T if m > 1 else diag[:, :, :1, None] * T
    d = torch.diagonal(Tn, dim1=-2, dim2=-1).abs()  # (B, n, m)
    bad = ~((d >= _T_LO) & (d <= _T_HI)).all(-1)
    if m > 1:
        bad |= (Tn.triu(1).abs() > _T_OFF * d[:, :, None, :]).any(-1).any(-1)
    return Tn, bad.any(0).nonzero(as_tuple=True)[0]


def _tri_solve(T: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``T^{-1} X`` for upper-triangular ``T (B, r, m, m)`` and ``X (B, r, m, k)``."""
    m = T.shape[-1]
    if m == 1:
        return X / T
    out = torch.empty_like(X)
    for c in reversed(range(m)):  # back substitution over the m state components
        acc = X[:, :, c]
        for c2 in range(c + 1, m):
            acc = acc - T[:, :, c, c2, None] * out[:, :, c2]
        out[:, :, c] = acc / T[:, :, c, c, None]
    return out


def diag_pass_macs(layer: Layer, lj: LocalJacobian, P: int, state: Any = None) -> tuple[int, Any]:
    """Multiply-adds of one step's lazy diagonal pass over ``P`` born columns (benchmarks).

    Replays the engine's transforms: ``B n nd`` for ``T <- D T`` plus ``B nd P`` per
    materialised unit (``nd = len(diag_structure)``). ``state`` is the transform tensor,
    None before the first step. Returns ``(macs, state)``.
    """
    B, n, m = lj.diag.shape[0], layer.hidden_size, layer.state_size
    nd = len(layer.diag_structure)
    if state is None:
        state = torch.eye(m, dtype=lj.diag.dtype).expand(B, n, m, m).clone()
    T, bad = _absorb(state, lj.diag, layer.diag_structure)
    T[:, bad] = torch.eye(m, dtype=T.dtype)
    return B * n * nd + B * nd * bad.numel() * P, T


class EventRTRL:
    """Event-driven exact RTRL over a layer or a stack; one instance per run of ``B`` streams.

    Use: ``y = eng.step(x_t)`` then ``eng.accumulate(dL/dy_t)``; ``eng.gradients()``.
    """

    name = "event"

    def __init__(self, model: Any, batch: int) -> None:
        self.refs = layers_of(model)
        check_parameters(model)
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
        self.blocks = [ColumnBlock(r.layer, r.prefix) for r in self.refs]
        zeros = lambda *s: torch.zeros(*s, dtype=self.dtype, device=self.device)  # noqa: E731
        self.M = [
            [zeros(self.B, r.layer.hidden_size * r.layer.state_size, self.blocks[j].p_live)
             for j in range(l + 1)]
            for l, r in enumerate(self.refs)
        ]
        self.grad = [zeros(b.p_live) for b in self.blocks]
        # lazy diagonal pass: M^{l,j}[i] = T^l_i Mt^{l,j}[i] (module docstring)
        self.T = [torch.eye(r.layer.state_size, dtype=self.dtype, device=self.device)
                  .expand(self.B, r.layer.hidden_size, -1, -1).clone() for r in self.refs]
        self.states = [r.layer.initial_state(self.B) for r in self.refs]
        # flat scatter index of each per-unit parameter's immediate term: row (i, c), column
        # of p_i; fixed for the run (those columns are allocated at construction)
        self.unit_idx = []
        for l, r in enumerate(self.refs):
            n, m, cap = r.layer.hidden_size, r.layer.state_size, self.blocks[l].p_live
            rows = torch.arange(n * m, device=self.device).view(n, m)
            self.unit_idx.append({u: (rows * cap + cols[:, None]).flatten()
                                  for u, cols in self.blocks[l].unit_cols.items()})
        # output influence of each layer's last step: (active rows K, [N^{l,j}])
        self.N: list[tuple[torch.Tensor, list[torch.Tensor]] | None] = [None] * len(self.refs)
        self.queue = EventQueue(len(self.refs))
        self.first = True
        self.stats = EngineStats(
            "event",
            p_live=sum(b.p_live for b in self.blocks),
            p_total=sum(b.p_total for b in self.blocks),
            influence_bytes=sum(m.numel() * m.element_size() for row in self.M for m in row),
        )
        self.refresh()

    def refresh(self) -> None:
        """Re-read the (masked) weights, e.g. after an optimizer step."""
        with torch.no_grad():
            self.w = [r.layer.weights() for r in self.refs]

    # ----------------------------------------------------------------- stepping
    @torch.no_grad()
    def step(self, x: torch.Tensor) -> torch.Tensor:
        """Advance all layers by one step on input ``x`` (B, d); returns the last output."""
        self.stats.begin_step()
        bucket = EventBucket.of(x)
        lower: tuple[torch.Tensor, list[torch.Tensor]] | None = None
        alpha = beta = 0.0
        for l, ref in enumerate(self.refs):
            layer, w, prev = ref.layer, self.w[l], self.states[l]
            new, aux = layer.step(w, prev, bucket.values)
            lj = layer.local_jacobian(w, prev, bucket.values, new, aux, self.first)
            self._propagate(l, lj, prev, bucket, lower)
            lower = self._emission(l, lj)
            self.N[l] = lower
            self.states[l] = new
            bucket = self.queue.emit(l, new.y)
            alpha += float((new.y != 0).sum()) / self.B
            beta += lower[0].numel()
        n_units = sum(r.layer.hidden_size for r in self.refs)
        self.first = False
        self.stats.end_step(
            alpha / n_units, beta / n_units,
            sum(b.p_born for b in self.blocks) / max(1, self.stats.p_live),
        )
        return bucket.values

    def _propagate(
        self, l: int, lj: LocalJacobian, prev: Any, bucket: EventBucket,
        lower: tuple[torch.Tensor, list[torch.Tensor]] | None,
    ) -> None:
        layer, w, B = self.refs[l].layer, self.w[l], self.B
        n, m = layer.hidden_size, layer.state_size
        Ms = self.M[l]
        # 1. lazy diagonal pass (leak, reset): T <- D T; materialise ill-conditioned units.
        #    At the first step M is zero, so D has nothing to act on: T stays I (this keeps the
        #    structural zeros of the first step exact instead of zero up to rounding).
        nd = len(layer.diag_structure)
        if self.first:
            T, bad = self.T[l], self.T[l].new_zeros(0, dtype=torch.long)
        else:
            T, bad = _absorb(self.T[l], lj.diag, layer.diag_structure)
            self.stats.add_macs("diag", B * n * nd)
        if bad.numel():
            for j, M in enumerate(Ms):
                P = self.blocks[j].p_born
                if P:
                    Mv = M.view(B, n, m, -1)
                    rows = Mv[:, bad, :, :P]
                    Mv[:, bad, :, :P] = T[:, bad] @ rows if m > 1 else T[:, bad] * rows
                    self.stats.add_macs("diag", B * bad.numel() * nd * P)
            T[:, bad] = torch.eye(m, dtype=T.dtype, device=T.device)
        self.T[l] = T
        # 2. recurrent coupling through the previous step's active units only
        if self.N[l] is not None:
            K, Ns = self.N[l]
            self._couple(layer, lj, w, "recurrent", K, Ns, Ms, T)
        # 3. input coupling from the layer below (same step, its active units only)
        if lower is not None:
            K, Ns = lower
            self._couple(layer, lj, w, "input", K, Ns, Ms, T)
        # 4. immediate Jacobian of this layer's own block, only for sources with events
        blk, M = self.blocks[l], Ms[l]
        Mf, cap = M.view(B, -1), M.shape[-1]
        comp = torch.arange(m, device=self.device)
        own = self.queue.recurrent(l)
        for proj in blk.projections:
            src = bucket if proj.source == "input" else own
            if src is None or src.index.numel() == 0:
                continue
            rows, cols, owner = blk.fire(proj, src.index)
            vals = lj.phi[proj.name][:, rows, :] * src.values[:, src.index[owner], None]
            vals = _tri_solve(T[:, rows], vals[..., None])
            idx = ((rows * m)[:, None] + comp) * cap + cols[:, None]
            Mf.index_add_(1, idx.flatten(), vals.reshape(B, -1))
            self.stats.add_macs("immediate", B * rows.numel() * nd)
        for u, idx in self.unit_idx[l].items():
            vals = _tri_solve(T, lj.unit_phi[u][..., None])
            Mf.index_add_(1, idx, vals.reshape(B, -1))
            self.stats.add_macs("immediate", B * n * nd)

    def _couple(self, layer: Layer, lj: LocalJacobian, w: Any, source: str,
                K: torch.Tensor, Ns: list[torch.Tensor], Ms: list[torch.Tensor],
                T: torch.Tensor) -> None:
        """``Mt[j] += T^{-1} (sum_g phi_g * W_g[:, K]) @ N[j]`` for the projections from ``source``."""
        if K.numel() == 0:
            return
        B, n, m = self.B, layer.hidden_size, layer.state_size
        A = None
        for proj in layer.projections:
            if proj.source != source:
                continue
            term = lj.phi[proj.name][:, :, :, None] * getattr(w, proj.name)[:, K][None, :, None, :]
            A = term if A is None else A + term
            self.stats.add_macs("coupling", B * n * m * K.numel())
        if A is None:
            return
        A = _tri_solve(T, A)  # contributions enter Mt as T^{-1} C
        self.stats.add_macs("coupling", B * n * len(layer.diag_structure) * K.numel())
        A = A.reshape(B, n * m, K.numel())
        for j, Nj in enumerate(Ns):
            P = Nj.shape[-1]
            if P:
                Ms[j][:, :, :P].baddbmm_(A, Nj)
                self.stats.add_macs("coupling", B * n * m * K.numel() * P)

    def _emission(self, l: int, lj: LocalJacobian) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Rows K of ``N = G M + G_direct`` for every block (the output influence)."""
        layer, B = self.refs[l].layer, self.B
        n, m = layer.hidden_size, layer.state_size
        active = (lj.gain != 0).any(-1).any(0)
        for gd in lj.gain_direct.values():
            active |= (gd != 0).any(0)
        K = active.nonzero(as_tuple=True)[0]
        # N[K] = G M[K] = (G T)[K] Mt[K]; T upper triangular: components >= min(gain_structure)
        gain = (lj.gain[:, K, None, :] @ self.T[l][:, K]).squeeze(-2) if m > 1 \
            else lj.gain[:, K, :] * self.T[l][:, K, 0]
        comps = range(min(layer.gain_structure), m)
        Ns = []
        for j, M in enumerate(self.M[l]):
            P = self.blocks[j].p_born
            Mv = M.view(B, n, m, -1)
            Nj = None
            for c in comps:
                term = Mv[:, K, c, :P] * gain[:, :, c, None]
                Nj = term if Nj is None else Nj + term
            Ns.append(Nj)
            self.stats.add_macs("emission", B * K.numel() * (len(comps) * P + m * m))
        rows = torch.arange(K.numel(), device=self.device)
        for u, gd in lj.gain_direct.items():
            Ns[l][:, rows, self.blocks[l].unit_cols[u][K]] += gd[:, K]
        return K, Ns

    # ---------------------------------------------------------------- gradients
    @torch.no_grad()
    def accumulate(self, dL_dy: torch.Tensor) -> None:
        """Add :math:`(dL_t/dy_t)^T N_t` of the last layer (rows K only) to the gradient."""
        K, Ns = self.N[-1]
        if K.numel() == 0:
            return
        e = dL_dy[:, K].to(self.dtype)
        for j, Nj in enumerate(Ns):
            P = Nj.shape[-1]
            if P:
                self.grad[j][:P] += torch.einsum("bk,bkp->p", e, Nj)
                self.stats.add_macs("gradient", self.B * K.numel() * P)

    def influence(self, l: int, j: int) -> torch.Tensor:
        """The influence matrix ``M^{l,j} = T^l Mt^{l,j}`` materialised (B, n m, p_live of block j)."""
        B, n, m = self.B, self.refs[l].layer.hidden_size, self.refs[l].layer.state_size
        return (self.T[l] @ self.M[l][j].view(B, n, m, -1)).reshape(B, n * m, -1)

    def gradients(self) -> dict[str, torch.Tensor]:
        """Accumulated gradient, ``{parameter name: tensor of its shape}``."""
        out: dict[str, torch.Tensor] = {}
        for blk, g in zip(self.blocks, self.grad):
            flat = torch.zeros(blk.p_total, dtype=self.dtype, device=self.device)
            flat[blk.order[: blk.p_born]] = g[: blk.p_born]
            out.update(blk.unflatten(flat))
        return out

    def zero_grad(self) -> None:
        for g in self.grad:
            g.zero_()


def _check_structure(layer: Layer) -> None:
    for co, ci in layer.diag_structure:
        if ci < co:
            raise ValueError(
                f"{type(layer).__name__}.diag_structure must be upper triangular "
                f"(entry {(co, ci)}); the in-place diagonal pass relies on it"
            )
