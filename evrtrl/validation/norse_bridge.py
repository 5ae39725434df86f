"""Run a library LIF model (``integration="euler"``) in Norse 1.1 and return its spikes and states.

Parameter map (exact; Norse's LIF is the library's euler schedule):
``tau_mem_inv = 1/tau_mem``, ``tau_syn_inv = 1/tau_syn``, ``v_leak``, ``v_th``, ``v_reset`` as
given, Norse's ``dt`` = the layer's ``dt`` (seconds; Norse's own defaults are in seconds too),
``method="super"`` (its forward pass is the strict Heaviside ``v - v_th > 0``).

- feed-forward layers (``recurrent=False``): :class:`norse.torch.LIFCell`, fed the current
  ``W x_t`` computed here with :func:`torch.nn.functional.linear` (LIFCell takes currents);
- recurrent layers: :class:`norse.torch.LIFRecurrentCell` with ``input_weights = W`` and
  ``recurrent_weights = U`` (copies) and ``autapses=True``: Norse's default
  ``autapses=False`` zeroes the diagonal of the recurrent weights *in place*, while the
  library's ``U`` keeps its diagonal (mask it with ``masks={"U": ...}`` to remove autapses;
  the masked ``U`` is what is passed here, so both sides agree either way);
- ``LIFBoxCell`` is not used: it has no synaptic current (input enters ``v`` directly), which
  is the library's euler LIF only in the limit ``tau_syn = dt``, and the library rejects
  ``dt >= tau_syn`` for euler integration; its ``reset_subtract`` also subtracts ``v_th``
  rather than ``v_th - v_reset``.

Norse keeps parameters and its default initial state in float32; this bridge passes every
parameter and the initial state ``(v = v_leak, i = 0, z = 0)`` in the model's dtype, so a
float64 model is compared in float64. ``reset="subtract"`` raises UnsupportedError (Norse's
LIF cells reset to ``v_reset`` only), as does ``integration="exact"`` (use Brian2).
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
    """``norse.torch.LIFParameters`` equal to ``layer``'s, as tensors of ``dtype``.

    ``parameter_dtype`` (default: ``dtype``, default: the layer's dtype) sets the dtype of the
    parameter tensors alone, e.g. float32 to reproduce Norse's defaults.
    """
    _, nt = _import_norse()
    dtype = dtype or layer.dtype
    pd = parameter_dtype or dtype
    t = lambda v: torch.as_tensor(v, dtype=pd)  # noqa: E731
    return nt.LIFParameters(
        tau_syn_inv=t(1.0 / layer.tau_syn), tau_mem_inv=t(1.0 / layer.tau_mem),
        v_leak=t(layer.v_leak), v_th=t(layer.v_th), v_reset=t(layer.v_reset),
        method="super", alpha=t(100.0),
    )


def norse_cell(layer, *, parameter_dtype=None):
    """The Norse cell equivalent to ``layer`` (LIFCell or LIFRecurrentCell), weights copied."""
    _, nt = _import_norse()
    p = norse_parameters(layer, parameter_dtype=parameter_dtype)
    w = layer.weights()
    if getattr(w, "U", None) is None:
        return nt.LIFCell(p=p, dt=layer.dt)
    return nt.LIFRecurrentCell(
        layer.input_size, layer.hidden_size, p=p, dt=layer.dt, autapses=True,
        input_weights=w.W.detach().clone(), recurrent_weights=w.U.detach().clone(),
    )


@torch.no_grad()
def run_norse(model, x: torch.Tensor, *, parameter_dtype: torch.dtype | None = None
              ) -> BridgeResult:
    """Simulate ``model`` (euler LIF layer or Stack of them) with Norse cells on ``x``.

    ``x``: (T, B, d), any values (Norse takes currents/graded input). Returns a
    :class:`BridgeResult` with spikes and end-of-step ``v``/``i`` of every layer, in the
    model's dtype. ``parameter_dtype``: dtype of Norse's parameter tensors (default the
    model's dtype; float32 reproduces Norse's defaults, see docs/validation.md).
    """
    refs = lif_layers(model, x, "run_norse", "euler")
    for ref in refs:
        if ref.layer.reset != "zero":
            raise UnsupportedError(
                f"run_norse: layer {ref.index} uses reset={ref.layer.reset!r}; Norse's "
                "LIFCell/LIFRecurrentCell reset to v_reset only (reset='zero')"
            )
    norse, nt = _import_norse()
    from norse.torch.functional.lif import LIFFeedForwardState, LIFState

    T, B, _ = x.shape
    inp = x
    traces = []
    for ref in refs:
        layer = ref.layer
        n, dt_ = layer.hidden_size, layer.dtype
        cell = norse_cell(layer, parameter_dtype=parameter_dtype)
        recurrent = isinstance(cell, nt.LIFRecurrentCell)
        v0 = torch.full((B, n), layer.v_leak, dtype=dt_)
        i0 = torch.zeros(B, n, dtype=dt_)
        state = LIFState(torch.zeros(B, n, dtype=dt_), v0, i0) if recurrent else \
            LIFFeedForwardState(v0, i0)
        W = layer.weights().W.detach()
        zs, vs, is_ = [], [], []
        for t in range(T):
            if recurrent:
                z, state = cell(inp[t], state)
            else:
                z, state = cell(F.linear(inp[t], W), state)
            zs.append(z)
            vs.append(state.v)
            is_.append(state.i)
        sp = torch.stack(zs).to(dt_)
        traces.append(LayerTrace(sp, sp, {"v": torch.stack(vs).to(dt_),
                                          "i": torch.stack(is_).to(dt_)}))
        inp = sp
    last = traces[-1]
    return BridgeResult(last.spikes, last.states, traces, f"norse {norse.__version__}",
                        list(range(B)))
