"""Finite numbers or a named error: the one check used by gradients, the online learner and
the checkpoint writer.

Called once per optimizer update (or once per gradient computation, or once per
checkpoint), never per step: the cost is one ``isfinite`` pass over the parameters.
"""
from __future__ import annotations

from typing import Iterable

import torch

from evrtrl.errors import NonFiniteError

__all__ = ["check_finite"]


def check_finite(named: Iterable[tuple[str, torch.Tensor | None]], what: str, when: str = "") -> None:
    """Raise :class:`NonFiniteError` naming the first tensor of ``named`` that holds NaN or inf.

    ``named``: ``(name, tensor)`` pairs (None and non-float tensors are skipped); ``what``:
    what the tensors are (``"gradient of parameter"``); ``when``: where in the run, e.g.
    ``" at update 3 (step t=11)"``.
    """
    items = [(name, t) for name, t in named
             if t is not None and (t.is_floating_point() or t.is_complex())]
    if not items:
        return
    flags = [torch.isfinite(t).all() for _, t in items]
    if bool(torch.stack([f.to(flags[0].device) for f in flags]).all()):  # one synchronisation
        return
    for (name, t), ok in zip(items, flags):
        if bool(ok):
            continue
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        first = tuple((~torch.isfinite(t)).nonzero()[0].tolist()) if t.dim() else ()
        raise NonFiniteError(
            f"{what} '{name}' holds {n_nan} NaN and {n_inf} inf of {t.numel()} entries (first at index "
            f"{first}){when}"
        )
