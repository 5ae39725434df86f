r"""The Engine protocol, and the one time loop that drives any engine over a sequence.

An engine holds ``B`` streams of a model and, step by step, the exact gradient of
:math:`\sum_t L_t(y_t)` so far: the event engine (:class:`evrtrl.EventRTRL`), dense RTRL
(:class:`evrtrl.DenseRTRL`) and backpropagation through time (:class:`evrtrl.BPTT`) all
satisfy :class:`Engine`. :func:`run_engine` is the loop that :func:`evrtrl.gradients` and
:class:`evrtrl.OnlineLearner` share:

.. math::

    y_t = \mathrm{engine.step}(x_t), \qquad
    \mathrm{engine.accumulate}(\partial L_t / \partial y_t),

with an update hook every ``k`` steps (the online learner hands ``engine.gradients()``
to its optimizer there, then calls ``zero_grad`` and ``refresh``).

``x`` is a dense ``(T, B, d)`` tensor or an :class:`evrtrl.events.SparseSequence`. An
engine named in :data:`evrtrl.events.SPARSE_INPUT_METHODS` (the event engine) is handed
each :class:`~evrtrl.events.SparseStep` as it is; the others (dense RTRL, BPTT) get one
dense ``(B, d)`` step at a time, never the whole ``(T, B, d)`` tensor.

>>> import torch, evrtrl
>>> from evrtrl.models import EGRU
>>> engine = evrtrl.make_engine(EGRU(2, 4).double(), batch=3, method="event")
>>> isinstance(engine, evrtrl.Engine)
True
>>> losses = evrtrl.run_engine(engine, torch.randn(5, 3, 2, dtype=torch.float64),
...                            lambda y, t: y.pow(2).sum())
>>> len(losses), sorted(engine.gradients())[:2]
(5, ['U_r', 'U_u'])
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Iterable, Protocol, Sequence, runtime_checkable

import torch

from evrtrl.errors import ShapeError
from evrtrl.events import SPARSE_INPUT_METHODS, InputSequence, SparseStep, step_input
from evrtrl.stats import EngineStats

__all__ = ["Engine", "LossFn", "LayerLossFn", "run_engine", "loss_gradient", "nonzero_fraction",
           "check_step_input", "check_upstream"]

#: ``loss_fn(y_t, t)``: a scalar tensor, or None where step ``t`` has no loss. A loss may also
#: define ``value_and_grad(y_t, t) -> (value, dL_t/dy_t, {parameter: dL_t/dp})``, the same
#: loss with its exact gradient in closed form: the engines then call that instead of autograd
#: (the training loop's readout loss does; its tests compare it with autograd)
LossFn = Callable[[torch.Tensor, int], Any]
#: ``layer_loss(l, y^l_t, t)``: a term on the output of every layer ``l`` (evrtrl.regularizers);
#: likewise with an optional ``value_and_grad(l, y^l_t, t)``
LayerLossFn = Callable[[int, torch.Tensor, int], Any]


@runtime_checkable
class Engine(Protocol):
    """What every gradient engine offers (event, dense, dense-live RTRL and BPTT)."""

    #: the method name: "event", "dense", "dense-live" or "bptt"
    name: str

    @property
    def stats(self) -> EngineStats:
        """Per-step statistics and multiply-add counts (an attribute or a property)."""
        ...

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """Advance every layer by one step on ``x`` ``(B, d)``; returns the last output ``(B, n)``.

        Engines named in :data:`evrtrl.events.SPARSE_INPUT_METHODS` also take a
        :class:`evrtrl.events.SparseStep`."""
        ...

    def accumulate(self, dL_dy: torch.Tensor, layer: int = -1) -> None:
        """Add ``dL_t/dy^l_t`` ``(B, n_l)`` of the step just taken to the gradient; ``layer``
        is the layer ``l`` whose output the loss term reads (default: the last)."""
        ...

    def layer_outputs(self) -> list[torch.Tensor]:
        """The outputs ``y^l_t`` ``(B, n_l)`` of every layer at the step just taken (detached)."""
        ...

    def gradients(self) -> dict[str, torch.Tensor]:
        """The gradient accumulated since the last :meth:`zero_grad`, by parameter name."""
        ...

    def zero_grad(self) -> None:
        """Forget the accumulated gradient (the influence/history is kept)."""
        ...

    def refresh(self) -> None:
        """Re-read the weights after an optimizer step (BPTT also truncates its history here)."""
        ...

    def influence_density(self) -> float:
        """Fraction of non-zero entries of the stored influence tensors (nan for BPTT)."""
        ...


def check_step_input(engine: str, x: Any, batch: int, input_size: int) -> None:
    """ShapeError unless the step input ``x`` (a tensor or a SparseStep) is ``(batch, input_size)``."""
    shape = (x.batch, x.d) if isinstance(x, SparseStep) else tuple(x.shape)
    if shape != (batch, input_size):
        raise ShapeError(f"{engine}.step: x has shape {shape}, expected (batch, input_size) = "
                         f"({batch}, {input_size})")


def check_upstream(engine: str, dL_dy: torch.Tensor, batch: int, sizes: Sequence[int], layer: int) -> int:
    """The layer index ``layer`` (negative counts from the last) after checking that ``dL_dy``
    is ``(batch, sizes[layer])``; ShapeError naming what was expected otherwise."""
    if not -len(sizes) <= layer < len(sizes):
        raise ShapeError(f"{engine}.accumulate: layer={layer}, but the model has {len(sizes)} layer(s)")
    l = layer % len(sizes)
    if tuple(dL_dy.shape) != (batch, sizes[l]):
        raise ShapeError(f"{engine}.accumulate: dL_dy has shape {tuple(dL_dy.shape)}, expected "
                         f"(batch, hidden_size of layer {l}) = ({batch}, {sizes[l]})")
    return l


def nonzero_fraction(tensors: Iterable[torch.Tensor]) -> float:
    """Fraction of non-zero entries over ``tensors`` (0.0 when they hold no entries)."""
    nz = total = 0
    for t in tensors:
        nz += int(torch.count_nonzero(t))
        total += t.numel()
    return nz / total if total else 0.0


def loss_gradient(loss_fn: LossFn, y: torch.Tensor, t: int,
                  extra: Sequence[torch.Tensor] = ()) -> tuple[Any, torch.Tensor | None, list[Any]]:
    """``(loss, dL_t/dy_t, [dL_t/dp for p in extra])`` of one step's loss.

    The gradients are None where the loss is None or does not depend on them. A loss with
    ``value_and_grad`` (:data:`LossFn`) gives them in closed form, without autograd.
    """
    extras = list(extra)
    closed = getattr(loss_fn, "value_and_grad", None)
    if closed is not None:
        loss, g, by_param = closed(y.detach(), t)
        return loss, g, [by_param.get(p) for p in extras]
    with torch.enable_grad():
        yl = y.detach().requires_grad_(True)
        loss = loss_fn(yl, t)
        if loss is None:
            return None, None, [None] * len(extras)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ShapeError(
                f"loss_fn(y_t, t) must return a scalar tensor (or None), got "
                f"{type(loss).__name__}{'' if not isinstance(loss, torch.Tensor) else tuple(loss.shape)} at t={t}"
            )
        if not loss.requires_grad:
            return loss, None, [None] * len(extras)
        grads = torch.autograd.grad(loss, [yl] + extras, allow_unused=True)
    return loss, grads[0], list(grads[1:])


class _LayerTerm:
    """``layer_loss`` of one layer ``l`` as a :data:`LossFn` (its closed form kept)."""

    def __init__(self, layer_loss: LayerLossFn, l: int) -> None:
        self.fn, self.l = layer_loss, l
        closed = getattr(layer_loss, "value_and_grad", None)
        if closed is not None:
            self.value_and_grad = functools.partial(closed, l)

    def __call__(self, y: torch.Tensor, t: int) -> Any:
        return self.fn(self.l, y, t)


def run_engine(
    engine: Engine,
    x: InputSequence,
    loss_fn: LossFn,
    *,
    extra_parameters: Iterable[torch.nn.Parameter] = (),
    every: int = 0,
    on_update: Callable[[], None] | None = None,
    layer_loss: LayerLossFn | None = None,
    t0: int = 0,
    on_step: Callable[[int, Any], None] | None = None,
) -> list[float]:
    """Feed ``x`` ``(T, B, d)`` to ``engine`` step by step; returns each step's loss (nan if none).

    ``x``: a dense tensor or a :class:`~evrtrl.events.SparseSequence` (read sparse by the
    event engine, densified one step at a time for the others).

    Each step accumulates ``dL_t/dy_t`` into the engine and adds ``dL_t/dp`` to ``p.grad``
    for every parameter in ``extra_parameters`` (a readout inside ``loss_fn``: its gradient
    is exact from the current step alone). ``layer_loss(l, y^l_t, t)`` adds a term on the
    output of every layer (e.g. :class:`evrtrl.regularizers.ActivityRegularizer`), accumulated
    with ``engine.accumulate(..., layer=l)``. With ``every = k > 0``, ``on_update()`` is
    called after every ``k`` steps and once more after the last step if steps are pending.
    Steps are numbered from ``t0`` (a stream continued over several calls); ``on_step(t,
    layer_term)`` is called after each step with the sum of that step's layer terms (a 0-d
    tensor, or None without ``layer_loss``).
    """
    extra = list(extra_parameters)
    losses: list[Any] = []
    pending = 0
    layer_terms: list[_LayerTerm] = []
    sparse = engine.name in SPARSE_INPUT_METHODS
    for i in range(x.shape[0]):
        t = t0 + i
        # a SparseStep only reaches engines in SPARSE_INPUT_METHODS, whose step takes it
        y = engine.step(step_input(x, i, sparse))  # type: ignore[arg-type]
        loss, g, g_extra = loss_gradient(loss_fn, y, t, extra)
        for p, gp in zip(extra, g_extra):
            if gp is not None:
                p.grad = gp if p.grad is None else p.grad + gp
        layer_term = None
        if layer_loss is not None:
            outputs = engine.layer_outputs()
            while len(layer_terms) < len(outputs):
                layer_terms.append(_LayerTerm(layer_loss, len(layer_terms)))
            for l, y_l in enumerate(outputs):
                term, g_l, _ = loss_gradient(layer_terms[l], y_l, t)
                if l == len(outputs) - 1 and g is not None:  # one accumulation for both terms
                    g_l, g = (g if g_l is None else g_l + g), None
                if g_l is not None:
                    engine.accumulate(g_l, layer=l)
                if term is not None:
                    layer_term = term.detach() if layer_term is None else layer_term + term.detach()
        if g is not None:
            engine.accumulate(g)
        if on_step is not None:
            on_step(t, layer_term)
        losses.append(loss.detach() if loss is not None else None)
        pending += 1
        if every and pending == every:
            if on_update is not None:
                on_update()
            pending = 0
    if every and pending and on_update is not None:
        on_update()
    values = [v for v in losses if v is not None]
    floats = iter(torch.stack([v.reshape(()).double().cpu() for v in values]).tolist() if values else [])
    return [next(floats) if v is not None else math.nan for v in losses]
