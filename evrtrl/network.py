"""How the engines see a model: an ordered list of layers with parameter-name prefixes,
and the one forward loop over them.

A model is a single :class:`~evrtrl.layer.Layer` (parameter names ``"W_u"``, ...) or a
container with a ``layers`` attribute (``models.Stack``; names ``"0.W_u"``, ...).
:class:`Unroll` advances every layer by one step (layer ``l`` reads the output of layer
``l - 1`` at the same step); :func:`evrtrl.simulate`, BPTT (:class:`evrtrl.bptt.BPTT`,
hence the online learner's truncated BPTT) and the cells' ``forward()``
(:func:`forward_sequence`) all step through it. The RTRL engines interleave their own
influence updates with the same ``layer.step`` calls.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch

from evrtrl.errors import ConfigError, NonFiniteError, ShapeError
from evrtrl.layer import Layer

__all__ = ["LayerRef", "layers_of", "check_sequence", "check_parameters", "Unroll", "forward_sequence"]


class LayerRef(NamedTuple):
    index: int  # type: ignore[assignment]  # a field, shadowing tuple.index
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


class Unroll:
    """The forward pass of a model, one step at a time, from ``states`` (default: initial).

    ``weights`` are read by :meth:`refresh` (at construction and after an optimizer step)
    under the grad mode active then: with autograd on, every step is differentiable.
    """

    def __init__(self, model: Any, batch: int, states: Sequence[Any] | None = None) -> None:
        self.refs = layers_of(model)
        if states is None:
            self.states = [r.layer.initial_state(batch) for r in self.refs]
        else:
            self.states = list(states)
            _check_states(self.refs, self.states, batch)
        self.refresh()

    def refresh(self) -> None:
        """Re-read the (masked) weights of every layer."""
        self.weights = [r.layer.weights() for r in self.refs]

    def detach(self) -> None:
        """Cut the autograd history of the states (truncated BPTT)."""
        self.states = [type(s)(*(v.detach() for v in s)) for s in self.states]

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """Advance every layer by one step on ``x`` ``(B, d)``; returns the last layer's output."""
        for l, ref in enumerate(self.refs):
            self.states[l], _ = ref.layer.step(self.weights[l], self.states[l], x)
            x = self.states[l].y
        return x


def _check_states(refs: list[LayerRef], states: list[Any], batch: int) -> None:
    if len(states) != len(refs):
        raise ShapeError(f"state holds {len(states)} layer state(s), the model has {len(refs)} layer(s)")
    for ref, s in zip(refs, states):
        want = type(ref.layer.initial_state(1))
        y = getattr(s, "y", None)
        if not isinstance(s, want) or not isinstance(y, torch.Tensor) \
                or tuple(y.shape) != (batch, ref.layer.hidden_size):
            got = f"{type(s).__name__} with y of shape {tuple(y.shape)}" if isinstance(y, torch.Tensor) \
                else type(s).__name__
            raise ShapeError(f"state of layer {ref.index}: expected a {want.__name__} with y of shape "
                             f"{(batch, ref.layer.hidden_size)}, got {got}")


def forward_sequence(model: Any, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
    """``outputs, state = model(x, state)`` for a cell or a stack, like :class:`torch.nn.GRU`.

    ``x``: ``(T, B, d)``; ``outputs``: the last layer's ``y_t``, ``(T, B, n)``; ``state``:
    the cell's state record after the last step (a tuple of them for a stack), to pass back
    to continue the sequence (``None``: the initial state). Differentiable by autograd
    through the same step functions the engines use.
    """
    check_sequence(model, x)
    single = isinstance(model, Layer)
    states = None if state is None else ([state] if single else list(state))
    run = Unroll(model, x.shape[1], states)
    outputs = torch.stack([run.step(x[t]) for t in range(x.shape[0])])
    return outputs, (run.states[0] if single else tuple(run.states))
