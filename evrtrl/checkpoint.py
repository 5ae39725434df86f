r"""Versioned HDF5 files for trained models and for training checkpoints.

Two kinds of file, both written **atomically** (a temporary file in the same directory,
flushed and fsync'ed, then ``os.replace``; the directory is fsync'ed too), so that a
crash or a kill mid-write leaves the previous file intact and never a half-written one.

Model file (``save_model`` / ``load_model``), format version 1::

    /                       attrs: format_version=1, kind="evrtrl-model",
                                   evrtrl_version, extra (JSON of **extra)
    /model                  attrs: class ("EGRU" | "LIF" | "Stack"), n_layers
    /model/layers/<i>       attrs: class, input_size, hidden_size, dtype,
                                   pd_kind, pd_gamma, pd_width,
                                   (LIF) tau_mem tau_syn dt v_th v_leak v_reset
                                         reset integration recurrent
                            datasets: every parameter (W_u, ..., theta; W, U), stored
                                      masked (pruned entries hold 0), and mask_<weight>
    /readout (optional)     attrs: class="Readout", hidden_size, n_out, dtype
                            datasets: weight (n_out x n), bias (n_out)

``theta_init`` and ``weight_scale`` are not stored: they only set initial values, and the
values themselves are stored. A single layer is stored as a one-layer model with
``class`` = the layer's class, so ``load_model`` returns the same type it was given.

Checkpoint file (``save_checkpoint`` / ``load_checkpoint``), format version 1: the same
``/model`` and ``/readout`` groups plus ``/optimizer`` (the optimizer's ``state_dict``),
``/rng`` (RNG states), ``/counters`` (epoch, batch, step, ...) and ``/metrics`` (the
records logged so far), each a *tree*: dicts and lists are groups (attribute ``tree`` =
``"dict"``/``"list"``/``"tuple"``, dict keys in the JSON attribute ``keys``, children named
``0, 1, ...``), tensors are datasets with attribute ``torch_dtype``, other leaves are
JSON strings.

Every reading error is a :class:`~evrtrl.errors.FormatError` naming the file and the
missing or bad field. ``models`` is imported lazily (the core does not import it at
module import time).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from evrtrl.atomic import atomic_write
from evrtrl.errors import ConfigError, FormatError

__all__ = [
    "FORMAT_VERSION", "save_model", "load_model", "save_checkpoint", "load_checkpoint",
    "Checkpoint",
]

#: the only format version this code writes and reads
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

_LIF_FIELDS = ("tau_mem", "tau_syn", "dt", "v_th", "v_leak", "v_reset", "reset", "integration")
_DTYPES = {
    "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
    "float64": torch.float64, "int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16,
    "int32": torch.int32, "int64": torch.int64, "bool": torch.bool,
}


# --------------------------------------------------------------------- atomic write
def _write_h5(path: str | os.PathLike, write: Callable[[Any], None]) -> Path:
    """Fill a new HDF5 file with ``write(h5file)`` atomically (:mod:`evrtrl.atomic`)."""
    import h5py

    def fill(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            write(f)
            f.flush()

    return atomic_write(path, fill)


def _open(path: str | os.PathLike, kind: str):
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise FormatError(f"{path}: not a readable HDF5 file ({exc})") from exc
    try:
        if "format_version" not in f.attrs:
            raise FormatError(f"{path}: missing attribute 'format_version' at '/'; not an evrtrl file")
        version = int(f.attrs["format_version"])
        if version not in SUPPORTED_VERSIONS:
            raise FormatError(
                f"{path}: format_version {version} is not supported; this evrtrl reads "
                f"{SUPPORTED_VERSIONS}"
            )
        got = _attr_str(f, "kind", path, "/")
        if got != kind:
            raise FormatError(f"{path}: attribute 'kind' at '/' is {got!r}, expected {kind!r}")
    except BaseException:
        f.close()
        raise
    return f


def _attr(obj: Any, name: str, path: Path, where: str) -> Any:
    if name not in obj.attrs:
        raise FormatError(f"{path}: missing attribute '{name}' at '{where}'")
    return obj.attrs[name]


def _attr_str(obj: Any, name: str, path: Path, where: str) -> str:
    v = _attr(obj, name, path, where)
    return v.decode() if isinstance(v, bytes) else str(v)


def _dataset(group: Any, name: str, path: Path) -> np.ndarray:
    if name not in group:
        raise FormatError(f"{path}: missing dataset '{group.name.rstrip('/')}/{name}'")
    try:
        return group[name][()]
    except Exception as exc:  # h5py raises OSError/KeyError on damaged data
        raise FormatError(f"{path}: dataset '{group.name.rstrip('/')}/{name}' is unreadable ({exc})") from exc


def _group(parent: Any, name: str, path: Path) -> Any:
    if name not in parent:
        raise FormatError(f"{path}: missing group '{parent.name.rstrip('/')}/{name}'")
    return parent[name]


# ------------------------------------------------------------------------- models
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _pd_attrs(pd: Any) -> dict[str, Any]:
    return {"pd_kind": type(pd).__name__, "pd_gamma": float(pd.gamma), "pd_width": float(pd.width)}


def _write_layer(g: Any, layer: Any) -> None:
    from evrtrl.models import EGRU, LIF

    if not isinstance(layer, (EGRU, LIF)):
        raise ConfigError(
            f"save_model: cannot store a layer of type {type(layer).__name__}; "
            "supported: EGRU, LIF (alone or in a Stack)"
        )
    g.attrs["class"] = type(layer).__name__
    g.attrs["input_size"] = layer.input_size
    g.attrs["hidden_size"] = layer.hidden_size
    g.attrs["dtype"] = _dtype_name(layer.dtype)
    for k, v in _pd_attrs(layer.pseudo_derivative).items():
        g.attrs[k] = v
    if isinstance(layer, LIF):
        for name in _LIF_FIELDS:
            g.attrs[name] = getattr(layer, name)
        g.attrs["recurrent"] = bool(layer.recurrent)
    for name, p in layer.named_parameters(recurse=False):
        g.create_dataset(name, data=p.detach().cpu().numpy())
    for name, m in layer.masks.items():
        g.create_dataset(f"mask_{name}", data=m.cpu().numpy())


def _read_layer(g: Any, path: Path) -> Any:
    from evrtrl.models import EGRU, LIF, surrogate

    where = g.name
    cls = _attr_str(g, "class", path, where)
    d = int(_attr(g, "input_size", path, where))
    n = int(_attr(g, "hidden_size", path, where))
    dtype_name = _attr_str(g, "dtype", path, where)
    if dtype_name not in _DTYPES:
        raise FormatError(f"{path}: attribute 'dtype' at '{where}' is {dtype_name!r}; expected one of {sorted(_DTYPES)}")
    dtype = _DTYPES[dtype_name]
    pd_kind = _attr_str(g, "pd_kind", path, where)
    pd_cls = getattr(surrogate, pd_kind, None)
    if not (isinstance(pd_cls, type) and issubclass(pd_cls, surrogate.PseudoDerivative)):
        raise FormatError(f"{path}: attribute 'pd_kind' at '{where}' is {pd_kind!r}; expected a "
                          "pseudo-derivative of models.surrogate (Triangle, FastSigmoid)")
    pd = pd_cls(gamma=float(_attr(g, "pd_gamma", path, where)), width=float(_attr(g, "pd_width", path, where)))
    if cls == "EGRU":
        names = [f"W_{c}" for c in "urz"] + [f"U_{c}" for c in "urz"]
        masks = {k: torch.from_numpy(np.asarray(_dataset(g, f"mask_{k}", path))) for k in names}
        layer = EGRU(d, n, pseudo_derivative=pd, masks=masks, dtype=dtype)
    elif cls == "LIF":
        kw = {k: _attr(g, k, path, where) for k in _LIF_FIELDS}
        kw = {k: (v.decode() if isinstance(v, bytes) else (str(v) if k in ("reset", "integration") else float(v)))
              for k, v in kw.items()}
        recurrent = bool(_attr(g, "recurrent", path, where))
        names = ["W"] + (["U"] if recurrent else [])
        masks = {k: torch.from_numpy(np.asarray(_dataset(g, f"mask_{k}", path))) for k in names}
        try:
            layer = LIF(d, n, recurrent=recurrent, pseudo_derivative=pd, masks=masks, dtype=dtype, **kw)
        except ConfigError as exc:
            raise FormatError(f"{path}: bad LIF hyper-parameters at '{where}': {exc}") from exc
    else:
        raise FormatError(f"{path}: attribute 'class' at '{where}' is {cls!r}; expected 'EGRU' or 'LIF'")
    with torch.no_grad():
        for name, p in layer.named_parameters(recurse=False):
            v = np.asarray(_dataset(g, name, path))
            if v.shape != tuple(p.shape):
                raise FormatError(f"{path}: dataset '{where}/{name}' has shape {v.shape}, expected "
                                  f"{tuple(p.shape)} (hidden_size={n}, input_size={d})")
            p.copy_(torch.from_numpy(v))
    return layer


def _write_model(f: Any, model: Any, readout: Any | None) -> None:
    from evrtrl.models import Stack

    mg = f.create_group("model")
    layers = model.layers if isinstance(model, Stack) else [model]
    mg.attrs["class"] = "Stack" if isinstance(model, Stack) else type(model).__name__
    mg.attrs["n_layers"] = len(layers)
    lg = mg.create_group("layers")
    for i, layer in enumerate(layers):
        _write_layer(lg.create_group(str(i)), layer)
    if readout is not None:
        rg = f.create_group("readout")
        rg.attrs["class"] = "Readout"
        rg.attrs["hidden_size"] = readout.in_features
        rg.attrs["n_out"] = readout.out_features
        rg.attrs["dtype"] = _dtype_name(readout.weight.dtype)
        rg.create_dataset("weight", data=readout.weight.detach().cpu().numpy())
        rg.create_dataset("bias", data=readout.bias.detach().cpu().numpy())


def _read_model(f: Any, path: Path) -> tuple[Any, Any | None]:
    from evrtrl.models import Readout, Stack

    mg = _group(f, "model", path)
    cls = _attr_str(mg, "class", path, "/model")
    n_layers = int(_attr(mg, "n_layers", path, "/model"))
    lg = _group(mg, "layers", path)
    layers = [_read_layer(_group(lg, str(i), path), path) for i in range(n_layers)]
    if cls == "Stack":
        model = Stack(*layers)
    elif n_layers == 1 and cls == type(layers[0]).__name__:
        model = layers[0]
    else:
        raise FormatError(f"{path}: attribute 'class' at '/model' is {cls!r} with {n_layers} layer(s); "
                          "expected 'Stack', or the class of its single layer")
    readout = None
    if "readout" in f:
        rg = f["readout"]
        n = int(_attr(rg, "hidden_size", path, "/readout"))
        n_out = int(_attr(rg, "n_out", path, "/readout"))
        dtype = _DTYPES.get(_attr_str(rg, "dtype", path, "/readout"), torch.float32)
        readout = Readout(n, n_out, dtype=dtype)
        with torch.no_grad():
            for name in ("weight", "bias"):
                v = np.asarray(_dataset(rg, name, path))
                p = getattr(readout, name)
                if v.shape != tuple(p.shape):
                    raise FormatError(f"{path}: dataset '/readout/{name}' has shape {v.shape}, "
                                      f"expected {tuple(p.shape)}")
                p.copy_(torch.from_numpy(v))
    return model, readout


def _write_header(f: Any, kind: str, extra: dict[str, Any]) -> None:
    from evrtrl import __version__

    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["kind"] = kind
    f.attrs["evrtrl_version"] = __version__
    f.attrs["extra"] = json.dumps(extra, sort_keys=True, default=str)


def save_model(model: Any, path: str | os.PathLike, *, readout: Any | None = None, **extra: Any) -> Path:
    """Store ``model`` (EGRU, LIF or a Stack of them) and an optional ``readout``
    (``models.Readout``) in a versioned HDF5 file, atomically. ``extra`` (JSON-able
    values, e.g. accuracy, data spec) is kept in the root attribute ``extra``."""
    return _write_h5(path, lambda f: (_write_header(f, "evrtrl-model", extra),
                                         _write_model(f, model, readout)))


@dataclass
class LoadedModel:
    """What :func:`load_model` returns: ``model``, ``readout`` (or None), ``extra``."""

    model: Any
    readout: Any | None
    extra: dict[str, Any] = field(default_factory=dict)

    def __iter__(self):  # model, readout = load_model(path)
        return iter((self.model, self.readout))


def _extra(f: Any, path: Path) -> dict[str, Any]:
    raw = f.attrs.get("extra", "{}")
    try:
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{path}: attribute 'extra' at '/' is not valid JSON ({exc})") from exc


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Read a file written by :func:`save_model` (or the model part of a checkpoint)."""
    path = Path(path)
    import h5py

    # a checkpoint also holds a model: accept both kinds
    try:
        with h5py.File(path, "r") as f:
            kind = f.attrs.get("kind", b"evrtrl-model")
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    except OSError:
        kind = "evrtrl-model"  # _open reports the error with the file name
    if kind not in ("evrtrl-model", "evrtrl-checkpoint"):
        kind = "evrtrl-model"
    with _open(path, kind) as f:
        model, readout = _read_model(f, path)
        return LoadedModel(model, readout, _extra(f, path))


# ---------------------------------------------------------------------- trees
def _write_tree(parent: Any, name: str, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        dtype = _dtype_name(t.dtype)
        if t.dtype == torch.bfloat16:
            t = t.float()
        ds = parent.create_dataset(name, data=t.numpy())
        ds.attrs["torch_dtype"] = dtype
    elif isinstance(obj, np.ndarray):
        ds = parent.create_dataset(name, data=obj)
        ds.attrs["numpy"] = True
    elif isinstance(obj, dict):
        g = parent.create_group(name)
        g.attrs["tree"] = "dict"
        keys = list(obj.keys())
        for k in keys:
            if not isinstance(k, (str, int)):
                raise ConfigError(f"checkpoint: dict key {k!r} is neither str nor int")
        g.attrs["keys"] = json.dumps(keys)
        for i, k in enumerate(keys):
            _write_tree(g, str(i), obj[k])
    elif isinstance(obj, (list, tuple)):
        g = parent.create_group(name)
        g.attrs["tree"] = "list" if isinstance(obj, list) else "tuple"
        g.attrs["length"] = len(obj)
        for i, v in enumerate(obj):
            _write_tree(g, str(i), v)
    else:
        try:
            s = json.dumps(obj)
        except TypeError as exc:
            raise ConfigError(f"checkpoint: cannot store {type(obj).__name__} value {obj!r}") from exc
        ds = parent.create_dataset(name, data=s)
        ds.attrs["json"] = True


def _read_tree(node: Any, path: Path) -> Any:
    import h5py

    where = node.name
    if isinstance(node, h5py.Dataset):
        try:
            v = node[()]
        except Exception as exc:
            raise FormatError(f"{path}: dataset '{where}' is unreadable ({exc})") from exc
        if node.attrs.get("json", False):
            return json.loads(v.decode() if isinstance(v, bytes) else v)
        if "torch_dtype" in node.attrs:
            dt = node.attrs["torch_dtype"]
            dt = dt.decode() if isinstance(dt, bytes) else str(dt)
            if dt not in _DTYPES:
                raise FormatError(f"{path}: attribute 'torch_dtype' of '{where}' is {dt!r}")
            return torch.from_numpy(np.array(v)).to(_DTYPES[dt])
        return np.array(v)
    kind = _attr_str(node, "tree", path, where)
    if kind == "dict":
        keys = json.loads(_attr_str(node, "keys", path, where))
        return {k: _read_tree(_group(node, str(i), path), path) for i, k in enumerate(keys)}
    if kind in ("list", "tuple"):
        n = int(_attr(node, "length", path, where))
        items = [_read_tree(_group(node, str(i), path), path) for i in range(n)]
        return items if kind == "list" else tuple(items)
    raise FormatError(f"{path}: attribute 'tree' at '{where}' is {kind!r}; expected dict, list or tuple")


# ------------------------------------------------------------------ checkpoints
@dataclass
class Checkpoint:
    """A training checkpoint as read back by :func:`load_checkpoint`."""

    model: Any
    readout: Any | None
    optimizer_state: dict[str, Any]
    counters: dict[str, Any]
    rng: dict[str, Any]
    metrics: list[dict[str, Any]]
    extra: dict[str, Any]


def save_checkpoint(
    path: str | os.PathLike,
    model: Any,
    readout: Any | None,
    optimizer: torch.optim.Optimizer | dict[str, Any] | None,
    *,
    counters: dict[str, Any],
    rng: dict[str, Any] | None = None,
    metrics: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> Path:
    """Write a training checkpoint atomically.

    ``optimizer``: an optimizer (its ``state_dict()`` is stored) or a state dict;
    ``counters``: e.g. ``{"epoch": 1, "batch": 0, "updates": 40}``; ``rng``: name -> RNG
    state (default: the global torch RNG state); ``metrics``: the records logged so far.
    """
    if rng is None:
        rng = {"torch": torch.get_rng_state()}
    opt_state = optimizer.state_dict() if hasattr(optimizer, "state_dict") else (optimizer or {})

    def write(f: Any) -> None:
        _write_header(f, "evrtrl-checkpoint", extra)
        _write_model(f, model, readout)
        _write_tree(f, "optimizer", opt_state)
        _write_tree(f, "counters", dict(counters))
        _write_tree(f, "rng", dict(rng))
        _write_tree(f, "metrics", list(metrics or []))

    return _write_h5(path, write)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a file written by :func:`save_checkpoint`."""
    path = Path(path)
    with _open(path, "evrtrl-checkpoint") as f:
        model, readout = _read_model(f, path)
        return Checkpoint(
            model, readout,
            optimizer_state=_read_tree(_group(f, "optimizer", path), path),
            counters=_read_tree(_group(f, "counters", path), path),
            rng=_read_tree(_group(f, "rng", path), path),
            metrics=_read_tree(_group(f, "metrics", path), path),
            extra=_extra(f, path),
        )
