"""Vendor file formats: Xylo Audio 2 specifications (``.npz``) and lava-dl netx HDF5 for Loihi 2.

``export_xylo(model, path, target="xylo_audio2", x=None)`` writes a NumPy ``.npz`` whose
arrays are exactly the keyword arguments of Rockpool's ``XyloSim.from_specification``
(:data:`~.registers.XYLO_SPEC_KEYS`), so ``XyloSim.from_specification(**np.load(path))``
runs it. Layers ``0..K-2`` become the hidden pool, layer ``K-1`` the output neurons.
Weight shift: the largest shift (most weight bits in use) for which, on calibration input
``x``, no current or membrane saturates in :func:`~.chipsim.simulate_xylo`; without ``x``,
the largest for which every threshold register fits 16 bits.

``export_netx(model, path)`` writes lava-dl's netx HDF5 with h5py alone:
``layer/<i>/{type ("dense" | "dense_rec"), shape [n], weight (n, d), weight_rec (n, n),
neuron/{type "CUBA", iDecay, vDecay, vThMant, refDelay 1, gradedSpike False}}``. lava-dl's
reader passes ``du = iDecay - 1`` and ``dv = vDecay`` to Lava's LIF (see
:mod:`.registers` for the codes).

Both refuse a network with any violation that :func:`~.mapping.map_to_hardware` reports
for the target (:class:`evrtrl.errors.UnsupportedError` listing them; nothing is written). Both write atomically (:mod:`evrtrl.atomic`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from evrtrl.atomic import atomic_write
from evrtrl.errors import UnsupportedError
from evrtrl.h5file import write_h5
from .netspec import Network, network_from_model
from .profiles import load_profile
from .registers import (XYLO_SPEC_KEYS, LayerRegisters, largest_shift_for_threshold, layer_registers,
                        xylo_specification)

__all__ = ["export_xylo", "export_netx", "xylo_registers", "loihi_registers"]


def _refuse_misfits(net: Network, prof, what: str, quantization: str) -> None:
    """Raise :class:`UnsupportedError` listing every rule ``map_to_hardware`` finds violated."""
    from .mapping import map_to_hardware

    rep = map_to_hardware(net, prof, quantization=quantization)
    if rep.violations:
        raise UnsupportedError(f"{what}: the network does not fit {prof.name}: "
                               + "; ".join(str(v) for v in rep.violations))


def xylo_registers(net: Network, prof, *, weight_shift: int | None = None, out_shift: int | None = None,
                   x=None, quantization: str = "per_tensor") -> list:
    """Registers of every layer for a Xylo profile, weight shifts chosen as :func:`export_xylo` does."""
    bits = prof.weight_bits or 8
    tb, ms = prof.threshold_bits or 16, prof.max_weight_shift or 0
    hid, out = net.layers[:-1], net.layers[-1]

    def build(kh: int, ko: int) -> list:
        return ([layer_registers(l, i, "xylo", bits, weight_shift=kh, quantization=quantization)
                 for i, l in enumerate(hid)]
                + [layer_registers(out, len(hid), "xylo", bits, weight_shift=ko, quantization=quantization)])

    if weight_shift is None:
        weight_shift = min(largest_shift_for_threshold(l, i, bits, tb, ms, quantization) for i, l in enumerate(hid))
    if out_shift is None:
        out_shift = largest_shift_for_threshold(out, len(hid), bits, tb, ms, quantization)
    regs = build(weight_shift, out_shift)
    if x is not None:
        from .chipsim import simulate_xylo

        kh, ko = weight_shift, out_shift
        while True:  # the largest shifts without saturation on the calibration input
            regs = build(kh, ko)
            if simulate_xylo(xylo_specification(regs, float(net.layers[0].dt)), x).saturations == 0 or (kh == 0 and ko == 0):
                break
            kh, ko = max(kh - 1, 0), max(ko - 1, 0)
    return regs


def loihi_registers(net: Network, prof, *, quantization: str = "per_tensor") -> list:
    bits = prof.weight_bits or 8
    return [layer_registers(l, i, "loihi", bits, quantization=quantization) for i, l in enumerate(net.layers)]


def export_xylo(model, path: str | os.PathLike, target="xylo_audio2", x=None, *,
                quantization: str = "per_tensor") -> list:
    """Write ``model`` as Rockpool ``XyloSim.from_specification`` arguments (``.npz``); returns the registers."""
    prof = load_profile(target)
    if prof.register_format != "xylo":
        raise UnsupportedError(f"export_xylo: profile {prof.name!r} has no Xylo register model "
                               "(register_format 'xylo'; built in: xylo_audio2)")
    net = network_from_model(model)
    _refuse_misfits(net, prof, "export_xylo", quantization)
    regs = xylo_registers(net, prof, x=x, quantization=quantization)
    spec = xylo_specification(regs, float(net.layers[0].dt))
    assert tuple(spec) == XYLO_SPEC_KEYS

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **spec)

    atomic_write(Path(path), write)
    return regs


def export_netx(model, path: str | os.PathLike, target="loihi2", *, quantization: str = "per_tensor") -> list:
    """Write ``model`` as a lava-dl netx HDF5 network (h5py only; sealed, :mod:`evrtrl.h5file`);
    returns the registers."""
    prof = load_profile(target)
    if prof.register_format != "loihi":
        raise UnsupportedError(f"export_netx: profile {prof.name!r} has no Loihi register model "
                               "(register_format 'loihi'; built in: loihi2)")
    net = network_from_model(model)
    _refuse_misfits(net, prof, "export_netx", quantization)
    regs = loihi_registers(net, prof, quantization=quantization)
    for r in regs:
        _uniform(r)
        if not any(np.any(w != 0) for w in r.weights.values()):
            raise UnsupportedError(f"export_netx: layer {r.layer} has only zero weight codes; lava-dl cannot "
                                   "load an all-zero weight matrix")

    def write(f) -> None:  # sealed (evrtrl.h5file.write_h5); the user block is invisible to lava-dl's h5py
        f.attrs["generator"] = "evrtrl"
        lg = f.create_group("layer")
        for i, r in enumerate(regs):
            g = lg.create_group(str(i))
            rec = "U" in r.weights
            g.create_dataset("type", data=np.bytes_("dense_rec" if rec else "dense"))
            g.create_dataset("shape", data=np.array([r.threshold.size], np.int64))
            g.create_dataset("weight", data=r.weights["W"].astype(np.int64))
            if rec:
                g.create_dataset("weight_rec", data=r.weights["U"].astype(np.int64))
            n = g.create_group("neuron")
            n.create_dataset("type", data=np.bytes_("CUBA"))
            n.create_dataset("iDecay", data=np.int64(r.decay_syn[0]))
            n.create_dataset("vDecay", data=np.int64(r.decay_mem[0]))
            n.create_dataset("vThMant", data=np.int64(r.threshold[0]))
            n.create_dataset("refDelay", data=np.int64(1))
            n.create_dataset("gradedSpike", data=np.bool_(False))

    write_h5(Path(path), write)
    return regs


def _uniform(r: LayerRegisters) -> None:
    for nm, a in (("vThMant", r.threshold), ("iDecay", r.decay_syn), ("vDecay", r.decay_mem)):
        if np.unique(a).size > 1:
            raise UnsupportedError(f"export_netx: layer {r.layer} needs one {nm} per layer in netx (lava-dl reads "
                                   f"a scalar), got {np.unique(a).size} different values")
