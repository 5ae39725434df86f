"""Check evrtrl's ``nir_convention="snntorch"`` NIR files in snnTorch's own ``import_from_nir``.

snnTorch (1.0.0) and its NIR reader nirtorch (2.x) are not dependencies of this library;
``scripts/check_snntorch.sh`` builds a separate environment and runs the two halves:

1. ``python scripts/check_snntorch.py prepare DIR`` (project environment): for each test
   network (CubaLIF, feed-forward and recurrent, zero and subtract reset, float64) writes
   ``export_nir(m, nir_convention="snntorch")``, a binary input and the library's spikes of
   every layer (``forward_sequence`` layer by layer) into DIR;
2. ``python scripts/check_snntorch.py run DIR`` (snnTorch environment, no evrtrl import):
   ``nir.read`` + ``snntorch.import_nir.import_from_nir``, then drives the imported
   ``torch.fx`` module one step at a time and records every neuron layer's spikes, which
   are compared with the library's spike for spike.

snnTorch's reader builds every CubaLIF as ``Synaptic`` / ``RSynaptic`` with
``reset_mechanism="zero"``, whatever the network used: a subtract-reset network cannot be
expressed (NIR's CubaLIF resets to ``v_reset``), so those rows are reported, not required
to match. Exit status 0 when every zero-reset network matches exactly.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

T, BATCH, D_IN = 300, 2, 8


def _networks():
    import torch
    from evrtrl.models import LIF, Stack

    def lif(d, n, rec, seed, scale, reset, **kw):
        torch.manual_seed(seed)
        p = dict(tau_mem=16e-3, tau_syn=4e-3, dt=1e-3, integration="euler", reset=reset)
        p.update(kw)
        m = LIF(d, n, recurrent=rec, dtype=torch.float64, **p)
        with torch.no_grad():
            m.W.mul_(scale)
        return m

    nets = {}
    for reset in ("zero", "subtract"):
        nets[f"ff_{reset}"] = Stack(lif(D_IN, 30, False, 0, 10.0, reset), lif(30, 4, False, 1, 20.0, reset))
        nets[f"rec_{reset}"] = Stack(lif(D_IN, 40, True, 0, 10.0, reset), lif(40, 4, False, 1, 20.0, reset))
        nets[f"slow_rec_{reset}"] = Stack(
            lif(D_IN, 30, True, 2, 4.0, reset, tau_mem=64e-3, tau_syn=16e-3),
            lif(30, 4, False, 3, 10.0, reset))
    return nets


def prepare(out: Path) -> int:
    import torch
    from evrtrl.network import forward_sequence
    from evrtrl.neuromorphic import export_nir

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for name, m in _networks().items():
        x = (rng.random((T, BATCH, D_IN)) < 0.25).astype(np.float64)
        export_nir(m, out / f"{name}.nir", nir_convention="snntorch")
        h = torch.as_tensor(x)
        spikes = []
        with torch.no_grad():
            for layer in m.layers:
                h, _ = forward_sequence(layer, h)
                spikes.append(h.numpy().astype(np.int64))
        np.savez(out / f"{name}.npz", x=x, reset=m.layers[0].reset,
                 **{f"layer{i}": s for i, s in enumerate(spikes)})
        names.append(name)
        print(f"prepared {name}: spikes per layer {[int(s.sum()) for s in spikes]}")
    (out / "networks.json").write_text(json.dumps(names))
    return 0


def _chain(graph) -> list:
    """Node names from the input to the output of a chain-shaped NIR graph."""
    nxt = dict(graph.edges)
    name = next(k for k, v in graph.nodes.items() if type(v).__name__ == "Input")
    order = []
    while name in nxt:
        name = nxt[name]
        order.append(name)
    return order


def _run_snntorch(path: Path, x: np.ndarray, dtype, immediate_reset: bool = False) -> tuple:
    """Every neuron layer's spikes ``(T, B, n)`` of snnTorch's import of ``path`` for input ``x``,
    and how the network was built.

    Feed-forward graphs go through ``snntorch.import_nir.import_from_nir`` itself. For a
    recurrent graph that function fails in snnTorch 1.0.0 (its ``node_map`` for
    ``nirtorch.nir_to_torch`` has no entry for the nested ``NIRGraph`` it builds, and nirtorch
    2.x then recurses into the cycle: ``'GraphModule' object has no attribute 'items'``), so
    the graph is built from the modules snnTorch's own converter makes
    (``_replace_rnn_subgraph_with_nirgraph`` + ``_nir_to_snntorch_module``: Linear, Synaptic,
    RSynaptic with the same alpha, beta, threshold, weights) and run in chain order.
    ``RSynaptic(reset_delay=False)`` raises with ``init_hidden=True`` (its reset line reads the
    ``spk`` argument, None), so it runs with ``init_hidden=False`` and its state passed back,
    as nirtorch 1.0's executor does. ``immediate_reset``: also apply the reset-to-zero that
    ``reset_delay=False`` intends (``mem <- mem - (spk - reset) mem`` on the module state),
    which RSynaptic's forward computes into a local variable and drops.
    """
    import contextlib
    import io

    import nir
    import snntorch as snn
    import torch
    from snntorch import import_nir as sin

    graph = nir.read(str(path))
    recurrent = any(a == b2 and b == a2 for a, b in graph.edges for a2, b2 in graph.edges)
    if not recurrent:
        with contextlib.redirect_stdout(io.StringIO()):  # import_from_nir prints progress lines
            net = sin.import_from_nir(graph).to(dtype)
        neurons = [m for m in net.modules() if isinstance(m, snn.Synaptic)]
        rec = {id(m): [] for m in neurons}
        for m in neurons:
            m.reset_mem()
            m.register_forward_hook(lambda mod, a, o: rec[id(mod)].append(o.detach().clone()))
        # snnTorch's spike function returns float32 ((x > 0).float()): in a float64 run, cast the
        # spikes a Linear receives to its weight's dtype (values 0/1, exact)
        for m in net.modules():
            if isinstance(m, torch.nn.Linear):
                m.register_forward_pre_hook(lambda mod, a: (a[0].to(mod.weight.dtype),) + tuple(a[1:]))
        with torch.no_grad():
            for t in range(x.shape[0]):
                net(torch.as_tensor(x[t], dtype=dtype))
        return [torch.stack(rec[id(m)]).numpy().astype(np.int64) for m in neurons], "import_from_nir"
    with contextlib.redirect_stdout(io.StringIO()):
        g = sin._replace_rnn_subgraph_with_nirgraph(graph)
        mods = {k: sin._nir_to_snntorch_module(n, init_hidden=not isinstance(n, nir.NIRGraph))
                for k, n in g.nodes.items()}
    order = [k for k in _chain(g) if mods[k] is not None]
    for k in order:
        mods[k] = mods[k].to(dtype)
    states = {k: tuple(torch.zeros(x.shape[1], mods[k].recurrent.weight.shape[0], dtype=dtype) for _ in range(3))
              for k in order if isinstance(mods[k], snn.RSynaptic)}
    for k in order:
        if isinstance(mods[k], snn.Synaptic):
            mods[k].reset_mem()
    rec = {k: [] for k in order if isinstance(mods[k], (snn.Synaptic, snn.RSynaptic))}
    with torch.no_grad():
        for t in range(x.shape[0]):
            h = torch.as_tensor(x[t], dtype=dtype)
            for k in order:
                m = mods[k]
                if isinstance(m, snn.RSynaptic):
                    spk, syn, mem = m(h, *states[k])
                    if immediate_reset:
                        mem = mem - (spk - m.reset) * mem
                    states[k] = (spk.to(dtype), syn, mem)
                    h = spk
                else:
                    h = m(h.to(dtype))
                if k in rec:
                    rec[k].append(h.detach().clone())
    how = "snnTorch modules (RSynaptic), chain order" + (", immediate reset" if immediate_reset else "")
    return [torch.stack(rec[k]).numpy().astype(np.int64) for k in rec], how


def run(out: Path) -> int:
    import torch

    ok = True
    for name in json.loads((out / "networks.json").read_text()):
        ref = np.load(out / f"{name}.npz")
        x = ref["x"]
        want = [ref[k] for k in sorted((k for k in ref.files if k.startswith("layer")), key=lambda s: int(s[5:]))]
        zero = str(ref["reset"]) == "zero"
        for dtype in (torch.float64, torch.float32):
            for immediate in ((False, True) if name.startswith(("rec", "slow_rec")) else (False,)):
                got, how = _run_snntorch(out / f"{name}.nir", x, dtype, immediate)
                if len(got) != len(want):
                    print(f"{name}: snnTorch built {len(got)} neuron layers, expected {len(want)}")
                    ok = False
                    continue
                diff = [int(np.abs(g - w).sum()) for g, w in zip(got, want)]
                counts = [(int(g.sum()), int(w.sum())) for g, w in zip(got, want)]
                tag = str(dtype).replace("torch.", "")
                print(f"{name} [{tag}; {how}]: spikes per layer (snntorch, evrtrl) {counts}; "
                      f"differing {diff}")
                # required: a zero-reset network matches exactly in float64 wherever snnTorch's
                # neuron resets at once (Synaptic; RSynaptic with the intended reset applied)
                if zero and dtype == torch.float64 and (immediate or "RSynaptic" not in how):
                    ok &= sum(diff) == 0
    print("PASS: snnTorch == evrtrl for every zero-reset network (float64; recurrent layers with "
          "RSynaptic's reset applied at once)" if ok else "FAIL: spikes differ")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("prepare", "run"):
        print(__doc__)
        sys.exit(2)
    sys.exit((prepare if sys.argv[1] == "prepare" else run)(Path(sys.argv[2])))
