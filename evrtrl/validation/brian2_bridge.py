"""Run a library LIF model (``integration="exact"``) in Brian2 and return its spikes and states.

Each layer of a ``models.LIF`` layer (or a ``models.Stack`` of them) is one ``NeuronGroup`` with
dimensionless ``v`` and ``isyn`` (Brian2 reserves the name ``i`` for the neuron index) and its
per-neuron values as constant per-neuron variables of the group:

.. code-block:: text

    NeuronGroup(B*n, '''dv/dt = (v_leak - v + isyn)/tau_mem : 1
                        disyn/dt = -isyn/tau_syn : 1
                        tau_mem : second (constant)      # one value per neuron
                        tau_syn : second (constant)
                        v_th, v_leak, v_reset, bias : 1 (constant)''',
                threshold='v > v_th', reset='v = v_reset'   # or 'v -= v_th - v_reset'
                method='exact')
    SpikeGeneratorGroup(B*d, ...)       # channel j of batch b fires at t*dt when x[t, b, j] = 1
    Synapses(pre, post, 'w : 1', on_pre='isyn_post += w')  # input W, recurrent U
    run_regularly('isyn += bias', when='synapses')         # only when some bias is non-zero
    StateMonitor(..., when='end')       # end-of-step values, as evrtrl.simulate reports them

Brian2's default schedule (groups, thresholds, synapses, resets) with zero-delay synapses is
the library's exact step: integrate over ``dt``, threshold, current jumps of the spikes of the
same step (input, recurrent), reset.

Current-free layers (``synapse=False``, the nir.LIF node) hold the input current ``I`` over the
step and integrate it exactly (zero-order hold), so the input of step t enters ``v`` before the
threshold of step t:

.. code-block:: text

    NeuronGroup(B*n, '''dv/dt = (v_leak - v + I)/tau_mem : 1
                        I : 1
                        tau_mem : second (constant); v_th, v_leak, v_reset, bias : 1 (constant)''',
                threshold='v > v_th', reset=..., method='exact')
    run_regularly('I = bias', when='start', order=0)
    SpikeGeneratorGroup(..., when='start', order=1)
    Synapses(..., on_pre='I_post += w'); pathway.when = 'start', order 2   # input W x_t and
                                                      # recurrent U z_{t-1} (spikes of step t-1)

The layers of a Stack are run one after the other, each fed the recorded spike raster of the
layer below through a ``SpikeGeneratorGroup`` (the network is feed-forward between layers, so
this is the same network). A batch of B sequences is B disconnected copies of each layer in
one run (block-diagonal synapses), so B should stay small. Brian2's symbolic exact solution
divides by ``tau_syn - tau_mem``: keep them apart in bridge runs.

Brian2 runs with the ``numpy`` code-generation target (no compiler, no cache), its log file
off, its Cython cache (unused by numpy) pointed at a temporary directory, and — when
matplotlib (imported by sympy, imported by Brian2) has not been configured — matplotlib's
config/cache directory pointed at a temporary directory, so that nothing is written into the
user's home directory.
"""
from __future__ import annotations

import os
import sys
import tempfile
from typing import Sequence

import numpy as np
import torch

from evrtrl.api import LayerTrace
from evrtrl.errors import ConfigError, UnsupportedError
from evrtrl.extras import require
from evrtrl.network import layers_of
from evrtrl.validation.bridge import BridgeResult, check_spike_input, lif_layers

__all__ = ["run_brian2", "brian2_network_code", "EULER_MESSAGE"]

EULER_MESSAGE = (
    "run_brian2: integration='euler' is Norse's schedule (current jumps of step t, then one "
    "forward-Euler step, then threshold), which Brian2's method='euler' does not reproduce: "
    "Brian2 integrates before the threshold and applies synaptic jumps after it, so the "
    "input of step t reaches v one step later; compare euler models with "
    "evrtrl.validation.norse_bridge.run_norse instead"
)

_TMP: str | None = None


def _tmpdir() -> str:
    global _TMP
    if _TMP is None:
        _TMP = tempfile.mkdtemp(prefix="evrtrl_brian2_")
    return _TMP


def _import_brian2():
    """Import Brian2 with home-safe preferences (see the module docstring)."""
    if "matplotlib" not in sys.modules and "MPLCONFIGDIR" not in os.environ:
        user_cfg = os.path.join(os.path.expanduser("~"), ".config", "matplotlib")
        if not os.path.isdir(user_cfg):  # no user configuration would be lost
            os.environ["MPLCONFIGDIR"] = os.path.join(_tmpdir(), "matplotlib")
    brian2 = require("brian2", "run_brian2 (the Brian2 bridge)")
    prefs = brian2.prefs
    prefs.codegen.target = "numpy"
    prefs.codegen.runtime.cython.cache_dir = os.path.join(_tmpdir(), "cython")
    prefs.logging.file_log = False
    prefs.logging.save_script = False
    prefs.logging.delete_log_on_exit = True
    prefs.logging.std_redirection = False
    brian2.BrianLogger.log_level_warn()
    return brian2


EQUATIONS = """
dv/dt = (v_leak - v + isyn) / tau_mem : 1
disyn/dt = -isyn / tau_syn : 1
tau_mem : second (constant)
tau_syn : second (constant)
v_th : 1 (constant)
v_leak : 1 (constant)
v_reset : 1 (constant)
bias : 1 (constant)
"""

EQUATIONS_CURRENT_FREE = """
dv/dt = (v_leak - v + I) / tau_mem : 1
I : 1
tau_mem : second (constant)
v_th : 1 (constant)
v_leak : 1 (constant)
v_reset : 1 (constant)
bias : 1 (constant)
"""


def _reset_code(layer) -> str:
    return "v = v_reset" if layer.reset == "zero" else "v -= (v_th - v_reset)"


def _describe(values: np.ndarray) -> str:
    return f"{values[0]:g}" if np.all(values == values[0]) else f"per-neuron [{values.min():g}..{values.max():g}]"


def brian2_network_code(model) -> str:
    """The Brian2 equations, threshold and reset used for each layer (for docs and reports)."""

    out = []
    for ref in layers_of(model):
        l = ref.layer
        vals = {k: v.numpy() for k, v in l.neuron_parameters().items()}
        eqs = EQUATIONS if l.synapse else EQUATIONS_CURRENT_FREE
        out.append(
            f"layer {ref.index}: NeuronGroup(n={l.hidden_size}, {eqs.strip()!r}, "
            f"threshold='v > v_th', reset={_reset_code(l)!r}, method='exact'); "
            + ", ".join(f"{k}={_describe(v)}{' s' if k.startswith('tau') else ''}" for k, v in vals.items())
            + f", dt={l.dt} s"
        )
    return "\n".join(out)


def _block_synapses(b2, pre, post, weight: np.ndarray, batches: int, n_pre: int, n_post: int,
                    clock, name: str, target: str = "isyn"):
    """Synapses pre->post for every batch copy, weight[k, j] from pre j to post k; None if empty."""
    k, j = np.nonzero(weight)
    if k.size == 0:
        return None
    offs = np.arange(batches)
    src = (offs[:, None] * n_pre + j[None, :]).ravel()
    dst = (offs[:, None] * n_post + k[None, :]).ravel()
    syn = b2.Synapses(pre, post, "w : 1", on_pre=f"{target}_post += w", clock=clock, name=name)
    syn.connect(i=src, j=dst)
    syn.w[:] = np.tile(weight[k, j], batches)
    if target == "I":  # current-free: deliver at the start of the next step, before integration
        syn.pre.when, syn.pre.order = "start", 2
    return syn


def _run_layer(b2, ref, raster: np.ndarray, dt: float):
    """One layer in its own Brian2 network, fed the 0/1 raster (T, nb, d); returns spikes, v, i."""
    layer = ref.layer
    T, nb, d = raster.shape
    n = layer.hidden_size
    free = not layer.synapse
    clock = b2.Clock(dt=dt * b2.second, name="evrtrl_clock*")
    tt, bb, jj = np.nonzero(raster)
    gen = b2.SpikeGeneratorGroup(
        nb * d, indices=(bb * d + jj).astype(np.int64), times=tt * dt * b2.second,
        clock=clock, name="evrtrl_input*", **({"when": "start", "order": 1} if free else {}),
    )
    G = b2.NeuronGroup(
        nb * n, EQUATIONS_CURRENT_FREE if free else EQUATIONS, threshold="v > v_th",
        reset=_reset_code(layer), method="exact", clock=clock, namespace={},
        name=f"evrtrl_layer{ref.index}*",
    )
    vals = {k: np.tile(v.numpy(), nb) for k, v in layer.neuron_parameters().items()}
    for k, v in vals.items():
        setattr(G, k, v * b2.second if k.startswith("tau") else v)
    G.v = vals["v_leak"]
    objects = [gen, G]
    target = "I" if free else "isyn"
    if free:
        G.I = 0.0
        objects.append(G.run_regularly("I = bias", when="start", order=0, name=f"evrtrl_bias{ref.index}*"))
    else:
        G.isyn = 0.0
        if np.any(vals["bias"] != 0):
            objects.append(G.run_regularly("isyn += bias", when="synapses", order=1,
                                           name=f"evrtrl_bias{ref.index}*"))
    w = layer.weights()
    W = w.W.detach().to(torch.float64).cpu().numpy()
    s = _block_synapses(b2, gen, G, W, nb, d, n, clock, f"evrtrl_W{ref.index}*", target)
    if s is not None:
        objects.append(s)
    if getattr(w, "U", None) is not None:
        U = w.U.detach().to(torch.float64).cpu().numpy()
        s = _block_synapses(b2, G, G, U, nb, n, n, clock, f"evrtrl_U{ref.index}*", target)
        if s is not None:
            objects.append(s)
    sm = b2.SpikeMonitor(G, name=f"evrtrl_spikes{ref.index}*")
    st = b2.StateMonitor(G, ["v"] if free else ["v", "isyn"], record=True, when="end",
                         name=f"evrtrl_states{ref.index}*")
    objects += [sm, st]
    b2.Network(*objects).run(T * dt * b2.second, namespace={})
    spikes = np.zeros((T, nb, n))
    steps = np.rint(np.asarray(sm.t_) / dt).astype(np.int64)
    idx = np.asarray(sm.i, dtype=np.int64)
    spikes[steps, idx // n, idx % n] = 1.0
    if st.v.shape[1] != T:
        raise RuntimeError(f"run_brian2: Brian2 recorded {st.v.shape[1]} steps, expected {T}")
    states = {"v": torch.from_numpy(np.asarray(st.v).T.reshape(T, nb, n))}
    if not free:
        states["i"] = torch.from_numpy(np.asarray(st.isyn).T.reshape(T, nb, n))
    return spikes, states


@torch.no_grad()
def run_brian2(model, x: torch.Tensor, *, batch_index: int | Sequence[int] | None = None
               ) -> BridgeResult:
    """Simulate ``model`` (exact-integration LIF layer or Stack) in Brian2 on spikes ``x``.

    ``x``: (T, B, d) of 0/1. ``batch_index``: simulate only these batch entries (an int or a
    list; default all). Returns a :class:`BridgeResult` with spikes and the ``v``/``i``
    traces (T, B', n) of every layer (``v`` only for current-free layers), recorded in the
    ``'end'`` slot, in float64. Raises :class:`~evrtrl.errors.UnsupportedError` for EGRU
    layers (no Brian2 equivalent is attempted), ``integration='euler'`` (see
    :data:`EULER_MESSAGE`) and graded inputs.
    """
    refs = lif_layers(model, x, "run_brian2", "exact") if not _is_euler(model) else None
    if refs is None:
        raise UnsupportedError(EULER_MESSAGE)
    check_spike_input(x, "run_brian2")
    T, B, d = x.shape
    if batch_index is None:
        bidx = list(range(B))
    elif isinstance(batch_index, int):
        bidx = [batch_index]
    else:
        bidx = [int(b) for b in batch_index]
    for b in bidx:
        if not 0 <= b < B:
            raise ConfigError(f"run_brian2: batch_index {b} is outside 0..{B - 1}")
    dts = {r.layer.dt for r in refs}
    if len(dts) != 1:
        raise ConfigError(f"run_brian2: all layers must share one dt, got {sorted(dts)}")
    dt = dts.pop()

    b2 = _import_brian2()
    raster = x[:, bidx, :].detach().cpu().numpy()
    traces = []
    for ref in refs:
        spikes, states = _run_layer(b2, ref, raster, dt)
        sp = torch.from_numpy(spikes)
        traces.append(LayerTrace(sp, sp, states))
        raster = spikes
    last = traces[-1]
    return BridgeResult(last.spikes, last.states, traces, f"brian2 {b2.__version__}", bidx)


def _is_euler(model) -> bool:

    return any(getattr(r.layer, "integration", None) == "euler" for r in layers_of(model))
