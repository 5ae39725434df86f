r"""Metrics of a training run: the dense-RTRL cost formula and the CSV / JSON-lines logs.

Dense RTRL multiply-adds (what :class:`evrtrl.DenseRTRL` performs and counts, for the
same model, batch and number of steps; it does no skipping, so the count does not depend
on activity). Per layer ``l`` with ``n`` units, ``m`` state components (``nm = n m``),
``w_l`` columns of its own parameters (``p_total``, or ``p_live`` for ``dense-live``) and
``P_l = w_0 + ... + w_l`` columns of the parameters it depends on, one step costs

.. math::

    B\,[\; nm\,w_l \;(\bar M_t)
        + [t>0,\ \text{recurrent}]\; nm \cdot n \cdot nm \;(J_t = D_t + A_t G_{t-1})
        + (nm)^2 P_l \;(J_t M_{t-1}) \;]

plus, for ``l > 0`` with the layer below of ``n' m'`` states,
:math:`B\,[nm\, n' \cdot n'm' + nm \cdot n'm'\, P_{l-1}]` (input Jacobian and its product),
and for every step that has a loss, :math:`B\,[n_L \cdot nm_L + nm_L P_L]` (the gradient
:math:`e_t^T G_t M_t` of the last layer). The saving reported during training is
``macs_dense / macs_event``, the event engine's MACs being *counted* as it runs.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from evrtrl.atomic import atomic_write
from evrtrl.events import InputSequence, SparseSequence
from evrtrl.network import layers_of

__all__ = ["dense_rtrl_macs", "MetricsLog", "read_records", "data_lengths", "sequence_beta",
           "measure_beta", "active_counts"]


def data_lengths(x: InputSequence) -> torch.Tensor:
    """Steps that carry data per sequence of ``x`` ``(T, B, d)`` (dense or a
    :class:`~evrtrl.events.SparseSequence`): 1 + the last step with a non-zero input
    (padding with silence at the end is not counted); 0 for an empty one."""
    if isinstance(x, SparseSequence):
        steps = torch.repeat_interleave(torch.arange(1, x.T + 1),
                                        torch.from_numpy(np.diff(x.indptr)))
        nz = (x.values != 0).cpu()
        out = torch.zeros(x.B, dtype=torch.long)
        return out.scatter_reduce(0, (x.index.cpu() // x.d)[nz], steps[nz], "amax")
    T = x.shape[0]
    has = (x != 0).flatten(2).any(-1)  # (T, B)
    steps = torch.arange(1, T + 1, device=x.device)[:, None].expand_as(has)
    return (has * steps).max(0).values


def sequence_beta(active: torch.Tensor, lengths: torch.Tensor, sizes: Sequence[int]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-sequence beta from the event engine's active-set sizes.

    ``active``: ``(T, L, B)`` counts :math:`|K^l_{t,b}|` (``OnlineLearner.active``);
    ``lengths``: ``(B,)`` (:func:`data_lengths`); ``sizes``: units per layer. Returns
    ``(per_layer (L, B), overall (B,))`` with
    :math:`\beta^l_b = \frac{1}{L_b}\sum_{t < L_b} |K^l_{t,b}| / n_l` and the overall value
    over all units of the network; NaN for a sequence without data.
    """
    T = active.shape[0]
    keep = (torch.arange(T, device=active.device)[:, None] < lengths[None, :]).to(torch.float64)
    counts = (active.to(torch.float64) * keep[:, None, :]).sum(0)  # (L, B)
    n = torch.tensor(list(sizes), dtype=torch.float64)[:, None]
    L = lengths.to(torch.float64)
    per_layer = counts / n / L
    overall = counts.sum(0) / n.sum() / L
    return per_layer, overall


def active_counts(model: Any, x: torch.Tensor) -> torch.Tensor:
    """``(T, L, B)`` sizes of the event engine's per-sequence active sets on ``x``, from a
    forward pass and the same rule (:func:`evrtrl.event_engine.active_units` of each
    step's local Jacobian), without the influence matrices."""
    from evrtrl.event_engine import active_units
    from evrtrl.network import layers_of

    refs = layers_of(model)
    weights = [r.layer.weights() for r in refs]
    states = [r.layer.initial_state(x.shape[1]) for r in refs]
    out = []
    for t in range(x.shape[0]):
        inp, row = x[t], []
        for l, ref in enumerate(refs):
            new, aux = ref.layer.step(weights[l], states[l], inp)
            lj = ref.layer.local_jacobian(weights[l], states[l], inp, new, aux, t == 0)
            row.append(active_units(lj).sum(-1))
            states[l], inp = new, new.y
        out.append(torch.stack(row))
    return torch.stack(out)


@torch.no_grad()
def measure_beta(model: Any, batches: Iterable[torch.Tensor]) -> dict[str, float]:
    """Mean per-sequence beta (overall and per layer) of ``model`` on ``batches`` of inputs
    ``(T, B, d)``: the event engine's active sets (:func:`active_counts`)."""
    from evrtrl.network import layers_of

    sizes = [r.layer.hidden_size for r in layers_of(model)]
    per, tot = [], []
    for x in batches:
        lengths = data_lengths(x)
        pl, ov = sequence_beta(active_counts(model, x), lengths, sizes)
        ok = lengths > 0
        per.append(pl[:, ok])
        tot.append(ov[ok])
    per_t, tot_t = torch.cat(per, 1), torch.cat(tot)
    out = {"beta": float(tot_t.mean())}
    out.update({f"beta_l{l}": float(v) for l, v in enumerate(per_t.mean(1))})
    return out


def dense_rtrl_macs(model: Any, batch: int, steps: int, loss_steps: int | None = None,
                    columns: str = "all") -> int:
    """Multiply-adds of dense RTRL (module docstring) over ``steps`` steps of ``batch``
    streams, with a loss at ``loss_steps`` of them (default: every step)."""

    refs = layers_of(model)
    loss_steps = steps if loss_steps is None else loss_steps
    widths = []
    for r in refs:
        layer = r.layer
        if columns == "all":
            widths.append(sum(p.numel() for p in layer.parameters(recurse=False)))
        else:
            widths.append(layer.live_parameter_count)
    total = 0
    P = 0
    below = None
    for l, r in enumerate(refs):
        layer = r.layer
        n, m = layer.hidden_size, layer.state_size
        nm = n * m
        P_prev, P = P, P + widths[l]
        recurrent = any(p.source == "recurrent" for p in layer.projections)
        per_step = nm * widths[l] + nm * nm * P
        total += steps * per_step
        if recurrent and steps > 1:
            total += (steps - 1) * nm * n * nm
        if l > 0:
            nb, mb = below.hidden_size, below.state_size
            total += steps * (nm * nb * nb * mb + nm * nb * mb * P_prev)
        below = layer
    last = refs[-1].layer
    nmL = last.hidden_size * last.state_size
    total += loss_steps * (last.hidden_size * nmL + nmL * P)
    return batch * total


class MetricsLog:
    """Append-only logs ``<name>.csv`` and/or ``<name>.jsonl`` in a run directory.

    ``formats``: a subset of ``{"csv", "json"}``. The CSV header is the union of the
    keys of the records written so far (the file is rewritten when a new key appears,
    which happens at most a few times per run).
    """

    def __init__(self, run_dir: str | os.PathLike, name: str, formats: Iterable[str]) -> None:
        self.dir, self.name = Path(run_dir), name
        self.formats = set(formats)
        self.records: list[dict[str, Any]] = []
        self.keys: list[str] = []

    @property
    def csv_path(self) -> Path:
        return self.dir / f"{self.name}.csv"

    @property
    def json_path(self) -> Path:
        return self.dir / f"{self.name}.jsonl"

    def reset(self, records: list[dict[str, Any]]) -> None:
        """Rewrite both files from ``records`` (used on resume: the checkpoint's records
        are the truth; rows logged after the checkpoint are dropped and redone)."""
        self.records, self.keys = [], []
        for p in (self.csv_path, self.json_path):
            if p.exists():
                p.unlink()
        for r in records:
            self.write(r)

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(dict(record))
        if "json" in self.formats:
            with open(self.json_path, "a") as f:
                f.write(json.dumps(record, sort_keys=False) + "\n")
        if "csv" in self.formats:
            new = [k for k in record if k not in self.keys]
            if new:
                self.keys += new
                self._rewrite_csv()
            else:
                with open(self.csv_path, "a", newline="") as f:
                    csv.DictWriter(f, self.keys).writerow(record)

    def _rewrite_csv(self) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, self.keys)
                w.writeheader()
                for r in self.records:
                    w.writerow(r)

        atomic_write(self.csv_path, write)


def read_records(run_dir: str | os.PathLike, name: str) -> list[dict[str, Any]]:
    """Records of ``<name>.jsonl`` (or ``<name>.csv``) in ``run_dir``; [] if neither."""
    run_dir = Path(run_dir)
    jp, cp = run_dir / f"{name}.jsonl", run_dir / f"{name}.csv"
    if jp.exists():
        with open(jp) as f:
            return [json.loads(line) for line in f if line.strip()]
    if cp.exists():
        out = []
        with open(cp, newline="") as f:
            for row in csv.DictReader(f):
                rec: dict[str, Any] = {}
                for k, v in row.items():
                    try:
                        rec[k] = float(v) if v not in ("", None) else None
                    except ValueError:
                        rec[k] = v
                out.append(rec)
        return out
    return []
