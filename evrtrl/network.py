"""How the engines see a model: an ordered list of layers with parameter-name prefixes.

A model is a single :class:`~evrtrl.layer.Layer` (parameter names ``"W_u"``, ...) or a
container with a ``layers`` attribute (``models.Stack``; names ``"0.W_u"``, ...).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch

from evrtrl.errors import ConfigError, NonFiniteError, ShapeError
from evrtrl.layer import Layer

__all__ = ["LayerRef", "layers_of", "check_sequence", "check_parameters"]


class LayerRef(NamedTuple):
    index: int
    prefix: str  # "" for a single layer, "0." ... for a stack
    layer: Layer


def layers_of(model: Any) -> list[LayerRef]:
    """The layers of ``model`` in order, with the prefix of their parameter names."""
    if isinstance(model, Layer):
        return [LayerRef(0, "", model)]
    layers = getattr(model, "layers", None)
    if layers is None or not all(isinstance(l, Layer) for l in layers):
        raise ConfigError(
            f"model of type {type(model).__name__} is neither an evrtrl Layer (EGRU, LIF, ...) "
            "nor a container of them with a `layers` attribute (models.Stack)"
        )
    names = {id(m): n for n, m in model.named_children()}
    return [LayerRef(i, f"{names[id(l)]}.", l) for i, l in enumerate(layers)]


def check_sequence(model: Any, x: torch.Tensor) -> None:
    """Raise a specific error unless ``x`` is a finite ``(T, B, input_size)`` tensor."""
    layers = layers_of(model)
    d = layers[0].layer.input_size
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"x must be a torch.Tensor of shape (T, B, {d}), got {type(x).__name__}")
    if x.dim() != 3:
        raise ShapeError(f"x must have rank 3 (T, B, {d}), got shape {tuple(x.shape)}")
    if x.shape[2] != d:
        raise ShapeError(
            f"x has {x.shape[2]} input channels (last dimension), the model expects {d}"
        )
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ShapeError(f"x must have T >= 1 steps and B >= 1 sequences, got {tuple(x.shape)}")
    if x.dtype != layers[0].layer.dtype:
        raise ShapeError(
            f"x has dtype {x.dtype}, the model's parameters are {layers[0].layer.dtype}; "
            "convert one of them (x.to(dtype) or model.to(dtype))"
        )
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).nonzero()[0].tolist()
        raise NonFiniteError(f"x holds NaN or inf, first at index (t, b, channel) = {tuple(bad)}")


def check_parameters(model: Any) -> None:
    """Raise :class:`NonFiniteError` naming the first parameter that holds NaN or inf."""
    for ref in layers_of(model):
        for name, p in ref.layer.named_parameters(recurse=False):
            if not bool(torch.isfinite(p).all()):
                raise NonFiniteError(f"parameter '{ref.prefix}{name}' holds NaN or inf")
