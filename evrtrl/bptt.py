r"""BPTT, the ground truth: torch autograd through the very same step functions, as an engine.

:class:`BPTT` satisfies :class:`evrtrl.Engine`: ``step`` runs the forward pass with
autograd on (:class:`evrtrl.network.Unroll`), ``accumulate(dL_t/dy_t)`` adds
:math:`\langle \partial L_t/\partial y_t,\, y_t\rangle` to a surrogate scalar whose gradient
is :math:`\sum_t \partial L_t/\partial\theta` by the chain rule, and ``gradients()``
differentiates it. ``refresh()`` (after an optimizer step) re-reads the weights and cuts
the history: the online learner's truncated BPTT over windows of ``k`` steps.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from evrtrl.engine import check_step_input, check_upstream
from evrtrl.network import Unroll, check_parameters, layers_of
from evrtrl.stats import EngineStats

__all__ = ["BPTT", "forward_macs"]


def forward_macs(model: Any, batch: int) -> int:
    """Multiply-adds of the dense matrix products of one forward step."""
    total = 0
    for ref in layers_of(model):
        for proj in ref.layer.projections:
            total += batch * getattr(ref.layer, proj.name).numel()
    return total


class BPTT:
    """Backpropagation through time over a layer or a stack, for ``batch`` streams.

    Counted multiply-adds: the forward products and twice that for the backward pass.
    """

    name = "bptt"

    def __init__(self, model: Any, batch: int) -> None:
        check_parameters(model)
        self.refs = layers_of(model)
        self.B = int(batch)
        self.params = {r.prefix + n: p for r in self.refs for n, p in r.layer.named_parameters(recurse=False)}
        self.stats = EngineStats("bptt", p_live=sum(r.layer.live_parameter_count for r in self.refs),
                                 p_total=sum(p.numel() for p in self.params.values()))
        self._fmacs = forward_macs(model, self.B)
        self._n_units = sum(r.layer.hidden_size for r in self.refs)
        with torch.enable_grad():
            self.run = Unroll(model, self.B)
        self._y: torch.Tensor | None = None
        self._surrogate: torch.Tensor | None = None

    def step(self, x: torch.Tensor) -> torch.Tensor:
        check_step_input("BPTT", x, self.B, self.refs[0].layer.input_size)
        self.stats.begin_step()
        with torch.enable_grad():
            self._y = self.run.step(x)
        alpha = sum(float((s.y != 0).sum()) for s in self.run.states) / self.B
        self.stats.add_macs("forward", self._fmacs)
        self.stats.add_macs("backward", 2 * self._fmacs)
        self.stats.end_step(alpha / self._n_units, 1.0, 1.0)
        return self._y.detach()

    def accumulate(self, dL_dy: torch.Tensor, layer: int = -1) -> None:
        layer = check_upstream("BPTT", dL_dy, self.B, [r.layer.hidden_size for r in self.refs], layer)
        y = self._y if layer == len(self.run.states) - 1 else self.run.states[layer].y
        if y is None or not y.requires_grad:
            return
        with torch.enable_grad():
            term = (y * dL_dy.detach().to(y.dtype)).sum()
            self._surrogate = term if self._surrogate is None else self._surrogate + term

    def layer_outputs(self) -> list[torch.Tensor]:
        """The outputs ``y^l_t`` of every layer at the last step (detached)."""
        return [s.y.detach() for s in self.run.states]

    def gradients(self) -> dict[str, torch.Tensor]:
        if self._surrogate is None:
            return {k: torch.zeros_like(p) for k, p in self.params.items()}
        grads = torch.autograd.grad(self._surrogate, list(self.params.values()), allow_unused=True,
                                    retain_graph=True)
        return {k: (g if g is not None else torch.zeros_like(p)).detach()
                for (k, p), g in zip(self.params.items(), grads)}

    def zero_grad(self) -> None:
        self._surrogate = None

    def refresh(self) -> None:
        """Re-read the weights and truncate: later gradients stop at the current state."""
        self._surrogate = None
        self.run.detach()
        with torch.enable_grad():
            self.run.refresh()

    def influence_density(self) -> float:
        """BPTT holds no influence matrix: nan."""
        return math.nan
