"""Pseudo-derivatives of the Heaviside step and the spike function that uses them.

A spiking or event-based unit emits ``e = H(s)`` with ``H(s) = 1 if s > 0 else 0``
(strict). Its derivative is replaced everywhere (BPTT, dense and event-driven
RTRL alike) by a pseudo-derivative ``psi(s)``.

Only a pseudo-derivative with *compact support* has exact zeros away from the
threshold, and only exact zeros let the event-driven engine skip work: units
outside the window ``|s| < width`` are silent in the Jacobian. A surrogate with
infinite support (:class:`FastSigmoid`) still works in the dense and BPTT
engines; the event engine warns that it degrades to dense work with it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from evrtrl.errors import ConfigError

__all__ = ["PseudoDerivative", "Triangle", "FastSigmoid", "heaviside"]


@dataclass(frozen=True)
class PseudoDerivative:
    """Base record: ``gamma`` is the peak height, ``width`` the scale of ``s``."""

    gamma: float
    width: float

    #: True when psi(s) == 0 exactly for |s| >= width (enables event-driven skipping).
    compact: bool = False

    def __post_init__(self) -> None:
        if not (self.gamma > 0 and self.width > 0):
            raise ConfigError(
                f"{type(self).__name__}: gamma and width must be > 0, got gamma={self.gamma}, "
                f"width={self.width}"
            )

    def __call__(self, s: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Triangle(PseudoDerivative):
    r"""Triangle pseudo-derivative with compact support.

    .. math:: \psi(s) = \gamma \max(0, 1 - |s| / w)

    Zero for :math:`|s| \ge w`: the width ``w`` is the knob between learning
    signal (wide) and sparsity of the Jacobian (narrow).
    """

    gamma: float = 0.7
    width: float = 0.5
    compact: bool = True

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        return self.gamma * torch.clamp(1.0 - s.abs() / self.width, min=0.0)


@dataclass(frozen=True)
class FastSigmoid(PseudoDerivative):
    r"""SuperSpike / fast-sigmoid pseudo-derivative (infinite support).

    .. math:: \psi(s) = \gamma / (1 + |s| / w)^2

    Never exactly zero, so every unit is always "active" for the event engine.
    """

    gamma: float = 1.0
    width: float = 0.1
    compact: bool = False

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        return self.gamma / (1.0 + s.abs() / self.width) ** 2


class _Heaviside(torch.autograd.Function):
    """H(s) forward, psi(s) backward; composable with torch.func (vmap rule generated)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(s: torch.Tensor, pd: PseudoDerivative) -> torch.Tensor:  # type: ignore[override]
        return (s > 0).to(s.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        s, pd = inputs
        ctx.save_for_backward(s)
        ctx.save_for_forward(s)
        ctx.pd = pd

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (s,) = ctx.saved_tensors
        return grad * ctx.pd(s), None

    @staticmethod
    def jvp(ctx, s_tangent, _pd_tangent):  # forward-mode (torch.func.jvp / jacfwd)
        (s,) = ctx.saved_tensors
        return s_tangent * ctx.pd(s)


def heaviside(s: torch.Tensor, pd: PseudoDerivative) -> torch.Tensor:
    r"""Spike function :math:`H(s) = [s > 0]` whose derivative is ``pd(s)``."""
    return _Heaviside.apply(s, pd)
