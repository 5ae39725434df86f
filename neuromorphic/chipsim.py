r"""Integer-faithful simulation of exported chip files (own numpy code; no vendor package is called).

:func:`simulate_export` runs a file written by :func:`~.vendor_export.export_xylo` (``.npz``,
Rockpool's ``XyloSim.from_specification`` arguments) or :func:`~.vendor_export.export_netx`
(lava-dl netx HDF5) as the chip computes it, for an input ``x`` (T, B, d) of spike counts,
and returns each neuron layer's spikes as (T, B, n) integer arrays.

**Xylo** (:func:`simulate_xylo`, xylosim 0.1.3 ``src/v2/cpp`` semantics). The chip's neuron
layers are the hidden pool and the output neurons. Per step ``t``:

1. input counts (clipped to 15) are delivered one spike at a time, inputs in index order,
   each adding ``c << weight_shift_in`` to the target's current with 16-bit saturation;
2. the hidden spike counts of step ``t-1`` (clipped to 31) are delivered the same way
   to the hidden pool (``weights_rec``) and to the output neurons (``weights_out``);
3. every neuron: ``i -= max(i >> dash_syn, sign(i))``; ``v = sat(v - max(v >> dash_mem, sign(v)) + sat(sum i))``;
   while ``v >= threshold`` and fewer than 31 (hidden) / 1 (output) spikes: ``v -= threshold``.

So a hidden layer fed by another hidden layer lags it by one step, and the output
neurons lag the hidden pool by one step. Saturation is exact: where a sum can leave
the 16-bit range the spikes are added one by one, in the chip's order.

**Loihi** (:func:`simulate_loihi`, Lava's ``PyDenseModelBitAcc`` + ``PyLifModelBitAcc`` as
netx builds them). Every Dense synapse hands on the activation of the previous step
(Lava buffers ``a_out`` one step), so network layer ``l`` lags the input by ``l + 1``
steps and a recurrent spike acts one step later. Inputs are unary spikes (``x != 0``).
Per step: ``u = sgn(u (4096 - iDecay)) (|.| >> 12) + (a << 6)`` wrapped to 24 bits,
``v = clip(sgn(v (4096 - vDecay)) (|.| >> 12) + u, ±(2^23 - 1))``, ``z = v > vThMant << 6``, ``v[z] = 0``.
Weights pass through lava-dl's ``optimize_weight_bits`` and Lava's clip/truncate/exponent
steps exactly as lava-dl loads them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evrtrl.errors import ConfigError, FormatError, ShapeError
from evrtrl.h5file import H5_ERRORS, read_h5

__all__ = ["simulate_export", "simulate_xylo", "simulate_loihi", "ChipRun", "read_netx", "NetxLayer"]

_I16_MIN, _I16_MAX = -(2 ** 15), 2 ** 15 - 1
XYLO_MAX_INPUT_SPIKES = 15   # xylosim XyloIAFNeuron.h MAX_NUM_INP_SPIKES
XYLO_MAX_SPIKES = 31         # MAX_NUM_SPIKES (hidden neurons)
XYLO_MAX_OUT_SPIKES = 1      # MAX_NUM_OUT_SPIKES


@dataclass
class ChipRun:
    """Spikes per chip neuron layer ((T, B, n) int arrays) and how often a state saturated."""

    spikes: list
    saturations: int = 0
    layer_delays: list = field(default_factory=list)  # steps each layer lags the library's schedule


def _as_counts(x, d: int) -> np.ndarray:
    try:
        import torch
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[2] != d:
        raise ShapeError(f"input must have shape (T, B, {d}) of spike counts, got {x.shape}")
    if np.any(x < 0) or np.any(x != np.round(x)):
        raise ConfigError("input must hold non-negative integer spike counts")
    return x.astype(np.int64)


# --------------------------------------------------------------------------- Xylo

def _decay(v: np.ndarray, dash: np.ndarray) -> np.ndarray:
    """xylosim ``decay``: ``v >> dash``, at least one step towards 0."""
    dv = v >> dash
    return np.where((dv == 0) & (v != 0), np.sign(v), dv)


def _deliver(i: np.ndarray, counts: np.ndarray, w: np.ndarray, cap: int) -> tuple[np.ndarray, int]:
    """Add ``counts`` (B, pre) spikes through ``w`` (pre, post) to ``i`` (B, post), saturating each add."""
    c = np.minimum(counts, cap)
    fast = i + c @ w
    bound = np.abs(i) + c @ np.abs(w)
    risky = bound > _I16_MAX
    if not risky.any():
        return fast, 0
    out = fast.copy()
    rows = np.nonzero(risky.any(axis=1))[0]
    sat = 0
    for b in rows:
        cur = i[b].copy()
        for pre in np.nonzero(c[b])[0]:
            wp = w[pre]
            for _ in range(int(c[b, pre])):
                nxt = cur + wp
                sat += int(((nxt > _I16_MAX) | (nxt < _I16_MIN)).sum())
                cur = np.clip(nxt, _I16_MIN, _I16_MAX)
        out[b] = np.where(risky[b], cur, fast[b])
    return out, sat


def _membrane(v: np.ndarray, dash: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, int]:
    """xylosim's membrane update ``v += clip(i - decay(v))`` in int16 (saturating), and the
    number of saturated entries."""
    raw = -_decay(v, dash) + i
    dv = np.clip(raw, _I16_MIN, _I16_MAX)
    nv = v + dv
    sat = int(((raw != dv) | (nv > _I16_MAX) | (nv < _I16_MIN)).sum())
    return np.clip(nv, _I16_MIN, _I16_MAX), sat


def _fire(v: np.ndarray, th: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """``while v >= th and n < cap: n += 1; v -= th`` (int16 state)."""
    pos = th > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        n_pos = np.where(v >= th, (v - th) // np.where(pos, th, 1) + 1, 0)
    n = np.where(pos, np.minimum(n_pos, cap), np.where(v >= th, cap, 0))
    v = v - n * th
    v = ((v - _I16_MIN) % 2 ** 16) + _I16_MIN  # int16 wrap (only reachable with th <= 0)
    return n, v


def _wrap16(a: np.ndarray) -> np.ndarray:
    return ((a - _I16_MIN) % 2 ** 16) + _I16_MIN


def simulate_xylo(spec, x) -> ChipRun:
    """Run a Xylo Audio 2 specification (``XyloSim.from_specification`` keyword arguments) on counts ``x``.

    Returns ``ChipRun.spikes = [hidden (T, B, N_hidden), output (T, B, N_out)]`` (spike counts).
    """
    g = {k: np.asarray(v) for k, v in dict(spec).items()}
    w_in = g["weights_in"].astype(np.int64)
    if w_in.ndim == 2:
        w_in = w_in[:, :, None]
    nh = g["threshold"].size
    w_rec = g.get("weights_rec")
    w_rec = np.zeros((nh, nh, 1), np.int64) if w_rec is None else w_rec.astype(np.int64)
    if w_rec.ndim == 2:
        w_rec = w_rec[:, :, None]
    w_out = g["weights_out"].astype(np.int64)
    oen, no = w_out.shape
    w_out = np.concatenate([np.zeros((nh - oen, no), np.int64), w_out])  # rows: the last OEN hidden neurons
    k_in, k_rec, k_out = (int(g.get(f"weight_shift_{s}", 0)) for s in ("in", "rec", "out"))
    # the chip passes (int8 weight << shift) as an int16
    syn = [[_wrap16(w[:, :, j] << k) for j in range(w.shape[2])] for w, k in ((w_in, k_in), (w_rec, k_rec))]
    wo = _wrap16(w_out << k_out)
    dash_syn = [g["dash_syn"].astype(np.int64), g.get("dash_syn_2", g["dash_syn"]).astype(np.int64)]
    dash_mem = g["dash_mem"].astype(np.int64)
    th = g["threshold"].astype(np.int64)
    th_o, dm_o, ds_o = (g[k].astype(np.int64) for k in ("threshold_out", "dash_mem_out", "dash_syn_out"))
    xs = _as_counts(x, w_in.shape[0])
    T, B, _ = xs.shape
    n_syn = 2  # every hidden neuron has two synaptic currents (the second stays 0 where unused)
    i_h = [np.zeros((B, nh), np.int64) for _ in range(n_syn)]
    v_h = np.zeros((B, nh), np.int64)
    i_o, v_o = np.zeros((B, no), np.int64), np.zeros((B, no), np.int64)
    z_h = np.zeros((B, nh), np.int64)
    out_h, out_o = np.zeros((T, B, nh), np.int64), np.zeros((T, B, no), np.int64)
    sat = 0
    for t in range(T):
        for j, w in enumerate(syn[0]):
            i_h[j], s1 = _deliver(i_h[j], xs[t], w, XYLO_MAX_INPUT_SPIKES)
            sat += s1
        for j, w in enumerate(syn[1]):
            i_h[j], s2 = _deliver(i_h[j], z_h, w, XYLO_MAX_SPIKES)
            sat += s2
        i_o, s3 = _deliver(i_o, z_h, wo, XYLO_MAX_SPIKES)
        sat += s3
        # hidden neurons
        for j in range(n_syn):
            i_h[j] = i_h[j] - _decay(i_h[j], dash_syn[j])
        isum = sum(i_h)
        v_h, s4 = _membrane(v_h, dash_mem, isum)
        sat += s4
        z_h, v_h = _fire(v_h, th, XYLO_MAX_SPIKES)
        # output neurons
        i_o = i_o - _decay(i_o, ds_o)
        v_o, s5 = _membrane(v_o, dm_o, i_o)
        sat += s5
        z_o, v_o = _fire(v_o, th_o, XYLO_MAX_OUT_SPIKES)
        out_h[t], out_o[t] = z_h, z_o
    return ChipRun([out_h, out_o], sat)


# --------------------------------------------------------------------------- Loihi (Lava netx)

@dataclass
class NetxLayer:
    """One netx ``dense``/``dense_rec`` layer as Lava loads it."""

    weight: np.ndarray            # (n, d) int codes as stored
    weight_rec: np.ndarray | None  # (n, n)
    i_decay: int
    v_decay: int
    v_th_mant: int
    graded: bool = False


def read_netx(path) -> list:
    """Read the ``layer/<i>`` groups of a netx HDF5 file (dense and dense_rec with CUBA neurons).

    Through :func:`evrtrl.h5file.read_h5`: a file written by :func:`export_netx` is sealed and
    checked; one written by lava-dl is read as an unsealed file. Both are parsed in a
    time-limited child first and may not link to other files."""
    p = Path(path)
    layers = []
    f = read_h5(p)
    try:
        with f:
            if "layer" not in f:
                raise FormatError(f"{str(p)!r} has no 'layer' group: not a lava-dl netx file")
            g = f["layer"]
            for i in range(len(g)):
                lg = g[str(i)]
                typ = lg["type"][()]
                typ = (typ[0] if np.ndim(typ) else typ)
                typ = typ.decode("ascii") if isinstance(typ, bytes) else str(typ)
                if typ == "input":
                    continue
                if typ not in ("dense", "dense_rec"):
                    raise FormatError(f"{str(p)!r} layer/{i}: type {typ!r}; the simulation knows dense and dense_rec")
                ng = lg["neuron"]
                nt = ng["type"][()]
                nt = (nt[0] if np.ndim(nt) else nt)
                nt = nt.decode("ascii") if isinstance(nt, bytes) else str(nt)
                if nt not in ("CUBA", "LOIHI"):
                    raise FormatError(f"{str(p)!r} layer/{i}/neuron: type {nt!r}; expected CUBA")
                w = lg["weight"][()].astype(np.int64)
                wr = lg["weight_rec"][()].astype(np.int64) if typ == "dense_rec" else None
                layers.append(NetxLayer(w, wr, int(ng["iDecay"][()]), int(ng["vDecay"][()]), int(ng["vThMant"][()]),
                                        bool(ng["gradedSpike"][()]) if "gradedSpike" in ng else False))
    except FormatError:
        raise
    except H5_ERRORS as e:  # what h5py raises on a damaged structure
        raise FormatError(f"{str(p)!r}: netx structure unreadable ({type(e).__name__}: {e})") from e
    if not layers:
        raise FormatError(f"{str(p)!r} holds no dense layers")
    return layers


def _lava_effective_weights(w: np.ndarray) -> tuple[np.ndarray, int]:
    """lava-dl ``netx.utils.optimize_weight_bits`` then Lava ``clip_weights``/``truncate_weights``.

    Returns the integer weights Lava accumulates and the exponent applied to the sum.
    """
    w = w.astype(np.int64)
    mx, mn = int(w.max()), int(w.min())
    if mx == 0 and mn == 0:
        raise FormatError("an all-zero weight matrix cannot be loaded by lava-dl (its scale is infinite)")
    if mx > 254 and mn < 0:
        w = np.clip(w, -256, 254)
        mx = int(w.max())
    if mn < -256 and mx > 0:
        w = np.clip(w, -256, 254)
        mn = int(w.min())
    if mx < 0:  # inhibitory only
        signed, scale = 0, -256 / mn
    elif mn >= 0:  # excitatory only
        signed, scale = 0, 255 / mx
    else:  # mixed signs
        signed, scale = 1, min(127 / mx, -128 / mn)
    scale_bits = int(np.floor(np.log2(scale))) + signed
    n = 8
    found = False
    while not found and n > 0:
        if np.sum(np.abs(w / 2 ** n - np.round(w / 2 ** n))) == 0:
            found = True
        else:
            n -= 1
    n -= signed
    nbits = int(8 - scale_bits - n)
    wexp = -scale_bits
    w2 = np.left_shift(w.astype(np.int64), scale_bits) if scale_bits >= 0 else np.right_shift(w, -scale_bits)
    # Lava Dense bit-accurate model: determine_sign_mode, clip_weights(num_bits=8), truncate_weights
    lmode = "exc" if w2.min() >= 0 else ("inh" if w2.max() <= 0 else "mixed")
    mixed = int(lmode == "mixed")
    if lmode == "inh":
        w2 = -w2
    w2 = np.clip(w2, -(2 ** 8) * mixed, 2 ** 8 - 1)
    ntr = 8 - nbits + mixed
    w2 = (w2 >> ntr) << ntr
    if lmode == "inh":
        w2 = -w2
    return w2, wexp


def _shift(a: np.ndarray, e: int) -> np.ndarray:
    return np.left_shift(a, e) if e > 0 else np.right_shift(a, -e)


def _lava_decay(x: np.ndarray, keep: int) -> np.ndarray:
    p = x * keep
    return np.sign(p) * (np.abs(p) >> 12)


def simulate_loihi(layers: list, x) -> ChipRun:
    """Run netx ``layers`` (:class:`NetxLayer`) in Lava's fixed-point semantics; spikes per layer (T, B, n)."""
    xs = _as_counts(x, layers[0].weight.shape[1])
    xs = (xs != 0).astype(np.int64)
    T, B, _ = xs.shape
    MAX = 2 ** 23
    eff = []
    for L in layers:
        if L.weight_rec is not None:
            cat, e = _lava_effective_weights(np.hstack([L.weight, L.weight_rec]))
            eff.append((cat[:, :L.weight.shape[1]], cat[:, L.weight.shape[1]:], e))
        else:
            w, e = _lava_effective_weights(L.weight)
            eff.append((w, None, e))
    n_l = [L.weight.shape[0] for L in layers]
    u = [np.zeros((B, n), np.int64) for n in n_l]
    v = [np.zeros((B, n), np.int64) for n in n_l]
    a_buf = [np.zeros((B, n), np.int64) for n in n_l]   # Dense a_buff from the previous step
    r_buf = [np.zeros((B, n), np.int64) for n in n_l]   # recurrent Dense a_buff
    out = [np.zeros((T, B, n), np.int64) for n in n_l]
    sat = 0
    for t in range(T):
        s_in = xs[t]
        for li, L in enumerate(layers):
            w, wr, e = eff[li]
            a_in = a_buf[li] + r_buf[li]
            a_buf[li] = _shift(s_in @ w.T, e)           # received now, sent next step
            du = _lava_decay(u[li], 4096 - L.i_decay) + (a_in << 6)
            wrapped = np.where(du > MAX, du - 2 * MAX, du)
            wrapped = np.where(wrapped <= -MAX, du + 2 * MAX, wrapped)
            sat += int((wrapped != du).sum())
            u[li] = wrapped
            nv = _lava_decay(v[li], 4096 - L.v_decay) + u[li]
            cl = np.clip(nv, -MAX + 1, MAX - 1)
            sat += int((cl != nv).sum())
            z = cl > (L.v_th_mant << 6)
            v[li] = np.where(z, 0, cl)
            zi = z.astype(np.int64)
            if wr is not None:
                r_buf[li] = _shift(zi @ wr.T, e)
            out[li][t] = zi
            s_in = zi
    return ChipRun(out, sat, [li + 1 for li in range(len(layers))])


# --------------------------------------------------------------------------- dispatch

def simulate_export(path: str | os.PathLike, x) -> list:
    """Spikes of each neuron layer ((T, B, n) int arrays) of the exported chip file ``path`` on input counts ``x``.

    ``.npz`` (Xylo Audio 2, :func:`~.vendor_export.export_xylo`): ``[hidden pool, output]``
    spike counts; an HDF5 netx file (:func:`~.vendor_export.export_netx`): one array per
    layer. See the module docstring for the timing of each chip.
    """
    return simulate_export_run(path, x).spikes


def simulate_export_run(path: str | os.PathLike, x) -> ChipRun:
    """:func:`simulate_export` with the saturation count and layer delays."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"exported file {str(p)!r} does not exist")
    if p.suffix == ".npz":
        from .registers import XYLO_SPEC_KEYS

        with np.load(p) as z:
            missing = [k for k in XYLO_SPEC_KEYS if k not in z.files]
            if missing:
                raise FormatError(f"{str(p)!r} lacks Xylo specification arrays {missing}")
            spec = {k: z[k] for k in z.files}
        return simulate_xylo(spec, x)
    return simulate_loihi(read_netx(p), x)
