"""The library's own HDF5 bundle: any network (EGRU included), sparse, versioned.

NIR has no gated neuron, so EGRU networks (and any network together with its
quantisation and placement) are written in this format, meant for programmable
targets (Loihi 2 microcode, SpiNNaker 2 ARM cores). Format version 3::

    /                       attrs: format = "evrtrl-bundle", version = 3,
                                   n_layers, input_size, created_by
    /layers/<i>/            attrs: kind = "lif" | "egru", n, d
        params/             LIF attrs: dt (s), reset, integration, and (new in v3) synapse
                                       (false: current-free LIF, no tau_syn), trainable (JSON
                                       list of the learned neuron parameters);
                            LIF neuron parameters tau_mem, tau_syn (s), v_th, v_leak, v_reset,
                                       bias (new in v3): an attribute when one value serves
                                       every neuron, else (new in v3) a dataset (n,) float64
                            EGRU datasets: b_u, b_r, b_z, theta (n,)
        weights/<name>/     one group per weight matrix (W, U, W_u, ..., U_z), CSR:
                            attrs shape = (rows, cols); datasets indptr (rows+1,) int64,
                            indices (nnz,) int64, data (nnz,) float (live, non-zero entries
                            only: pruned synapses are absent)
            q/              optional (when a mapping is given): int_data (nnz,) int32 codes
                            aligned with data; scale (1,) or (rows,) float64; attrs bits, mode.
                            EGRU (new in v2): every W_g/U_g carries q/, scale = the scale of
                            gate g (shared by W_g and U_g), attr gate = "u" | "r" | "z"
        params/hw/          optional, LIF, new in v2: attrs alpha_mem, alpha_syn (hardware
                            decay factors), v_th (hardware threshold, per-tensor mode) and,
                            where the chip has them, threshold_code, decay_code_mem/_syn
        placement           optional (n,) int32 core id per neuron (-1 = off-core)
    /mapping/               optional, attrs profile, ok, n_cores; dataset report_json (UTF-8)
    /readout/               optional (a trained models.Readout): datasets weight (n_out, n_last),
                            bias (n_out,): y_t = weight z_t + bias of the last layer's spikes

The file is sealed with a content hash that :func:`read_bundle` checks before libhdf5 parses
it, and links to other files are refused (:mod:`evrtrl.h5file`).

Readers must reject a ``version`` they do not know (:func:`read_bundle` does).
Version 1 and 2 files are still read: v2 only adds optional groups (a v1 file is a v2 file
without EGRU codes and ``params/hw``), v3 per-neuron datasets, ``bias`` (absent: 0),
``synapse`` (absent: true) and ``trainable`` (absent: none).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from evrtrl.errors import ConfigError, FormatError, ShapeError
from evrtrl.h5file import H5_ERRORS, group, read_h5, write_h5
from evrtrl.models.lif import SPEC as LIF_SPEC

from .netspec import EGRU_UNIT_PARAMETERS, EGRULayer, LIFLayer, Network, network_from_model

__all__ = ["BUNDLE_VERSION", "READABLE_VERSIONS", "Bundle", "export_bundle", "read_bundle"]

BUNDLE_VERSION = 3
#: versions this reader understands (module docstring)
READABLE_VERSIONS = (1, 2, 3)
_FORMAT = "evrtrl-bundle"


@dataclass
class Bundle:
    network: Network
    version: int
    quantized: list        # per layer: {weight name: (int codes dense, scale, bits, mode)} or {};
                           # LIF layers mapped in v2 also carry "hw": {alpha_mem, alpha_syn, v_th, ...}
    placement: list        # per layer: int array or None
    mapping: dict | None   # the mapping report as a dict, if written
    readout: dict | None = None  # {"weight": (n_out, n), "bias": (n_out,)} if written


def _csr(M: np.ndarray):
    rows, cols = np.nonzero(M)
    indptr = np.zeros(M.shape[0] + 1, np.int64)
    np.add.at(indptr, rows + 1, 1)
    return np.cumsum(indptr), cols.astype(np.int64), M[rows, cols], (rows, cols)


def export_bundle(model, path, mapping=None, readout=None) -> None:
    """Write ``model`` (cells/Stack/Network, LIF or EGRU), optionally a MappingReport and the trained
    ``readout`` (``models.Readout``), atomically and sealed (:func:`evrtrl.h5file.write_h5`)."""
    net = network_from_model(model)

    def write(f):  # body indented as in the former `with h5py.File(...)` block
            f.attrs.update(format=_FORMAT, version=BUNDLE_VERSION, n_layers=len(net.layers),
                           input_size=net.input_size, created_by="evrtrl.neuromorphic")
            for i, L in enumerate(net.layers):
                g = f.create_group(f"layers/{i}")
                g.attrs.update(kind=L.kind, n=L.n, d=L.d)
                pg = g.create_group("params")
                if L.kind == "lif":
                    for h in LIF_SPEC.hyper:
                        v = getattr(L, h.name, None)
                        if h.name == "recurrent" or v is None:
                            continue
                        if h.per_neuron and np.ndim(v):
                            pg.create_dataset(h.name, data=np.asarray(v, np.float64))
                        else:
                            pg.attrs[h.name] = json.dumps(list(v)) if h.type is tuple else v
                    if mapping is not None:
                        hw = pg.create_group("hw")
                        Lq = mapping.quantized_network.layers[i]
                        am, asy = Lq.decay_factors()
                        hw.attrs.update(alpha_mem=am, alpha_syn=asy, v_th=float(Lq.v_th))
                        qli = mapping.quantization[i]
                        if qli.threshold_code is not None:
                            hw.attrs["threshold_code"] = float(qli.threshold_code)
                        for nm, c in qli.decay_codes.items():
                            if c is not None:
                                hw.attrs[f"decay_code_{nm}"] = int(c)
                else:
                    for k in EGRU_UNIT_PARAMETERS:
                        pg.create_dataset(k, data=np.asarray(L.params[k]))
                ql = mapping.quantization[i] if mapping is not None else None
                for k in L.weight_names():
                    M = np.where(L.mask(k), np.asarray(L.weight(k)), 0)
                    indptr, indices, data, (r, c) = _csr(M)
                    wg = g.create_group(f"weights/{k}")
                    wg.attrs["shape"] = M.shape
                    wg.create_dataset("indptr", data=indptr)
                    wg.create_dataset("indices", data=indices)
                    wg.create_dataset("data", data=data)
                    qw = None
                    if ql is not None:
                        qw = ql.gate_quantized.get(k[-1]) if L.kind == "egru" else ql.quantized
                    if qw is not None and k in qw.q:
                        qg = wg.create_group("q")
                        qg.create_dataset("int_data", data=qw.q[k][r, c].astype(np.int32))
                        qg.create_dataset("scale", data=np.asarray(qw.scale, np.float64))
                        qg.attrs.update(bits=qw.bits, mode=qw.mode)
                        if L.kind == "egru":
                            qg.attrs["gate"] = k[-1]
                if mapping is not None:
                    g.create_dataset("placement", data=np.asarray(mapping.placement[i], np.int32))
            if mapping is not None:
                mg = f.create_group("mapping")
                mg.attrs.update(profile=mapping.profile.name, ok=mapping.ok, n_cores=len(mapping.cores))
                mg.create_dataset("report_json", data=json.dumps(mapping.to_dict()))
            if readout is not None:
                rg = f.create_group("readout")
                rg.create_dataset("weight", data=readout.weight.detach().cpu().numpy())
                rg.create_dataset("bias", data=readout.bias.detach().cpu().numpy())

    write_h5(path, write)


def _lif_params(pg, path, i: int) -> dict:
    """LIF hyper-parameters of one bundle layer (any readable version): per-neuron values from
    a dataset or an attribute, the rest from attributes; absent ones take their defaults."""
    where = f"{str(path)!r}: 'layers/{i}/params'"
    raw = {}
    for h in LIF_SPEC.hyper:
        if h.name == "recurrent":
            continue
        if h.per_neuron and h.name in pg:
            raw[h.name] = pg[h.name][()]
        elif h.name in pg.attrs:
            raw[h.name] = pg.attrs[h.name]
        elif not h.required:
            raw[h.name] = h.default
        else:
            raise FormatError(f"{where} lacks the LIF parameter {h.name!r}")
    try:
        return LIF_SPEC.check_config(raw, where=where)
    except ConfigError as exc:
        raise FormatError(str(exc)) from exc


def read_bundle(path) -> Bundle:
    """Read a bundle written by :func:`export_bundle`; unknown versions raise :class:`FormatError`."""
    f = read_h5(path)
    try:
        return _read_bundle(f, path)
    except FormatError:
        raise
    except H5_ERRORS as e:  # what h5py raises on a damaged structure
        raise FormatError(f"{str(path)!r}: bundle structure unreadable ({type(e).__name__}: {e})") from e
    finally:
        f.close()


def _read_bundle(f, path) -> Bundle:  # body indented as in the former `with f:` block
        if f.attrs.get("format") != _FORMAT:
            raise FormatError(f"{str(path)!r}: attribute 'format' is {f.attrs.get('format')!r}, expected {_FORMAT!r}")
        version = int(f.attrs.get("version", -1))
        if version not in READABLE_VERSIONS:
            raise FormatError(f"{str(path)!r}: bundle 'version' {version} is not supported (this reader knows "
                              f"versions {list(READABLE_VERSIONS)})")
        layers, quant, place = [], [], []
        for i in range(int(f.attrs["n_layers"])):
            if f"layers/{i}" not in f:
                raise FormatError(f"{str(path)!r}: group 'layers/{i}' is missing")
            g = f[f"layers/{i}"]
            kind = g.attrs["kind"]
            W, Q = {}, {}
            for k in list(g["weights"]):
                wg = group(g["weights"], k, path)  # FormatError if a listed member cannot be opened
                shape = tuple(int(s) for s in wg.attrs["shape"])
                indptr, indices, data = wg["indptr"][()], wg["indices"][()], wg["data"][()]
                if (len(shape) != 2 or min(shape) < 0 or indptr.shape != (shape[0] + 1,)
                        or indices.shape != data.shape or indptr[0] != 0 or indptr[-1] != data.size
                        or (indptr.size > 1 and np.diff(indptr).min() < 0)
                        or (indices.size and (indices.min() < 0 or indices.max() >= shape[1]))):
                    raise FormatError(f"{str(path)!r}: weight 'layers/{i}/weights/{k}' has inconsistent CSR arrays")
                M = np.zeros(shape, data.dtype)
                rows = np.repeat(np.arange(shape[0]), np.diff(indptr))
                M[rows, indices] = data
                W[k] = M
                if "q" in wg:
                    qi = np.zeros(shape, np.int64)
                    qi[rows, indices] = wg["q/int_data"][()]
                    Q[k] = (qi, wg["q/scale"][()], int(wg["q"].attrs["bits"]), str(wg["q"].attrs["mode"]))
            masks = {k: M != 0 for k, M in W.items()}
            if kind == "lif":
                try:
                    layers.append(LIFLayer(W=W["W"], U=W.get("U"), masks=masks, **_lif_params(g["params"], path, i)))
                except (ConfigError, ShapeError) as exc:
                    raise FormatError(f"{str(path)!r}: layer {i}: {exc}") from exc
            elif kind == "egru":
                params = dict(W)
                params.update({k: g["params"][k][()] for k in EGRU_UNIT_PARAMETERS})
                layers.append(EGRULayer(params=params, masks=masks))
            else:
                raise FormatError(f"{str(path)!r}: layer {i} attribute 'kind' is {kind!r}, expected 'lif' or 'egru'")
            if kind == "lif" and "hw" in g["params"]:
                Q["hw"] = {a: (v.item() if hasattr(v, "item") else v) for a, v in g["params/hw"].attrs.items()}
            quant.append(Q)
            place.append(g["placement"][()] if "placement" in g else None)
        mapping = json.loads(f["mapping/report_json"][()]) if "mapping" in f else None
        readout = None
        if "readout" in f:
            rg = group(f, "readout", path)
            readout = {k: rg[k][()] for k in ("weight", "bias")}
            w, b = readout["weight"], readout["bias"]
            n_last = layers[-1].n if layers else 0
            if w.ndim != 2 or w.shape[1] != n_last or b.shape != (w.shape[0],):
                raise FormatError(f"{str(path)!r}: readout weight {w.shape} and bias {b.shape} do not match the "
                                  f"last layer's {n_last} units (expected (n_out, {n_last}) and (n_out,))")
        return Bundle(Network(layers), version, quant, place, mapping, readout)
