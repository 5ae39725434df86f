"""Per-step statistics and multiply-add counts that every engine reports, and a call counter.

``alpha``: fraction of units with a non-zero output; ``beta``: fraction of units in the
active set K (non-zero output derivative: spiking or inside the pseudo-derivative
window), per sequence and averaged over the batch (the event engine keeps one active set
per sequence); ``gamma``: fraction of live influence columns that are born (non-zero so
far). Counts are over all layers.

An engine may hand ``alpha`` and ``beta`` to :meth:`EngineStats.end_step` as 0-d tensors:
they are copied into one preallocated device buffer and read back (one host
synchronisation for all pending steps) only when the lists are read, e.g. by
:meth:`EngineStats.summary` once per update, or when the buffer is full
(:data:`PENDING_STEPS`), never per step.

:func:`torch_calls_per_step` counts the Python-level torch calls (functions, methods and
tensor attribute reads, as seen by a :class:`torch.overrides.TorchFunctionMode`) of an
engine's ``step`` + ``accumulate``: at small sizes a step's time is these calls' overhead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["EngineStats", "CallCounter", "torch_calls_per_step", "PENDING_STEPS"]


#: steps of pending device scalars held before one read-back (one host synchronisation)
PENDING_STEPS = 4096


@dataclass
class EngineStats:
    """Accumulated by an engine; ``macs`` counts multiply-adds by kind."""

    engine: str
    p_live: int = 0
    p_total: int = 0
    influence_bytes: int = 0
    steps: int = 0
    macs: dict[str, int] = field(default_factory=dict)
    macs_per_step: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._alpha: list = []
        self._beta: list = []
        self._gamma: list[float] = []
        self._step_macs = 0
        self._open = False
        # pending device scalars: written into one preallocated buffer (no per-step tensor
        # stays alive, which would fragment the heap), read back in one go
        self._buf: torch.Tensor | None = None
        self._slots: list[tuple[list, int, int, float]] = []

    def _read(self) -> None:
        """Replace the pending entries of ``alpha``/``beta`` by floats (one host read)."""
        if self._slots and self._buf is not None:
            vals = self._buf.tolist()
            for lst, i, slot, div in self._slots:
                lst[i] = vals[slot] / div
            self._slots = []

    def _pending(self, lst: list, v: torch.Tensor, divisor: float) -> None:
        if len(self._slots) == PENDING_STEPS * 2:
            self._read()
        if self._buf is None or self._buf.device != v.device:
            self._buf = torch.zeros(PENDING_STEPS * 2, dtype=torch.float64, device=v.device)
        slot = len(self._slots)
        self._buf[slot] = v
        self._slots.append((lst, len(lst), slot, divisor))
        lst.append(None)

    @property
    def alpha(self) -> list[float]:
        self._read()
        return self._alpha

    @property
    def beta(self) -> list[float]:
        self._read()
        return self._beta

    @property
    def gamma(self) -> list[float]:
        return self._gamma

    def add_macs(self, kind: str, n: int, step: int | None = None) -> None:
        """Count ``n`` multiply-adds; work after ``end_step`` (the gradient of that step's
        loss) belongs to the step just ended, deferred work to the closed step at position
        ``step`` of :attr:`macs_per_step`."""
        self.macs[kind] = self.macs.get(kind, 0) + n
        if step is not None:
            if step < len(self.macs_per_step):  # a caller may have cleared the per-step lists
                self.macs_per_step[step] += n
        elif self._open or not self.macs_per_step:
            self._step_macs += n
        else:
            self.macs_per_step[-1] += n

    def begin_step(self) -> None:
        self._step_macs = 0
        self._open = True

    def end_step(self, alpha: Any, beta: Any, gamma: float, divisor: float = 1.0) -> None:
        """Close a step. ``alpha`` and ``beta`` are numbers, or 0-d tensors read lazily;
        both are divided by ``divisor`` (e.g. pass counts and the number of units)."""
        self.steps += 1
        for lst, v in ((self._alpha, alpha), (self._beta, beta)):
            if isinstance(v, torch.Tensor):
                self._pending(lst, v, divisor)
            else:
                lst.append(v / divisor)
        self._gamma.append(gamma)
        self.macs_per_step.append(self._step_macs)
        self._open = False

    @property
    def total_macs(self) -> int:
        return sum(self.macs.values())

    def summary(self) -> dict[str, Any]:
        """Means over steps and totals, as plain numbers."""
        mean = lambda v: sum(v) / len(v) if v else 0.0  # noqa: E731
        return {
            "engine": self.engine,
            "steps": self.steps,
            "alpha": mean(self.alpha),
            "beta": mean(self.beta),
            "gamma_final": self.gamma[-1] if self.gamma else 0.0,
            "p_live": self.p_live,
            "p_total": self.p_total,
            "influence_bytes": self.influence_bytes,
            "macs_total": self.total_macs,
            "macs_per_step": self.total_macs / self.steps if self.steps else 0.0,
        }


class CallCounter(TorchFunctionMode):
    """Counts every Python-level torch call made while active (``with CallCounter() as c``).

    ``c.calls`` is the total, ``c.by_name`` the count per function name.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.by_name: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        name = getattr(func, "__name__", str(func))
        self.by_name[name] = self.by_name.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def torch_calls_per_step(
    engine: Any, xs: Sequence[Any], dL_dys: Sequence[torch.Tensor],
    warm: int = 0, reduce: Callable[[list[int]], float] = lambda c: sum(c) / len(c),
) -> float:
    """Torch calls of ``engine.step(x_t)`` + ``engine.accumulate(dL_dy_t)``, reduced over steps.

    The first ``warm`` steps run uncounted; ``reduce`` (default: the mean) folds the
    per-step counts of the remaining steps. The loss function is not part of the count:
    ``dL_dys`` holds the loss gradients, computed beforehand.
    """
    counts = []
    for t, (x, g) in enumerate(zip(xs, dL_dys)):
        if t < warm:
            engine.step(x)
            engine.accumulate(g)
            continue
        with CallCounter() as c:
            engine.step(x)
            engine.accumulate(g)
        counts.append(c.calls)
    return reduce(counts)
