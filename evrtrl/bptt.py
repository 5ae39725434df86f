"""BPTT, the ground truth: torch autograd through the very same step functions."""
from __future__ import annotations

from typing import Any, Callable

import torch

from evrtrl.network import layers_of
from evrtrl.stats import EngineStats

__all__ = ["bptt_gradients", "forward_macs"]


def forward_macs(model: Any, batch: int) -> int:
    """Multiply-adds of the dense matrix products of one forward step."""
    total = 0
    for ref in layers_of(model):
        for proj in ref.layer.projections:
            total += batch * getattr(ref.layer, proj.name).numel()
    return total


def bptt_gradients(
    model: Any, x: torch.Tensor, loss_fn: Callable[[torch.Tensor, int], Any],
    layer_loss: Callable[[int, torch.Tensor, int], Any] | None = None,
) -> tuple[dict[str, torch.Tensor], EngineStats]:
    """Sum of ``loss_fn(y_t, t)`` (plus ``layer_loss(l, y^l_t, t)`` of every layer ``l``)
    over the sequence, differentiated by autograd.

    Returns ``({name: grad}, stats)``; a loss of ``None`` at a step contributes nothing.
    Counted multiply-adds: the forward products and twice that for the backward pass.
    """
    refs = layers_of(model)
    T, B = x.shape[0], x.shape[1]
    params = {ref.prefix + n: p for ref in refs for n, p in ref.layer.named_parameters(recurse=False)}
    stats = EngineStats("bptt", p_live=sum(r.layer.live_parameter_count for r in refs),
                        p_total=sum(p.numel() for p in params.values()))
    with torch.enable_grad():
        weights = [ref.layer.weights() for ref in refs]
        states = [ref.layer.initial_state(B) for ref in refs]
        total = None
        n_units = sum(r.layer.hidden_size for r in refs)
        fmacs = forward_macs(model, B)
        for t in range(T):
            stats.begin_step()
            inp = x[t]
            alpha = 0.0
            for l, ref in enumerate(refs):
                states[l], _ = ref.layer.step(weights[l], states[l], inp)
                inp = states[l].y
                alpha += float((inp != 0).sum()) / B
                reg = layer_loss(l, inp, t) if layer_loss is not None else None
                if reg is not None:
                    total = reg if total is None else total + reg
            loss = loss_fn(inp, t)
            if loss is not None:
                total = loss if total is None else total + loss
            stats.add_macs("forward", fmacs)
            stats.add_macs("backward", 2 * fmacs)
            stats.end_step(alpha / n_units, 1.0, 1.0)
        if total is None or not isinstance(total, torch.Tensor) or not total.requires_grad:
            return {k: torch.zeros_like(p) for k, p in params.items()}, stats
        grads = torch.autograd.grad(total, list(params.values()), allow_unused=True)
    return {
        k: (g if g is not None else torch.zeros_like(p)).detach()
        for (k, p), g in zip(params.items(), grads)
    }, stats
