"""Fit / violation verdicts of ``map_to_hardware(..., "xylo_audio2")`` against Rockpool's Xylo mapper.

Needs the ``vendor`` extra (``pip install -e '.[vendor]'``: rockpool, xylosim). Run::

    python -m evrtrl.neuromorphic.examples.xylo_mapper_compare      # prints the markdown table

For every network of :func:`networks` it builds the same network in Rockpool
(``LinearTorch`` + ``LIFTorch`` with ``threshold = v_th * alpha_syn / b``: Rockpool's LIF adds
the decayed current to the membrane with gain 1, see ``registers.py``), maps it with
``rockpool.devices.xylo.syns61201.mapper`` and quantises it with ``global_quantize``
(8-bit weights, 16-bit thresholds), and records:

* Rockpool's verdict: ``DRCError`` / ``DRCWarning`` (named), else "maps";
* where Rockpool's quantiser had to shrink weights to fit the threshold, the largest weight
  code left (127 = full 8-bit precision) and so the bits of weight precision lost;
* dash codes Rockpool writes beyond the chip's 4 bits (Rockpool does not check them);
* this library's verdict (violated rules).

"Agree" means: this library reports no violation exactly when Rockpool maps the network
with full weight precision and representable dashes. Rockpool's LIF has only subtractive
reset; a zero-reset network is given to it as its subtractive version (marked).
"""
from __future__ import annotations

import math
import re
import sys
import warnings

import numpy as np
import torch


def _lif(d, n, *, rec=True, tau_mem=16e-3, tau_syn=4e-3, v_th=1.0, reset="subtract", scale=4.0, seed=0):
    from evrtrl.models import LIF

    torch.manual_seed(seed)
    m = LIF(d, n, tau_mem=tau_mem, tau_syn=tau_syn, dt=1e-3, v_th=v_th, reset=reset, integration="euler",
            recurrent=rec, dtype=torch.float64)
    with torch.no_grad():
        m.W.mul_(scale)
    return m


def networks() -> list:
    """(name, model) pairs: fitting networks and every class where a rule decides."""
    from evrtrl.models import Stack

    S = Stack
    return [
        ("8-40r-4 fits", S(_lif(8, 40), _lif(40, 4, rec=False))),
        ("16-100r-8 fits", S(_lif(16, 100), _lif(100, 8, rec=False, seed=1))),
        ("8-30r-20-4 two hidden layers", S(_lif(8, 30), _lif(30, 20, rec=False, seed=2), _lif(20, 4, rec=False))),
        ("4-10-2 feed-forward", S(_lif(4, 10, rec=False), _lif(10, 2, rec=False))),
        ("tau_mem 64 ms, tau_syn 32 ms", S(_lif(8, 40, tau_mem=64e-3, tau_syn=32e-3), _lif(40, 4, rec=False))),
        ("v_th 0.2", S(_lif(8, 40, v_th=0.2), _lif(40, 4, rec=False, v_th=0.2))),
        ("1 layer 8-4 (no output layer)", _lif(8, 4, rec=False)),
        ("v_th 400 (threshold overflow)", S(_lif(8, 40, v_th=400.0), _lif(40, 4, rec=False))),
        ("tau_mem 100 s (threshold overflow, dash 17)", S(_lif(8, 40, tau_mem=100.0), _lif(40, 4, rec=False))),
        ("tau_syn 100 s (dash 17)", S(_lif(8, 40, tau_syn=100.0), _lif(40, 4, rec=False))),
        ("zero reset", S(_lif(8, 40, reset="zero"), _lif(40, 4, rec=False, reset="zero"))),
        ("recurrent output layer", S(_lif(8, 40), _lif(40, 4, rec=True))),
        ("17 inputs", S(_lif(17, 40), _lif(40, 4, rec=False))),
        ("9 outputs", S(_lif(8, 40), _lif(40, 9, rec=False))),
        ("1001 hidden neurons", S(_lif(8, 1001, rec=False), _lif(1001, 4, rec=False))),
        ("tau_syn = dt", S(_lif(8, 40, tau_syn=1e-3 * (1 + 1e-9)), _lif(40, 4, rec=False))),
    ]


def _rockpool_net(model):
    from rockpool.nn.combinators import Sequential
    from rockpool.nn.modules import LIFTorch, LinearTorch

    from evrtrl.neuromorphic.netspec import network_from_model
    from evrtrl.neuromorphic.registers import neuron_constants

    mods = []
    for L in network_from_model(model).layers:
        c = neuron_constants(L)
        th = torch.as_tensor(np.broadcast_to(L.v_th * c["alpha"] / c["b"], (L.n,)).copy())
        mods.append(LinearTorch((L.d, L.n), weight=torch.as_tensor(L.W.T.copy()), has_bias=False))
        kw = dict(has_rec=True, w_rec=torch.as_tensor(L.U.T.copy())) if L.U is not None else {}
        mods.append(LIFTorch(L.n, tau_mem=float(L.tau_mem), tau_syn=float(L.tau_syn), threshold=th, dt=L.dt, **kw))
    return Sequential(*mods)


def rockpool_verdict(model, syns61201) -> dict:
    """Map ``model`` with Rockpool (``syns61201`` module); returns verdict, max weight code, max dash."""
    from rockpool.transform.quantize_methods import global_quantize

    out = {"verdict": "maps", "max_code": None, "max_dash": None}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            spec = syns61201.mapper(_rockpool_net(model).as_graph(), weight_dtype="float",
                                    threshold_dtype="float", dash_dtype="float")
            spec.update(global_quantize(**spec))
        except Exception as e:  # DRCError and the errors its conversions raise
            msg = str(e).split("\n")[0]
            if e.__cause__ is not None:
                msg += f" ({str(e.__cause__).splitlines()[0]})"
            out["verdict"] = "DRCError: " + re.sub(r'"[^"]*"|<[^>]*>', "...", msg)[:150]
            return out
    drc = [str(w.message).split("\n")[0] for w in caught if "DRC" in type(w.message).__name__]
    if drc:
        out["verdict"] = "DRCWarning: " + drc[0][:120]
    hidden = max(int(np.abs(spec[k]).max()) for k in ("weights_in", "weights_rec"))
    out["max_code"] = min(hidden, int(np.abs(spec["weights_out"]).max()))  # the worse of the two scale groups
    out["max_dash"] = int(max(np.max(spec[k]) for k in ("dash_mem", "dash_syn", "dash_mem_out", "dash_syn_out")))
    return out


def compare(syns61201) -> list:
    from evrtrl.neuromorphic import map_to_hardware

    rows = []
    for name, m in networks():
        rep = map_to_hardware(m, "xylo_audio2")
        ours = sorted({v.rule for v in rep.violations})
        rp = rockpool_verdict(m, syns61201)
        rp_ok = rp["verdict"] == "maps" and rp["max_code"] == 127 and rp["max_dash"] <= 15
        agree = (not ours) == rp_ok
        if not agree and ours == ["reset_mode"]:
            agree = "explained"  # Rockpool's LIF has no zero reset: it was given the subtractive version
        rows.append(dict(name=name, ours=ours, rockpool=rp, agree=agree))
    return rows


def table(rows: list) -> str:
    out = ["| network | this library | Rockpool 3.1.0 mapper + global_quantize | largest weight code (bits lost) "
           "| largest dash | agree |", "|---|---|---|---|---|---|"]
    for r in rows:
        rp = r["rockpool"]
        code = "-" if rp["max_code"] is None else (
            f"{rp['max_code']}" + (f" ({math.log2(127 / max(rp['max_code'], 1)):.1f} bits lost)"
                                   if rp["max_code"] < 127 else ""))
        out.append(f"| {r['name']} | {', '.join(r['ours']) or 'fits'} | {rp['verdict']} | {code} | "
                   f"{'-' if rp['max_dash'] is None else rp['max_dash']} | "
                   f"{ {True: 'yes', False: 'NO', 'explained': 'n/a: Rockpool has no zero reset'}[r['agree']]} |")
    return "\n".join(out)


def load_syns61201():
    """``rockpool.devices.xylo.syns61201`` (XyloSim, mapper) without running ``rockpool.devices.xylo.__init__``.

    That ``__init__`` imports samna (Xylo Audio 3 / HDK support), which is not installable
    from PyPI; registering the parent package in ``sys.modules`` by hand skips it.
    """
    import importlib
    import types
    from pathlib import Path

    import rockpool

    name = "rockpool.devices.xylo"
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(Path(rockpool.__file__).parent / "devices" / "xylo")]
        sys.modules[name] = pkg
    return importlib.import_module(name + ".syns61201")


def main() -> int:
    rows = compare(load_syns61201())
    print(table(rows))
    print(f"\n{sum(r['agree'] is True for r in rows)} of {len(rows)} agree; "
          f"{sum(r['agree'] == 'explained' for r in rows)} not comparable (zero reset)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
