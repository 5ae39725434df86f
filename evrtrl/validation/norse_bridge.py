"""Run a library LIF model (``integration="euler"``) in Norse 1.1 and return its spikes and states.

Parameter map (exact; Norse's LIF is the library's euler schedule), per neuron: Norse's
parameters are tensors of shape (n,) (a layer with scalar values gives constant tensors):
``tau_mem_inv = 1/tau_mem``, ``tau_syn_inv = 1/tau_syn``, ``v_leak``, ``v_th``, ``v_reset`` as
given, Norse's ``dt`` = the layer's ``dt`` (seconds; Norse's own defaults are in seconds too),
``method="super"`` (its forward pass is the strict Heaviside ``v - v_th > 0``).

- feed-forward layers (``recurrent=False``): :class:`norse.torch.LIFCell`, fed the current
  ``W x_t + bias`` computed here with :func:`torch.nn.functional.linear`;
- recurrent layers without bias: :class:`norse.torch.LIFRecurrentCell` with
  ``input_weights = W`` and ``recurrent_weights = U`` (copies) and ``autapses=True``: Norse's
  default ``autapses=False`` zeroes the diagonal of the recurrent weights *in place*, while the
  library's ``U`` keeps its diagonal (mask it with ``masks={"U": ...}`` to remove autapses;
  the masked ``U`` is what is passed here, so both sides agree either way);
- recurrent layers with a bias: ``LIFRecurrentCell`` has no bias, so ``LIFCell`` is fed
  ``(W x_t + bias) + U z_{t-1}`` computed here (the same sum, one rounding apart);
- current-free layers (``synapse=False``, the nir.LIF node): :class:`norse.torch.LIFBoxCell`
  (what Norse's ``from_nir`` builds for nir.LIF), fed ``I_t = W x_t + U z_{t-1} + bias``
  computed here in the library's order, so the states agree bit for bit. Its
  ``reset_subtract`` subtracts ``v_th`` (not ``v_th - v_reset``): ``reset="subtract"`` maps
  only with ``v_reset = 0``.

Norse keeps parameters and its default initial state in float32; this bridge passes every
parameter and the initial state ``(v = v_leak, i = 0, z = 0)`` in the model's dtype, so a
float64 model is compared in float64. ``reset="subtract"`` of a current-based layer raises
UnsupportedError (Norse's LIF cells reset to ``v_reset`` only), as does
``integration="exact"`` (use Brian2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from evrtrl.api import LayerTrace
from evrtrl.extras import require
from evrtrl.errors import UnsupportedError
from evrtrl.validation.bridge import BridgeResult, lif_layers

__all__ = ["run_norse", "norse_parameters", "norse_cell"]


def _import_norse():
    return require("norse", "run_norse (the Norse bridge)"), require("norse.torch", "run_norse (the Norse bridge)")


def norse_parameters(layer, dtype: torch.dtype | None = None, *, parameter_dtype=None):
    """Norse parameters equal to ``layer``'s, as tensors (n,) of ``dtype``:
    ``norse.torch.LIFParameters`` or, for a current-free layer, ``LIFBoxParameters``.

    ``parameter_dtype`` (default: ``dtype``, default: the layer's dtype) sets the dtype of the
    parameter tensors alone, e.g. float32 to reproduce Norse's defaults.
    """
    _, nt = _import_norse()
    dtype = dtype or layer.dtype
    pd = parameter_dtype or dtype
    v = {k: t.to(pd) for k, t in layer.neuron_parameters().items()}
    common = dict(tau_mem_inv=1.0 / v["tau_mem"], v_leak=v["v_leak"], v_th=v["v_th"],
                  v_reset=v["v_reset"], method="super", alpha=torch.as_tensor(100.0, dtype=pd))
    if not layer.synapse:
        from norse.torch.functional.reset import reset_subtract, reset_value

        return nt.LIFBoxParameters(
            **common, reset_method=reset_value if layer.reset == "zero" else reset_subtract)
    return nt.LIFParameters(tau_syn_inv=1.0 / v["tau_syn"], **common)


def _uses_recurrent_cell(layer) -> bool:
    w = layer.weights()
    return layer.synapse and w.U is not None and not bool((layer.bias != 0).any())


def norse_cell(layer, *, parameter_dtype=None):
    """The Norse cell equivalent to ``layer`` (module docstring), weights copied."""
    _, nt = _import_norse()
    p = norse_parameters(layer, parameter_dtype=parameter_dtype)
    if not layer.synapse:
        return nt.LIFBoxCell(p=p, dt=layer.dt)
    if not _uses_recurrent_cell(layer):
        return nt.LIFCell(p=p, dt=layer.dt)
    w = layer.weights()
    return nt.LIFRecurrentCell(
        layer.input_size, layer.hidden_size, p=p, dt=layer.dt, autapses=True,
        input_weights=w.W.detach().clone(), recurrent_weights=w.U.detach().clone(),
    )


@torch.no_grad()
def run_norse(model, x: torch.Tensor, *, parameter_dtype: torch.dtype | None = None
              ) -> BridgeResult:
    """Simulate ``model`` (euler LIF layer or Stack of them) with Norse cells on ``x``.

    ``x``: (T, B, d), any values (Norse takes currents/graded input). Returns a
    :class:`BridgeResult` with spikes and end-of-step ``v``/``i`` of every layer (``v`` only
    for current-free layers), in the model's dtype. ``parameter_dtype``: dtype of Norse's
    parameter tensors (default the model's dtype; float32 reproduces Norse's defaults, see
    docs/validation.md).
    """
    refs = lif_layers(model, x, "run_norse", "euler")
    for ref in refs:
        layer = ref.layer
        if layer.reset != "zero" and layer.synapse:
            raise UnsupportedError(
                f"run_norse: layer {ref.index} uses reset={layer.reset!r}; Norse's "
                "LIFCell/LIFRecurrentCell reset to v_reset only (reset='zero')"
            )
        if layer.reset != "zero" and bool((layer.v_reset != 0).any()):
            raise UnsupportedError(
                f"run_norse: layer {ref.index} (current-free) uses reset='subtract' with a non-zero "
                "v_reset; Norse's reset_subtract subtracts v_th, the library v_th - v_reset"
            )
    norse, nt = _import_norse()
    from norse.torch.functional.lif import LIFFeedForwardState, LIFState
    from norse.torch.functional.lif_box import LIFBoxFeedForwardState

    T, B, _ = x.shape
    inp = x
    traces = []
    for ref in refs:
        layer = ref.layer
        n, dt_ = layer.hidden_size, layer.dtype
        cell = norse_cell(layer, parameter_dtype=parameter_dtype)
        recurrent = isinstance(cell, nt.LIFRecurrentCell)
        v0 = torch.zeros(B, n, dtype=dt_) + layer.v_leak.to(dt_)
        i0 = torch.zeros(B, n, dtype=dt_)
        if not layer.synapse:
            state = LIFBoxFeedForwardState(v0)
        else:
            state = LIFState(torch.zeros(B, n, dtype=dt_), v0, i0) if recurrent else \
                LIFFeedForwardState(v0, i0)
        w = layer.weights()
        W, U = w.W.detach(), None if w.U is None else w.U.detach()
        bias = layer.bias.detach().to(dt_)
        z = torch.zeros(B, n, dtype=dt_)
        zs, vs, is_ = [], [], []
        for t in range(T):
            if recurrent:
                z, state = cell(inp[t], state)
            elif not layer.synapse:  # the library's I_t, in its order
                cur = F.linear(inp[t], W)
                if U is not None:
                    cur = cur + F.linear(z, U)
                z, state = cell(cur + bias, state)
            else:
                cur = F.linear(inp[t], W) + bias
                if U is not None:
                    cur = cur + F.linear(z, U)
                z, state = cell(cur, state)
            zs.append(z)
            vs.append(state.v)
            if layer.synapse:
                is_.append(state.i)
        sp = torch.stack(zs).to(dt_)
        states = {"v": torch.stack(vs).to(dt_)}
        if layer.synapse:
            states["i"] = torch.stack(is_).to(dt_)
        traces.append(LayerTrace(sp, sp, states))
        inp = sp
    last = traces[-1]
    return BridgeResult(last.spikes, last.states, traces, f"norse {norse.__version__}",
                        list(range(B)))
