"""NIR export and import for LIF networks (the ``nir`` package).

Conventions (also in ``docs/neuromorphic.md``):

* NIR has no dt. Time constants are written in seconds; ``dt`` and the
  discretisation go into the graph metadata (``evrtrl.dt``,
  ``evrtrl.integration``, ``evrtrl.reset``) and are only hints on import:
  :func:`import_nir` takes ``dt=`` (falling back to the metadata) and
  ``integration=``.
* Input semantics are those of Norse and snnTorch for these graphs: the value a
  weight node delivers in step t is held over the step (a "box" of width dt).
  For CubaLIF, ``tau_syn I' = -I + w_in S`` and ``tau_mem v' = v_leak - v + r I``
  give, with the library's current ``i = r I``, a jump of
  ``g * (W x_t)`` per step with **g = r * w_in * dt / tau_syn** (per neuron).
  So the library weights are ``W_lib = diag(g) W_nir`` (and likewise ``U``). With
  ``integration="euler"`` this reproduces Norse's ``from_nir`` step exactly;
  with ``"exact"`` the subsequent decay is integrated exactly but the
  box input is approximated by a jump (first order in dt / tau_syn).
* NIR ``LIF`` (no synaptic current) imports as the library's current-free LIF
  (``synapse=False``) with ``W_lib = diag(r) W_nir``: ``integration="euler"`` is Norse's
  ``LIFBoxCell`` step (what Norse's ``from_nir`` builds), ``"exact"`` integrates the same ODE
  exactly with the input held over the step. It exports back as ``LIF``.
* Per-neuron parameters: every field (``tau_mem``, ``tau_syn``, ``tau``, ``v_leak``,
  ``v_threshold``, ``v_reset``, ``r``, ``w_in``) may differ between the neurons of a node, as
  in trained networks; the library layer holds them per neuron (``models.LIF``).
* Biases: an ``Affine`` bias (feed-forward and recurrent summed) becomes the layer's
  ``bias``, scaled like the weights (``bias_lib = g * b``); export splits it back (the
  recurrent part as the import found it).
* Recurrence is a cycle ``lif -> w_rec -> lif``. On export it is written flat
  with dotted names (``lif1.lif``, ``lif1.w_rec``: what the shared NIR-paper
  graphs hold, and what nirtorch flattens nested graphs to) or, with
  ``nested=True``, as a nested ``NIRGraph`` ``lif1`` with nodes ``input``,
  ``lif``, ``w_rec``, ``output`` as snnTorch writes it. Import accepts both.
* An imported model remembers where it came from (``model.nir_provenance``),
  so that export gives back the same node names, types (Linear stays Linear,
  Affine stays Affine, LIF stays LIF), r / w_in split, biases and dtypes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from evrtrl.atomic import atomic_write
from evrtrl.errors import ConfigError, FormatError, ShapeError, UnsupportedError
from evrtrl.extras import require
from evrtrl.h5file import H5_ERRORS, probe_file, refuse_links

from .netspec import LIFLayer, Network, model_from_network, network_from_model

__all__ = ["export_nir", "import_nir", "nir_graph_from_network", "network_from_nir_graph",
           "flatten_graph"]

_WEIGHT_TYPES = ("Affine", "Linear")
_NEURON_TYPES = ("CubaLIF", "LIF")


def _nir():
    return require("nir", "NIR export/import")


# --------------------------------------------------------------------------- graph helpers

def flatten_graph(graph) -> tuple[dict, list, bool]:
    """Inline nested NIRGraph nodes (names ``outer.inner``); returns (nodes, edges, was_nested)."""
    nir = _nir()
    nodes, edges, nested = {}, [], False
    sub_in, sub_out = {}, {}
    for name, node in graph.nodes.items():
        if isinstance(node, nir.NIRGraph):
            nested = True
            n2, e2, _ = flatten_graph(node)
            ins = [k for k, v in n2.items() if isinstance(v, nir.Input)]
            outs = [k for k, v in n2.items() if isinstance(v, nir.Output)]
            sub_in[name] = [f"{name}.{b}" for a, b in e2 if a in ins]
            sub_out[name] = [f"{name}.{a}" for a, b in e2 if b in outs]
            for k, v in n2.items():
                if k not in ins and k not in outs:
                    nodes[f"{name}.{k}"] = v
            edges += [(f"{name}.{a}", f"{name}.{b}") for a, b in e2 if a not in ins and b not in outs]
        else:
            nodes[name] = node
    for a, b in graph.edges:
        for s in sub_out.get(a, [a]):
            for d in sub_in.get(b, [b]):
                edges.append((s, d))
    return nodes, edges, nested


def _arr(node_name: str, field: str, value, n: int) -> np.ndarray:
    """A per-neuron NIR field as an array (n,) of its own dtype (scalars broadcast)."""
    a = np.asarray(value)
    if a.shape not in ((n,), (), (1,)):
        raise FormatError(f"NIR node {node_name!r}: field {field!r} has shape {a.shape}, expected ({n},)")
    _finite(node_name, field, a)
    return np.broadcast_to(a, (n,)).astype(a.dtype if a.ndim else np.float64)


def _finite(node_name: str, field: str, a: np.ndarray) -> np.ndarray:
    """``a`` unchanged if every entry is finite, else FormatError naming node, field and the first bad index."""
    try:
        bad = ~np.isfinite(np.asarray(a, dtype=np.float64))
    except (TypeError, ValueError) as e:
        raise FormatError(f"NIR node {node_name!r}: field {field!r} is not numeric ({np.asarray(a).dtype}); "
                          "expected finite numbers") from e
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise FormatError(f"NIR node {node_name!r}: field {field!r} holds NaN or infinity (first at index {idx}); "
                          "expected finite numbers")
    return a


def _io_shape(name: str, node, field: str) -> tuple[int, ...]:
    """The shape an Input (``input_type``) or Output (``output_type``) node declares, as a tuple."""
    types = dict(getattr(node, field, None) or {})
    if len(types) != 1:
        raise FormatError(f"NIR node {name!r}: field {field!r} holds {sorted(types)}; expected one entry")
    shape = np.asarray(next(iter(types.values())))
    if shape.dtype.kind not in "iu":
        raise FormatError(f"NIR node {name!r}: field {field!r} holds {shape!r}; expected whole-number sizes")
    return tuple(int(x) for x in shape.ravel())


def _weight_cycles(names: set, succs: dict, nodes: dict) -> list[list[str]]:
    """Cycles (as node lists) among ``names`` made only of weight nodes (Affine/Linear)."""
    w = {k for k in names if type(nodes[k]).__name__ in _WEIGHT_TYPES}
    cycles, done = [], set()
    for start in sorted(w):
        path, k = [], start
        while k in w and k not in done and k not in path:
            path.append(k)
            nxt = [s for s in succs[k] if s in w]
            if not nxt:
                break
            k = nxt[0]
        if k in path:
            cycles.append(path[path.index(k):])
        done.update(path)
    return cycles


# --------------------------------------------------------------------------- import

def network_from_nir_graph(graph, *, dt: float | None = None, integration: str = "euler",
                           reset: str | None = None) -> tuple[Network, dict]:
    """Translate a NIR graph into a :class:`Network` and a provenance record."""
    nir = _nir()
    meta = dict(getattr(graph, "metadata", None) or {})
    if dt is None:
        dt = meta.get("evrtrl.dt")
        if dt is None:
            raise ConfigError("NIR graphs carry no time step: pass import_nir(path, dt=...) in seconds")
        dt = float(np.asarray(dt))
    if not (isinstance(dt, (int, float)) and np.isfinite(dt) and dt > 0):
        raise ConfigError(f"dt must be a positive number of seconds, got {dt!r}")
    if integration not in ("euler", "exact"):
        raise ConfigError(f"integration must be 'euler' or 'exact', got {integration!r}")
    if reset is None:
        r = meta.get("evrtrl.reset", "zero")
        reset = r.decode() if isinstance(r, bytes) else str(r)
    nodes, edges, nested = flatten_graph(graph)
    known = {"Input", "Output", *_WEIGHT_TYPES, *_NEURON_TYPES}
    for name, node in nodes.items():
        t = type(node).__name__
        if t not in known:
            raise UnsupportedError(
                f"NIR node {name!r} has type {t!r} (field 'type'); the library runs only "
                f"{sorted(known)} (LIF networks with dense weights)")
    ins = [k for k, v in nodes.items() if isinstance(v, nir.Input)]
    outs = [k for k, v in nodes.items() if isinstance(v, nir.Output)]
    if len(ins) != 1 or len(outs) != 1:
        raise UnsupportedError(f"the graph must have exactly one Input and one Output node, found inputs {ins} "
                               f"and outputs {outs}")
    preds: dict = {k: [] for k in nodes}
    succs: dict = {k: [] for k in nodes}
    for a, b in edges:
        for end in (a, b):
            if end not in nodes:
                raise FormatError(f"NIR field 'edges': edge ({a!r}, {b!r}) names node {end!r}, which does not "
                                  f"exist; expected one of {sorted(nodes)}")
        preds[b].append(a)
        succs[a].append(b)
    for k, v in nodes.items():
        if type(v).__name__ in _WEIGHT_TYPES and len(preds[k]) != 1:
            raise UnsupportedError(f"NIR node {k!r}: a weight node needs exactly one source, has {preds[k]}")
    # walk Input -> w -> neuron -> w -> neuron ... -> Output
    layers, prov_layers = [], []
    src = ins[0]
    seen = set()
    while True:
        ws = [w for w in succs[src] if type(nodes[w]).__name__ in _WEIGHT_TYPES
              and not (w in seen)]
        nxt_out = [o for o in succs[src] if o in outs]
        if nxt_out and not ws:
            break
        if len(ws) != 1:
            raise UnsupportedError(f"NIR node {src!r} feeds {succs[src]}; expected one weight node (chain of "
                                   "Affine/Linear -> LIF/CubaLIF layers)")
        ff = ws[0]
        tgt = succs[ff]
        if len(tgt) != 1 or type(nodes[tgt[0]]).__name__ not in _NEURON_TYPES:
            raise UnsupportedError(f"NIR node {ff!r} must feed exactly one LIF/CubaLIF node, feeds {tgt}")
        neu = tgt[0]
        rec = [p for p in preds[neu] if p != ff]
        if rec and (len(rec) != 1 or preds.get(rec[0]) != [neu] or type(nodes[rec[0]]).__name__ not in _WEIGHT_TYPES):
            raise UnsupportedError(f"NIR node {neu!r} has inputs {preds[neu]}; expected {ff!r} and at most one "
                                   "recurrent weight node fed by the neuron itself")
        rec = rec[0] if rec else None
        seen.update({ff, neu} | ({rec} if rec else set()))
        layers.append((ff, neu, rec))
        src = neu
        if src in seen and len(layers) > 1000:  # pragma: no cover
            raise FormatError("NIR graph does not terminate")
    if not layers:
        raise UnsupportedError("the NIR graph holds no neuron layer")
    if preds[outs[0]] != [layers[-1][1]]:
        raise UnsupportedError(f"Output must be fed by the last neuron node {layers[-1][1]!r}, "
                               f"is fed by {preds[outs[0]]}")
    unused = set(nodes) - seen - {ins[0], outs[0]}
    cycles = _weight_cycles(unused, succs, nodes)
    if cycles:
        raise FormatError(f"NIR field 'edges': nodes {cycles[0]} form a cycle with no neuron node in it "
                          "(an algebraic loop); expected every cycle to pass through a LIF/CubaLIF node")
    if unused:
        raise FormatError(f"NIR nodes {sorted(unused)} are not on the Input -> weight -> neuron ... -> Output "
                          "chain; expected every node to be used (field 'edges')")

    net_layers = []
    for li, (ff, neu, rec) in enumerate(layers):
        N = nodes[neu]
        Wf = np.asarray(nodes[ff].weight)
        if Wf.ndim != 2:
            raise UnsupportedError(f"NIR node {ff!r}: field 'weight' has shape {Wf.shape}; only 2-D weights run")
        _finite(ff, "weight", Wf)
        if li == 0 and _io_shape(ins[0], nodes[ins[0]], "input_type") != (Wf.shape[1],):
            raise FormatError(f"NIR node {ins[0]!r}: field 'input_type' declares shape "
                              f"{_io_shape(ins[0], nodes[ins[0]], 'input_type')}; the first weight {ff!r} takes "
                              f"{Wf.shape[1]} inputs, expected ({Wf.shape[1]},)")
        n = Wf.shape[0]
        typ = type(N).__name__
        f64 = lambda field, value: _arr(neu, field, value, n).astype(np.float64)  # noqa: E731
        r = _arr(neu, "r", N.r, n)
        vrst = getattr(N, "v_reset", None)
        params = dict(v_leak=f64("v_leak", N.v_leak), v_th=f64("v_threshold", N.v_threshold),
                      v_reset=np.zeros(n) if vrst is None else f64("v_reset", vrst))
        if typ == "CubaLIF":
            tau_mem, tau_syn = f64("tau_mem", N.tau_mem), f64("tau_syn", N.tau_syn)
        else:
            tau_mem, tau_syn = f64("tau", N.tau), None
        for field, t in (("tau_mem" if typ == "CubaLIF" else "tau", tau_mem), ("tau_syn", tau_syn)):
            if t is not None and not np.all(t > 0):
                raise FormatError(f"NIR node {neu!r}: field {field!r} must be positive seconds, min {t.min():g}")
        if typ == "CubaLIF":
            w_in = _arr(neu, "w_in", N.w_in, n)
            g = r.astype(np.float64) * w_in.astype(np.float64) * dt / tau_syn
        else:
            w_in, g = None, r.astype(np.float64)
        low = np.flatnonzero(params["v_th"] <= params["v_reset"])
        if low.size:
            i = int(low[0])
            raise FormatError(f"NIR node {neu!r}: field 'v_threshold' must exceed field 'v_reset' for every neuron; "
                              f"neuron {i} has v_threshold {params['v_th'][i]:g} <= v_reset "
                              f"{params['v_reset'][i]:g} ({low.size} of {n} neurons)")
        if Wf.shape[1] != (net_layers[-1].n if net_layers else Wf.shape[1]):
            raise FormatError(f"NIR node {ff!r}: field 'weight' takes {Wf.shape[1]} inputs, the layer before has "
                              f"{net_layers[-1].n}")
        W = g[:, None] * Wf.astype(np.float64)
        U = None
        b = np.zeros(n)
        if type(nodes[ff]).__name__ == "Affine":
            b = b + _arr(ff, "bias", nodes[ff].bias, n).astype(np.float64)
        if rec is not None:
            Ur = np.asarray(nodes[rec].weight)
            if Ur.shape != (n, n):
                raise FormatError(f"NIR node {rec!r}: field 'weight' has shape {Ur.shape}, expected {(n, n)}")
            _finite(rec, "weight", Ur)
            U = g[:, None] * Ur.astype(np.float64)
            if type(nodes[rec]).__name__ == "Affine":
                b = b + _arr(rec, "bias", nodes[rec].bias, n).astype(np.float64)
        net_layers.append(LIFLayer(W=W, U=U, tau_mem=tau_mem, tau_syn=tau_syn, dt=float(dt), reset=reset,
                                   integration=integration, bias=g * b, synapse=typ == "CubaLIF", **params))
        prov_layers.append(dict(
            ff=ff, ff_type=type(nodes[ff]).__name__, ff_dtype=str(Wf.dtype),
            neuron=neu, neuron_type=typ, rec=rec, rec_type=None if rec is None else type(nodes[rec]).__name__,
            rec_dtype=None if rec is None else str(np.asarray(nodes[rec].weight).dtype),
            r=np.array(r), w_in=None if w_in is None else np.array(w_in), n=n,
            param_dtype=str(np.asarray(N.v_threshold).dtype), has_v_reset=vrst is not None,
            ff_bias_dtype=str(np.asarray(nodes[ff].bias).dtype) if type(nodes[ff]).__name__ == "Affine" else None,
            rec_bias=None if rec is None or type(nodes[rec]).__name__ != "Affine" else np.asarray(nodes[rec].bias).copy(),
        ))
    n_out = (net_layers[-1].n,)
    if _io_shape(outs[0], nodes[outs[0]], "output_type") != n_out:
        raise FormatError(f"NIR node {outs[0]!r}: field 'output_type' declares shape "
                          f"{_io_shape(outs[0], nodes[outs[0]], 'output_type')}; the last layer {layers[-1][1]!r} "
                          f"has {n_out[0]} neurons, expected {n_out}")
    prov = dict(input=ins[0], output=outs[0], nested=nested, layers=prov_layers,
                input_size=int(np.asarray(nodes[layers[0][0]].weight).shape[1]),
                metadata={k: v for k, v in meta.items() if not str(k).startswith("evrtrl.")})
    return Network(net_layers), prov


def import_nir(path, *, dt: float | None = None, integration: str = "euler", reset: str | None = None,
               dtype=None, trainable=()):
    """Read a NIR file into a library model (``LIF`` or ``Stack`` of LIFs).

    ``dt`` (seconds) is required unless the file was written by this library
    (metadata ``evrtrl.dt``). ``integration="euler"`` matches Norse's
    ``from_nir``. ``reset`` defaults to the file's ``evrtrl.reset`` metadata or
    ``"zero"`` (NIR's reset-to-v_reset). ``trainable``: neuron parameters every
    layer learns (e.g. ``("v_th", "bias")``; ``tau_syn`` only applies to CubaLIF
    layers). The returned model carries ``nir_provenance`` (used by :func:`export_nir`).
    """
    import torch

    graph = read_graph(path)
    try:
        net, prov = network_from_nir_graph(graph, dt=dt, integration=integration, reset=reset)
    except FormatError as e:
        raise FormatError(f"NIR file {str(path)!r}: {e}") from e
    trainable = (trainable,) if isinstance(trainable, str) else tuple(trainable)
    for L in net.layers:
        L.trainable = tuple(t for t in trainable if t in L.neuron_fields)
    model = model_from_network(net, dtype=dtype or torch.float64)
    model.nir_provenance = prov
    return model


def read_graph(path, *, probe_timeout_s: float | None = None):
    """Read a NIR graph; the file is first read whole in a time-limited child process
    (:func:`evrtrl.h5file.probe_file`), so a corrupt file cannot hang or crash the caller; a
    file that would make the reader open other files (external links, external storage,
    virtual datasets) is refused."""
    import h5py

    nir = _nir()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"NIR file {str(p)!r} does not exist")
    probe_file(p, probe_timeout_s)
    try:
        with h5py.File(p, "r") as f:
            refuse_links(f, p, soft=False)
    except FormatError:
        raise
    except H5_ERRORS as e:
        raise FormatError(f"{str(p)!r} is not a readable NIR file: {type(e).__name__}: {e}") from e
    try:
        try:
            return nir.read(p)
        except (AssertionError, ValueError, TypeError, KeyError) as e:
            if "Unknown unit type" in str(e):
                raise
            return nir.read(p, type_check=False)
    except (OSError, KeyError, ValueError, AssertionError, TypeError, RuntimeError, IndexError) as e:
        raise FormatError(f"{str(p)!r} is not a readable NIR file: {type(e).__name__}: {e}") from e


# --------------------------------------------------------------------------- export

#: NIR parameter conventions a reader expects (see :func:`export_nir`)
NIR_CONVENTIONS = ("evrtrl", "rockpool", "snntorch")
_SNNTORCH_DT = 1e-4  # snnTorch's import_from_nir assumes dt = 1e-4 s


def nir_graph_from_network(net: Network, prov: dict | None = None, *, nested: bool = False,
                           nir_convention: str = "evrtrl", readout=None):
    """Build a NIR graph from a LIF :class:`Network` (optionally with an import provenance record)."""
    nir = _nir()
    if nir_convention not in NIR_CONVENTIONS:
        raise ConfigError(f"nir_convention must be one of {NIR_CONVENTIONS}, got {nir_convention!r}")
    if nir_convention != "evrtrl":
        prov = None  # the convention fixes r, w_in and the node layout
    for i, L in enumerate(net.layers):
        if L.kind != "lif":
            raise UnsupportedError(f"layer {i} is an EGRU: NIR has no gated neuron; use export_bundle() "
                                   "(the library's HDF5 bundle) instead")
    if prov is not None and len(prov["layers"]) != len(net.layers):
        prov = None  # the model changed shape since import
    nodes, edges = {}, []
    in_name = prov["input"] if prov else "input"
    out_name = prov["output"] if prov else "output"
    d0 = prov["input_size"] if prov else net.layers[0].d
    nodes[in_name] = nir.Input(input_type={"input": np.array([d0])})
    src = in_name
    for li, L in enumerate(net.layers):
        P = prov["layers"][li] if prov else None
        want = "CubaLIF" if L.synapse else "LIF"
        if P is not None and (P["neuron_type"] != want or P["n"] != L.n):
            P = None  # the layer changed kind or size since import
        W = np.where(L.mask("W"), L.W, 0.0).astype(np.float64)
        U = None if L.U is None else np.where(L.mask("U"), L.U, 0.0).astype(np.float64)
        bias = L.values_of("bias")
        n = W.shape[0]
        ff, neu = (P["ff"], P["neuron"]) if P else (f"fc{li + 1}", f"lif{li + 1}" + (".lif" if U is not None else ""))
        rec = ((P["rec"] if P and P["rec"] else f"lif{li + 1}.w_rec")) if U is not None else None
        pdt = np.dtype(P["param_dtype"]) if P else np.float64
        val = lambda k: L.values_of(k).astype(pdt)  # noqa: E731
        if not L.synapse and nir_convention != "evrtrl":
            raise UnsupportedError(f"layer {li} is a current-free LIF: the {nir_convention} convention "
                                   "is defined for CubaLIF layers; export it with nir_convention='evrtrl'")
        if L.synapse and nir_convention != "evrtrl":
            # g = r w_in dt / tau_syn = tau_mem / dt in both: W_nir = (dt / tau_mem) W_lib, the weights of a
            # current-to-membrane gain of 1 per step (Rockpool's LIFTorch, snnTorch's Synaptic)
            sc = _SNNTORCH_DT / L.dt if nir_convention == "snntorch" else 1.0
            tm, tsy = L.values_of("tau_mem"), L.values_of("tau_syn")
            r = tm / L.dt - (1.0 if nir_convention == "rockpool" else 0.0)  # Rockpool reads dt = tau_mem / (1 + r)
            if np.any(r <= 0):
                raise UnsupportedError(f"layer {li}: tau_mem <= dt cannot be written in the {nir_convention} convention")
            w_in = (tm / L.dt) / r * tsy / L.dt
            g = r * w_in * L.dt / tsy
            if np.any(np.asarray(L.v_reset) != 0):
                raise UnsupportedError(f"layer {li}: v_reset != 0; the {nir_convention} convention writes no v_reset "
                                       "(nir <= 1.0.4 has none)")
            neuron = nir.CubaLIF(tau_syn=tsy * sc, tau_mem=tm * sc, r=r, v_leak=val("v_leak"),
                                 v_threshold=val("v_th"), w_in=w_in)
        elif L.synapse:
            tau_syn = L.values_of("tau_syn")
            r = P["r"].astype(np.float64) if P else np.ones(n)
            w_in = P["w_in"].astype(np.float64) if P else tau_syn / L.dt
            g = r * w_in * L.dt / tau_syn
            neuron = nir.CubaLIF(tau_syn=val("tau_syn"), tau_mem=val("tau_mem"),
                                 r=(P["r"] if P else np.ones(n, pdt)), v_leak=val("v_leak"),
                                 v_threshold=val("v_th"), v_reset=val("v_reset"),
                                 w_in=(P["w_in"] if P else w_in.astype(pdt)))
        else:
            g = P["r"].astype(np.float64) if P else np.ones(n)
            neuron = nir.LIF(tau=val("tau_mem"), r=(P["r"] if P else np.ones(n, pdt)), v_leak=val("v_leak"),
                             v_threshold=val("v_th"), v_reset=val("v_reset"))
        if np.any(g == 0):
            raise UnsupportedError(f"layer {li}: r * w_in is 0 for some neuron; weights cannot be unfolded")
        wdt = np.dtype(P["ff_dtype"]) if P else np.dtype(np.float32 if L.W.dtype == np.float32 else np.float64)
        Wn = (W / g[:, None]).astype(wdt)
        bias_n = bias / g
        rec_bias = None
        if P is not None and P["rec_bias"] is not None and U is not None:
            rec_bias = P["rec_bias"]
            bias_n = bias_n - rec_bias.astype(np.float64)
        ff_type = P["ff_type"] if P else ("Affine" if np.any(bias_n != 0) else "Linear")
        if ff_type == "Linear" and np.any(np.abs(bias_n) > 1e-12 * max(1.0, np.abs(Wn).max(initial=0))):
            ff_type = "Affine"
        bdt = np.dtype(P["ff_bias_dtype"]) if P and P["ff_bias_dtype"] else wdt
        nodes[ff] = nir.Affine(weight=Wn, bias=bias_n.astype(bdt)) if ff_type == "Affine" else nir.Linear(weight=Wn)
        nodes[neu] = neuron
        edges += [(src, ff), (ff, neu)]
        if U is not None:
            rdt = np.dtype(P["rec_dtype"]) if P and P["rec_dtype"] else wdt
            Un = (U / g[:, None]).astype(rdt)
            rt = P["rec_type"] if P and P["rec_type"] else "Linear"
            nodes[rec] = nir.Affine(weight=Un, bias=rec_bias if rec_bias is not None else np.zeros(n, rdt)) \
                if rt == "Affine" else nir.Linear(weight=Un)
            edges += [(neu, rec), (rec, neu)]
        src = neu
    if readout is not None:  # the trained host-side readout: an Affine map of the last layer's spikes
        Wr = readout.weight.detach().cpu().numpy().astype(np.float64)
        br = readout.bias.detach().cpu().numpy().astype(np.float64)
        if Wr.shape[1] != n:
            raise ShapeError(f"readout weight has shape {Wr.shape}; expected (n_out, {n}) for the last layer")
        nodes["readout"] = nir.Affine(weight=Wr, bias=br)
        edges.append((src, "readout"))
        src, n = "readout", Wr.shape[0]
    nodes[out_name] = nir.Output(output_type={"output": np.array([n])})
    edges.append((src, out_name))
    L0 = net.layers[0]
    meta = dict(prov["metadata"]) if prov else {}
    sc = _SNNTORCH_DT / L0.dt if nir_convention == "snntorch" else 1.0
    meta.update({"evrtrl.dt": float(L0.dt) * sc, "evrtrl.integration": L0.integration, "evrtrl.reset": L0.reset,
                 "evrtrl.nir_convention": nir_convention,
                 "evrtrl.convention": "box input, W_lib = r*w_in*dt/tau_syn * W_nir (CubaLIF), r * W_nir (LIF); "
                 "see docs/neuromorphic.md"})
    if readout is not None:
        meta["evrtrl.readout"] = "Affine node 'readout': y_t = W z_t + b of the last neuron layer's spikes z_t"
    if nested:
        nodes, edges = _nest(nodes, edges)
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def _nest(nodes: dict, edges: list) -> tuple[dict, list]:
    """Group ``X.lif`` / ``X.w_rec`` pairs into a nested subgraph ``X`` (snnTorch layout)."""
    nir = _nir()
    groups = {}
    for k in nodes:
        if "." in k:
            groups.setdefault(k.split(".", 1)[0], []).append(k)
    out_nodes, out_edges = dict(nodes), list(edges)
    for gname, members in groups.items():
        lif = [m for m in members if type(nodes[m]).__name__ in _NEURON_TYPES]
        if len(lif) != 1 or len(members) != 2:
            continue
        lif = lif[0]
        wrec = [m for m in members if m != lif][0]
        n = int(np.asarray(nodes[wrec].weight).shape[0])
        sub = nir.NIRGraph(
            nodes={"input": nir.Input(input_type={"input": np.array([n])}), "lif": nodes[lif],
                   "w_rec": nodes[wrec], "output": nir.Output(output_type={"output": np.array([n])})},
            edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")],
            metadata={})
        for m in members:
            del out_nodes[m]
        out_nodes[gname] = sub
        out_edges = [(gname if a == lif else a, gname if b == lif else b) for a, b in out_edges
                     if not ({a, b} <= {lif, wrec})]
    return out_nodes, out_edges


def export_nir(model, path, *, nested: bool | None = None, nir_convention: str = "evrtrl", readout=None):
    """Write a LIF model (cell, Stack or :class:`Network`) to ``path`` as NIR, atomically.

    ``nir_convention`` picks the CubaLIF parameters a reader expects (all three are
    standard NIR: ``W_lib = r w_in dt / tau_syn W_nir`` holds, so Norse and
    :func:`import_nir` read every one of them):

    * ``"evrtrl"`` (default): ``r = 1``, ``w_in = tau_syn/dt``, ``W_nir = W_lib``;
      round-trips an imported graph's own r / w_in / node names;
    * ``"rockpool"``: ``r = tau_mem/dt - 1`` (Rockpool's ``from_nir`` takes
      ``dt = tau_mem/(1 + r)``), ``W_nir = (dt/tau_mem) W_lib`` (Rockpool's LIF adds
      the current to the membrane with gain 1), no ``v_reset`` field (nir <= 1.0.4),
      recurrence nested (``nested`` defaults to True);
    * ``"snntorch"``: snnTorch's ``import_from_nir`` fixes ``dt = 1e-4`` s and needs
      ``r = tau_mem/dt``: time constants are rescaled by ``1e-4/dt`` (the metadata
      ``evrtrl.dt`` says 1e-4), ``w_in = tau_syn/dt``, ``W_nir = (dt/tau_mem) W_lib``,
      no ``v_reset``. snnTorch 1.0.0 runs zero-reset feed-forward files spike for spike;
      it builds every neuron with zero reset (a ``"subtract"`` network runs differently
      there) and its ``RSynaptic`` applies the reset one step late (docs/neuromorphic.md,
      ``scripts/check_snntorch.sh``).

    ``readout`` (a ``models.Readout``) is written as an Affine node ``readout`` between the
    last neuron layer and the output. EGRU layers raise :class:`UnsupportedError` (NIR has no
    gated neuron: use :func:`evrtrl.neuromorphic.export_bundle`). Returns the written graph.
    """
    nir = _nir()
    prov = getattr(model, "nir_provenance", None)
    net = network_from_model(model)
    if nested is None:
        nested = nir_convention == "rockpool"
    graph = nir_graph_from_network(net, prov, nested=nested, nir_convention=nir_convention, readout=readout)

    def write(tmp: str) -> None:
        nir.write(tmp, graph)
        if nir_convention != "evrtrl":
            _drop_zero_v_reset(tmp)

    atomic_write(path, write)
    return graph


def _drop_zero_v_reset(path: str) -> None:
    """Remove all-zero ``v_reset`` datasets of (Cuba)LIF nodes: nir <= 1.0.4 has no such field."""
    import h5py

    with h5py.File(path, "a") as f:
        found = []

        def visit(name, obj):
            if isinstance(obj, h5py.Group) and "v_reset" in obj and "type" in obj:
                if obj["type"][()] in (b"CubaLIF", b"LIF") and not np.any(obj["v_reset"][()]):
                    found.append(name)

        f.visititems(visit)
        for name in found:
            del f[name]["v_reset"]
