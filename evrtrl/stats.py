"""Per-step statistics and multiply-add counts that every engine reports.

``alpha``: fraction of units with a non-zero output; ``beta``: fraction of units in the
active set K (non-zero output derivative: spiking or inside the pseudo-derivative
window); ``gamma``: fraction of live influence columns that are born (non-zero so far).
Counts are over all layers and the batch (a unit is active when it is active in any
sequence of the batch, which is what the batched engine computes with).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["EngineStats"]


@dataclass
class EngineStats:
    """Accumulated by an engine; ``macs`` counts multiply-adds by kind."""

    engine: str
    p_live: int = 0
    p_total: int = 0
    influence_bytes: int = 0
    steps: int = 0
    alpha: list[float] = field(default_factory=list)
    beta: list[float] = field(default_factory=list)
    gamma: list[float] = field(default_factory=list)
    macs: dict[str, int] = field(default_factory=dict)
    macs_per_step: list[int] = field(default_factory=list)

    def add_macs(self, kind: str, n: int) -> None:
        """Count ``n`` multiply-adds; work after ``end_step`` (the gradient of that step's
        loss) belongs to the step just ended."""
        self.macs[kind] = self.macs.get(kind, 0) + int(n)
        if self._open or not self.macs_per_step:
            self._step_macs += int(n)
        else:
            self.macs_per_step[-1] += int(n)

    def begin_step(self) -> None:
        self._step_macs = 0
        self._open = True

    def end_step(self, alpha: float, beta: float, gamma: float) -> None:
        self.steps += 1
        self.alpha.append(alpha)
        self.beta.append(beta)
        self.gamma.append(gamma)
        self.macs_per_step.append(self._step_macs)
        self._open = False

    _step_macs: int = field(default=0, init=False, repr=False)
    _open: bool = field(default=False, init=False, repr=False)

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
