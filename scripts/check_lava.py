"""Check evrtrl's netx files in Lava's bit-accurate fixed-point simulation against ``simulate_export``.

Lava (lava-nc 0.10, lava-dl 0.6) installs only on Python 3.10 with numpy < 2 and torch 2.3,
so it cannot share the project's environment. ``scripts/check_lava.sh`` builds a separate
one and runs the two halves of this script:

1. ``python scripts/check_lava.py prepare DIR`` (project environment): writes netx files
   (``export_netx``), their inputs and the spikes of ``simulate_export`` into DIR;
2. ``python scripts/check_lava.py run DIR`` (Lava environment, no evrtrl import): loads each
   file with ``lava.lib.dl.netx.hdf5.Network``, runs it with ``Loihi2SimCfg(select_tag="fixed_pt")``
   (Lava's ``PyDenseModelBitAcc`` + ``PyLifModelBitAcc``), records every layer with a sink and
   compares spike for spike, allowing the documented timing of Lava's layers (each Dense
   hands on last step's activation: one step per layer hop, which ``simulate_export`` already
   models) plus a search over a global offset of -2..2 steps in case the source/sink timing
   differs. Exit status 0 when every layer matches exactly at one offset.

lava-dl's netx package imports torch only for slayer's resonate-and-fire neurons and its
PyTorch wrapper (``sequential_modules``). Without torch (the default of ``check_lava.sh``:
torch 2.3 on PyPI is a CUDA build with gigabytes of NVIDIA wheels) the ``run`` step registers
``lava.lib.dl.netx`` without running its ``__init__``, a stub for
``lava.lib.dl.slayer.neuron.rf`` (used for RF neurons only) and an empty
``netx.sequential_modules`` (Lava's compiler imports every module beside a process),
then imports ``netx.hdf5``. Lava's own models run unchanged.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def _networks():
    import torch
    from evrtrl.models import LIF, Stack

    def lif(d, n, rec=True, seed=0, scale=10.0, **kw):
        torch.manual_seed(seed)
        p = dict(tau_mem=16e-3, tau_syn=4e-3, dt=1e-3, integration="euler", reset="zero")
        p.update(kw)
        m = LIF(d, n, recurrent=rec, dtype=torch.float64, **p)
        with torch.no_grad():
            m.W.mul_(scale)
        return m

    return {
        "ff_2layer": Stack(lif(8, 30, rec=False), lif(30, 4, rec=False, seed=1, scale=20.0)),
        "recurrent": Stack(lif(8, 40), lif(40, 4, rec=False, seed=1, scale=20.0)),
        "three_layers": Stack(lif(8, 30), lif(30, 20, rec=False, seed=2, scale=16.0),
                              lif(20, 4, rec=False, seed=3, scale=24.0)),
        "slow_decay": Stack(lif(8, 30, tau_mem=64e-3, tau_syn=16e-3, scale=4.0),
                            lif(30, 4, rec=False, seed=4, scale=10.0)),
    }


def prepare(out: Path) -> int:
    from evrtrl.neuromorphic.chipsim import simulate_export
    from evrtrl.neuromorphic.vendor_export import export_netx

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for name, m in _networks().items():
        x = (rng.random((200, 2, 8)) < 0.25).astype(np.int64)
        export_netx(m, out / f"{name}.net")
        spikes = simulate_export(out / f"{name}.net", x)
        np.savez(out / f"{name}.npz", x=x, **{f"layer{i}": s for i, s in enumerate(spikes)})
        names.append(name)
        print(f"prepared {name}: spikes per layer {[int(s.sum()) for s in spikes]}")
    (out / "networks.json").write_text(json.dumps(names))
    return 0


def _import_netx():
    import importlib
    import types

    try:
        import torch  # noqa: F401
        return importlib.import_module("lava.lib.dl.netx.hdf5")
    except ImportError:
        pass
    import lava.lib.dl as dl
    base = Path(dl.__path__[0])
    for name, path in (("lava.lib.dl.netx", base / "netx"), ("lava.lib.dl.slayer", base / "slayer"),
                       ("lava.lib.dl.slayer.neuron", base / "slayer" / "neuron")):
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.__path__ = [str(path)]
            sys.modules[name] = mod
    rf = types.ModuleType("lava.lib.dl.slayer.neuron.rf")

    def neuron_params(*a, **k):
        raise NotImplementedError("resonate-and-fire neurons need torch (lava-dl slayer)")

    rf.neuron_params = neuron_params
    sys.modules["lava.lib.dl.slayer.neuron.rf"] = rf
    # Lava's compiler imports every module beside a process to find its models: the PyTorch
    # wrapper netx/sequential_modules.py (no process models) is replaced by an empty module
    stub = types.ModuleType("lava.lib.dl.netx.sequential_modules")
    stub.__file__ = str(base / "netx" / "sequential_modules.py")  # the compiler asks for its directory
    sys.modules[stub.__name__] = stub
    return importlib.import_module("lava.lib.dl.netx.hdf5")


def _run_lava(hdf5, path: Path, x: np.ndarray) -> list:
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc import io

    T = x.shape[0]
    net = hdf5.Network(net_config=str(path))
    src = io.source.RingBuffer(data=x.T.astype(np.int32))
    src.s_out.connect(net.inp)
    sinks = []
    for layer in net.layers:
        s = io.sink.RingBuffer(shape=layer.out.shape, buffer=T)
        layer.out.connect(s.a_in)
        sinks.append(s)
    net.run(condition=RunSteps(num_steps=T), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
    out = [s.data.get().T.astype(np.int64) for s in sinks]  # (T, n)
    net.stop()
    return out


def run(out: Path) -> int:
    hdf5 = _import_netx()
    ok = True
    for name in json.loads((out / "networks.json").read_text()):
        ref = np.load(out / f"{name}.npz")
        x = ref["x"]
        n_layers = len([k for k in ref.files if k.startswith("layer")])
        for b in range(x.shape[1]):
            lava = _run_lava(hdf5, out / f"{name}.net", x[:, b])
            want = [ref[f"layer{i}"][:, b] for i in range(n_layers)]
            best = None
            for off in range(-2, 3):
                diff = 0
                for lv, w in zip(lava, want):
                    a = np.zeros_like(w)
                    if off >= 0:
                        a[:w.shape[0] - off] = lv[off:]
                    else:
                        a[-off:] = lv[:off]
                    diff += int(np.abs(a - w).sum())
                if best is None or diff < best[1]:
                    best = (off, diff)
            counts = [(int(lv.sum()), int(w.sum())) for lv, w in zip(lava, want)]
            print(f"{name} seq {b}: spikes per layer (lava, simulate_export) {counts}; "
                  f"best offset {best[0]} steps, {best[1]} differing spikes")
            ok &= best[1] == 0
    print("PASS: Lava fixed-point == simulate_export" if ok else "FAIL: spikes differ")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("prepare", "run"):
        print(__doc__)
        sys.exit(2)
    sys.exit((prepare if sys.argv[1] == "prepare" else run)(Path(sys.argv[2])))
