"""Random parameter-sparsity masks."""
from __future__ import annotations

from typing import Mapping

import torch

from evrtrl.errors import ConfigError

__all__ = ["random_masks"]


def random_masks(
    shapes: Mapping[str, tuple[int, ...]], density: float, *, seed: int | None = None
) -> dict[str, torch.Tensor]:
    """One bool mask per weight with exactly ``round(density * numel)`` live entries.

    ``shapes`` is e.g. ``EGRU.weight_shapes(d, n)``; entries are drawn uniformly without
    replacement, independently per weight, from ``seed``.

    >>> from evrtrl.models import EGRU
    >>> m = random_masks(EGRU.weight_shapes(2, 4), 0.5, seed=0)
    >>> int(m["U_u"].sum())
    8
    """
    if not (0.0 < density <= 1.0):
        raise ConfigError(f"random_masks: density must be in (0, 1], got {density!r}")
    g = torch.Generator().manual_seed(0 if seed is None else int(seed))
    out = {}
    for name, shape in shapes.items():
        numel = 1
        for s in shape:
            numel *= int(s)
        k = max(1, round(density * numel))
        flat = torch.zeros(numel, dtype=torch.bool)
        flat[torch.randperm(numel, generator=g)[:k]] = True
        out[name] = flat.view(*shape)
    return out
