r"""Per-layer loss terms: the activity regulariser of the EGRU papers.

The loss interface of every engine has two parts: ``loss_fn(y_t, t)`` on the last
layer's output, and an optional ``layer_loss(l, y^l_t, t)`` that is called for the
output of **every** layer ``l`` of a stack (``0 .. L-1``, the last one included) at
every step and returns a scalar tensor or ``None``. The gradient is that of

.. math:: \mathcal L = \sum_t \Big[ L_t(y^{L-1}_t) + \sum_l R_{l,t}(y^l_t) \Big],

exact in every engine: RTRL adds :math:`(\partial R_{l,t}/\partial y^l_t)^T N^l_t` with
:math:`N^l_t = dy^l_t/d\theta` (the output influence of layer ``l``, which the engines
carry anyway), BPTT adds the terms to the loss it differentiates.

:class:`ActivityRegularizer` is the activity penalty used to train EGRUs sparse
(Subramoney et al., ICLR 2023): for layer ``l`` with ``n_l`` units and a batch of
``B`` sequences,

.. math::

    R_{l,t}(y^l_t) = \lambda\, s \sum_{b=1}^{B}
        \max\Big(0,\ \frac{1}{n_l}\sum_{i=1}^{n_l} |y^l_{t,b,i}| - \rho\Big),

an L1 penalty on the outputs (``target`` :math:`\rho = 0`, the default) or its
target-rate form (only mean activity above :math:`\rho` per sequence and step is
penalised). :math:`\lambda` is ``strength``; ``scale`` :math:`s` defaults to ``1/B``
(a mean over the batch). The training loop sets :math:`s = 1/(B_{\rm global} T)` so the
penalty is averaged like its cross-entropy. EGRU outputs are
:math:`y = c\,H(c - \vartheta)`, so the penalty acts on firing units only, through
``c`` and the threshold (its pseudo-derivative), and pushes units below threshold.
:math:`\partial|y|/\partial y = \mathrm{sign}(y)` is zero for silent units: the
regulariser's error vector lives in the active set K, where the engines already work.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from evrtrl.errors import ConfigError

__all__ = ["ActivityRegularizer"]


@dataclass(frozen=True)
class ActivityRegularizer:
    """``ActivityRegularizer(strength, target=0.0, scale=None)``: a ``layer_loss``.

    Call as ``reg(l, y, t)`` with ``y`` of shape ``(B, n_l)``; returns the scalar penalty
    (module docstring) or None when ``strength`` is 0.
    """

    strength: float
    target: float = 0.0
    scale: float | None = None

    def __post_init__(self) -> None:
        if not (self.strength >= 0):
            raise ConfigError(f"ActivityRegularizer: strength must be >= 0, got {self.strength}")
        if not (self.target >= 0):
            raise ConfigError(f"ActivityRegularizer: target must be >= 0, got {self.target}")
        if self.scale is not None and not (self.scale > 0):
            raise ConfigError(f"ActivityRegularizer: scale must be > 0, got {self.scale}")

    def __call__(self, l: int, y: torch.Tensor, t: int) -> torch.Tensor | None:
        if self.strength == 0:
            return None
        rate = y.abs().mean(-1)
        if self.target:
            rate = torch.clamp(rate - self.target, min=0.0)
        return self.strength * self._scale(y) * rate.sum()

    def _scale(self, y: torch.Tensor) -> float:
        """``scale``, or one over the batch of ``y`` when it is None."""
        return self.scale if self.scale is not None else 1.0 / y.shape[0]

    def value_and_grad(self, l: int, y: torch.Tensor, t: int
                       ) -> tuple[torch.Tensor | None, torch.Tensor | None, dict]:
        r"""The penalty and its gradient in closed form (:data:`evrtrl.engine.LayerLossFn`):
        :math:`\partial R/\partial y_{b,i} = \lambda s\,\mathrm{sign}(y_{b,i}) / n_l` where the
        sequence's rate is at or above the target (every sequence for target 0)."""
        if self.strength == 0:
            return None, None, {}
        n = y.shape[-1]
        rate = y.abs().mean(-1)
        s = self._scale(y)
        g = torch.sign(y) * (self.strength * s / n)
        if self.target:
            over = rate - self.target
            g = g * (over >= 0).to(y.dtype)[:, None]
            rate = torch.clamp(over, min=0.0)
        return self.strength * s * rate.sum(), g, {}
