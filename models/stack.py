"""A stack of recurrent layers: feed-forward between layers, recurrence within each.

Layer ``l`` receives the output ``y^{l-1}_t`` of layer ``l-1`` at the same step as its
input. All engines carry the influence of every layer's parameters on every later
layer's state exactly (no truncation across layers).
"""
from __future__ import annotations

import torch

from typing import Any, cast

from evrtrl.errors import ConfigError, ShapeError
from evrtrl.layer import Layer
from evrtrl.network import forward_sequence

__all__ = ["Stack"]


class Stack(torch.nn.Module):
    """``Stack(layer0, layer1, ...)``; parameters are named ``"0.W_u"``, ``"1.U"``, ..."""

    def __init__(self, *layers: Layer) -> None:
        super().__init__()
        if not layers:
            raise ConfigError("Stack: needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise ConfigError(
                    f"Stack: layer {i} is a {type(layer).__name__}, expected an evrtrl Layer "
                    "(EGRU, LIF, ...)"
                )
            if i and layer.input_size != layers[i - 1].hidden_size:
                raise ShapeError(
                    f"Stack: layer {i} has input_size {layer.input_size}, expected "
                    f"{layers[i - 1].hidden_size} (the hidden_size of layer {i - 1})"
                )
            self.add_module(str(i), layer)

    @property
    def layers(self) -> list[Layer]:
        return cast("list[Layer]", list(self.children()))

    @property
    def input_size(self) -> int:
        return self.layers[0].input_size

    @property
    def hidden_size(self) -> int:
        return self.layers[-1].hidden_size

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Layer:
        return self.layers[i]

    def forward(self, x: torch.Tensor, state: tuple[Any, ...] | None = None) -> tuple[torch.Tensor, tuple[Any, ...]]:
        """``outputs, state = stack(x, state)``: ``x`` ``(T, B, d)``, the last layer's outputs
        ``(T, B, n)`` and a tuple of every layer's state after the last step. Differentiable by
        autograd through the cells' step functions (:func:`evrtrl.network.forward_sequence`)."""
        return forward_sequence(self, x, state)
