r"""The contract between a recurrent layer (a cell) and the three engines.

Every layer has per-unit state :math:`s_t \in \mathbb{R}^{n \times m}` (``m`` state
components per unit), an event :math:`e_t = H(\sigma(s_t))` and an output
:math:`y_t` that is a per-unit function of :math:`s_t`. One step is

.. math::

    s_t = \Phi\big(s_{t-1}, e_{t-1}, a_t\big), \qquad
    a^g_t = W^g\, \mathrm{src}^g_t, \qquad
    \mathrm{src}^g_t = x_t \text{ (input projections) or } y_{t-1} \text{ (recurrent ones)},

where :math:`\Phi` acts unit by unit and the only coupling between units is the
matrix products :math:`a^g_t` ("projections"). Then, with
:math:`M_t = ds_t/d\theta` the influence matrix,

.. math::

    M_t = D_t M_{t-1} + \sum_{g\ \mathrm{rec}} \phi^g_t \odot W^g N_{t-1}
          + \sum_{g\ \mathrm{in}} \phi^g_t \odot W^g N^{x}_t + \bar M_t,
    \qquad N_t = dy_t/d\theta = G_t M_t + G^\theta_t,

with :math:`D_t` block diagonal (leak, reset), :math:`\phi^g = \partial\Phi/\partial a^g`,
:math:`G_t = \partial y_t/\partial s_t` zero outside the pseudo-derivative window, and
:math:`\bar M_t` the immediate Jacobian (a weight :math:`W^g_{ij}` enters row ``i`` with
:math:`\phi^g_i\,\mathrm{src}_j`). A cell supplies the step (shared by all engines; BPTT
differentiates it) and these local pieces (:class:`LocalJacobian`) beside it.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import torch

from evrtrl.errors import ConfigError, MaskError, ShapeError

__all__ = ["Projection", "LocalJacobian", "Layer", "check_sizes"]


class Projection(NamedTuple):
    """A weight matrix ``name`` (n x n_src) acting on ``source``: "input" or "recurrent"."""

    name: str
    source: str


class LocalJacobian(NamedTuple):
    r"""Analytic local derivatives of one step (all batch-first, ``B x n x ...``).

    diag
        ``(B, n, len(layer.diag_structure))``: the structurally non-zero entries
        :math:`(D_t)_{c, c'}` of :math:`\partial s_{t,i}/\partial s_{t-1,i}` per unit, in the
        order of ``layer.diag_structure`` (pairs ``(c, c')``); it includes the reset path
        through :math:`e_{t-1}`, but not the coupling through :math:`y_{t-1}`.
    phi
        projection name -> ``(B, n, m)``: :math:`\partial s_t / \partial a^g_t`.
    unit_phi
        per-unit parameter name -> ``(B, n, m)``: direct :math:`\partial s_{t,i}/\partial p_i`.
    gain
        ``(B, n, m)``: :math:`G_t = \partial y_t / \partial s_t` (zero outside the window).
    gain_direct
        per-unit parameter name -> ``(B, n)``: direct :math:`\partial y_{t,i}/\partial p_i`.
    """

    diag: torch.Tensor
    phi: dict[str, torch.Tensor]
    unit_phi: dict[str, torch.Tensor]
    gain: torch.Tensor
    gain_direct: dict[str, torch.Tensor]


class Layer(torch.nn.Module):
    """Base class of every cell the engines can drive.

    Subclasses set the class attributes below, register their parameters under the
    names listed in ``projections`` and ``unit_parameters``, and implement
    :meth:`initial_state`, :meth:`step`, :meth:`local_jacobian` and :meth:`state_traces`.
    The state is a NamedTuple with at least the fields ``e`` (events) and ``y`` (outputs).
    """

    #: number of state components per unit (``m``)
    state_size: int = 1
    #: structurally non-zero entries (c, c') of the per-unit block of D_t
    diag_structure: tuple[tuple[int, int], ...] = ((0, 0),)
    #: state components that the output depends on (non-zero columns of G_t)
    gain_structure: tuple[int, ...] = (0,)
    projections: tuple[Projection, ...] = ()
    unit_parameters: tuple[str, ...] = ()
    #: a NamedTuple type holding every parameter by name (effective, masked weights)
    Weights: Any = None

    input_size: int
    hidden_size: int

    # ------------------------------------------------------------------ masks
    def _register_masks(self, masks: Mapping[str, Any] | None) -> None:
        """Validate user masks and store one bool buffer ``mask_<name>`` per weight."""
        names = [p.name for p in self.projections]
        masks = dict(masks or {})
        unknown = sorted(set(masks) - set(names))
        if unknown:
            raise MaskError(
                f"{type(self).__name__}: masks given for unknown weights {unknown}; "
                f"maskable weights are {names}"
            )
        for name in names:
            w = getattr(self, name)
            if name in masks:
                m = torch.as_tensor(masks[name])
                if tuple(m.shape) != tuple(w.shape):
                    raise MaskError(
                        f"{type(self).__name__}: mask for '{name}' has shape {tuple(m.shape)}, "
                        f"expected {tuple(w.shape)}"
                    )
                if m.dtype != torch.bool:
                    bad = ~((m == 0) | (m == 1))
                    if bool(bad.any()):
                        raise MaskError(
                            f"{type(self).__name__}: mask for '{name}' must hold only 0 and 1; "
                            f"found {m[bad].flatten()[:3].tolist()}"
                        )
                m = m.to(device=w.device, dtype=torch.bool)
                with torch.no_grad():
                    w.mul_(m)  # pruned entries hold exactly 0
            else:
                m = torch.ones(w.shape, dtype=torch.bool, device=w.device)
            self.register_buffer(f"mask_{name}", m)

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Weight name -> bool mask of the same shape (True = live synapse)."""
        return {p.name: getattr(self, f"mask_{p.name}") for p in self.projections}

    def weights(self) -> Any:
        """All parameters as the ``Weights`` record, masked weights as ``W * mask``.

        Differentiable: BPTT calls it with autograd on, so masked entries get exactly 0.
        """
        values = {}
        for name, p in self.named_parameters(recurse=False):
            mask = getattr(self, f"mask_{name}", None)
            values[name] = p * mask if mask is not None else p
        return self.Weights(**values)

    # --------------------------------------------------------------- contract
    @property
    def live_parameter_count(self) -> int:
        """Number of unmasked scalar parameters."""
        masks = self.masks
        return sum(
            int(masks[n].sum()) if n in masks else p.numel()
            for n, p in self.named_parameters(recurse=False)
        )

    def initial_state(self, batch: int) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, weights: Any, state: Any, x: torch.Tensor) -> tuple[Any, Any]:  # pragma: no cover
        """One step: ``(state_{t-1}, x_t) -> (state_t, aux)``; aux caches intermediates."""
        raise NotImplementedError

    def local_jacobian(
        self, weights: Any, prev: Any, x: torch.Tensor, new: Any, aux: Any, first: bool
    ) -> LocalJacobian:  # pragma: no cover
        """Local pieces of the step just taken (``first``: prev is the initial state)."""
        raise NotImplementedError

    def state_traces(self, weights: Any, state: Any) -> dict[str, torch.Tensor]:  # pragma: no cover
        """User-facing state variables (``B x n`` each) after a step."""
        raise NotImplementedError

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`ShapeError` unless ``x`` is ``(B, input_size)``."""
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ShapeError(
                f"{type(self).__name__}: input of one step must be (B, {self.input_size}), "
                f"got {tuple(x.shape)}"
            )

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def check_sizes(cls: str, input_size: int, hidden_size: int) -> None:
    """Raise :class:`ConfigError` unless both sizes are positive ints."""
    for name, v in (("input_size", input_size), ("hidden_size", hidden_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{cls}: {name} must be a positive int, got {v!r}")
