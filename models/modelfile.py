r"""The model file: a trained network (any registered cell or a Stack) and its readout in versioned HDF5.

Written **atomically** (:mod:`evrtrl.atomic`): a crash or a kill mid-write leaves the
previous file intact, never a half-written one. Format version 2::

    /                       attrs: format_version=2, kind="evrtrl-model",
                                   evrtrl_version, extra (JSON of **extra)
    /model                  attrs: class ("EGRU" | "LIF" | ... | "Stack"), n_layers
    /model/layers/<i>       attrs: class, input_size, hidden_size, dtype,
                                   pd_kind, pd_gamma, pd_width, and the cell's
                                   stored hyper-parameters (its CellSpec in
                                   evrtrl.models.registry; LIF: dt reset integration
                                   recurrent synapse, trainable as a JSON list)
                            datasets: every parameter (EGRU: W_u, ..., theta; LIF: W, U and
                                      the trained neuron values), stored masked (pruned
                                      entries hold 0), and mask_<weight>; every per-unit
                                      hyper-parameter that is not a parameter (LIF: the
                                      frozen tau_mem tau_syn v_th v_leak v_reset bias) as a
                                      float64 dataset (n,)
    /readout (optional)     attrs: class="Readout", hidden_size, n_out, dtype
                            datasets: weight (n_out x n), bias (n_out)

Format 1 (0.1.0) is still read: it stored every hyper-parameter as a scalar attribute (LIF:
tau_mem tau_syn v_th v_leak v_reset); hyper-parameters it did not have take their registered
defaults (LIF: no bias, current-based, nothing trained).

``theta_init`` and ``weight_scale`` are not stored: they only set initial values, and the
values themselves are stored. A single layer is stored as a one-layer model with
``class`` = the layer's class, so ``load_model`` returns the same type it was given.
A training checkpoint (:mod:`evrtrl.training.checkpoint`) holds the same ``/model`` and
``/readout`` groups, so :func:`load_model` reads the model part of a checkpoint too.

Every reading error is a :class:`~evrtrl.errors.FormatError` naming the file and the
missing or bad field.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evrtrl.errors import ConfigError, FormatError, MaskError, ShapeError
from evrtrl.h5file import (
    DTYPES,
    H5_ERRORS,
    attr,
    attr_float,
    attr_int,
    attr_str,
    dataset,
    dataset_shape,
    dtype_name,
    group,
    open_h5,
    read_extra,
    write_h5,
    write_header,
)
from evrtrl.layer import Layer
from evrtrl.models import surrogate
from evrtrl.models.readout import Readout
from evrtrl.models.registry import cell_spec, registered_cells
from evrtrl.models.stack import Stack

__all__ = ["FORMAT_VERSION", "SUPPORTED_VERSIONS", "save_model", "load_model", "LoadedModel", "write_model",
           "read_model"]

#: the only format version this code writes; the versions it reads
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)


def _pd_attrs(pd: Any) -> dict[str, Any]:
    return {"pd_kind": type(pd).__name__, "pd_gamma": float(pd.gamma), "pd_width": float(pd.width)}


def _read_pd(g: Any, path: Path, where: str) -> surrogate.PseudoDerivative:
    pd_kind = attr_str(g, "pd_kind", path, where)
    pd_cls = getattr(surrogate, pd_kind, None)
    if not (isinstance(pd_cls, type) and issubclass(pd_cls, surrogate.PseudoDerivative)):
        raise FormatError(f"{path}: attribute 'pd_kind' at '{where}' is {pd_kind!r}; expected a "
                          "pseudo-derivative of evrtrl.models.surrogate (Triangle, FastSigmoid)")
    return pd_cls(gamma=attr_float(g, "pd_gamma", path, where), width=attr_float(g, "pd_width", path, where))


def _write_layer(g: Any, layer: Any) -> None:
    try:
        spec = cell_spec(layer)
    except ConfigError as exc:
        raise ConfigError(f"save_model: cannot store a layer of type {type(layer).__name__}: {exc}") from None
    g.attrs["class"] = spec.name
    g.attrs["input_size"] = layer.input_size
    g.attrs["hidden_size"] = layer.hidden_size
    g.attrs["dtype"] = dtype_name(layer.dtype)
    for k, v in _pd_attrs(layer.pseudo_derivative).items():
        g.attrs[k] = v
    params = dict(layer.named_parameters(recurse=False))
    by_name = {h.name: h for h in spec.hyper}
    for k, v in spec.config(layer).items():
        h = by_name[k]
        if v is None:
            continue  # an absent option (its default is None)
        if h.per_neuron:
            if k not in params:  # a trained value is stored as the parameter below
                g.create_dataset(k, data=np.broadcast_to(np.asarray(v, np.float64), (layer.hidden_size,)))
        elif h.type is tuple:
            g.attrs[k] = json.dumps(list(v))
        else:
            g.attrs[k] = v
    for name, p in params.items():
        g.create_dataset(name, data=p.detach().cpu().numpy())
    for name, m in layer.masks.items():
        g.create_dataset(f"mask_{name}", data=m.cpu().numpy())


def _check_sizes(g: Any, path: Path, expected: dict[str, tuple[int, ...]]) -> None:
    """The stored datasets' shapes must be the sizes the attributes claim, before anything of
    that size is allocated (a crafted ``hidden_size`` must not ask for terabytes)."""
    for name, shape in expected.items():
        got = dataset_shape(g, name, path)
        if got != shape:
            raise FormatError(f"{path}: dataset '{g.name}/{name}' has shape {got}, expected {shape} from the "
                              f"attributes of '{g.name}'")


def _read_layer(g: Any, path: Path) -> Layer:
    where = g.name
    cls = attr_str(g, "class", path, where)
    try:
        spec = cell_spec(cls)
    except ConfigError:
        raise FormatError(f"{path}: attribute 'class' at '{where}' is {cls!r}; expected one of the "
                          f"registered cells {list(registered_cells())}") from None
    d = attr_int(g, "input_size", path, where)
    n = attr_int(g, "hidden_size", path, where)
    if n < 1 or d < 1:
        raise FormatError(f"{path}: attributes 'hidden_size'={n}, 'input_size'={d} at '{where}' must be >= 1")
    stored_dtype = attr_str(g, "dtype", path, where)
    if stored_dtype not in DTYPES:
        raise FormatError(f"{path}: attribute 'dtype' at '{where}' is {stored_dtype!r}; expected one of {sorted(DTYPES)}")
    pd = _read_pd(g, path, where)
    try:
        config = spec.check_config(_stored_hyper(g, spec, path, where, n), where=f"{path}: '{where}'")
        shapes = spec.weight_shapes(d, n, config)
        _check_sizes(g, path, {**{k: tuple(s) for k, s in shapes.items()},
                               **{f"mask_{k}": tuple(s) for k, s in shapes.items()}})
        masks = {k: torch.from_numpy(np.asarray(dataset(g, f"mask_{k}", path))) for k in shapes}
        layer = spec.from_config(d, n, config, pseudo_derivative=pd, masks=masks, dtype=DTYPES[stored_dtype])
    except (ConfigError, MaskError, ShapeError) as exc:
        raise FormatError(f"{path}: bad {spec.name} layer at '{where}': {exc}") from exc
    with torch.no_grad():
        for name, p in layer.named_parameters(recurse=False):
            v = np.asarray(dataset(g, name, path))
            if v.shape != tuple(p.shape):
                raise FormatError(f"{path}: dataset '{where}/{name}' has shape {v.shape}, expected "
                                  f"{tuple(p.shape)} (hidden_size={n}, input_size={d})")
            p.copy_(torch.from_numpy(v))
    return layer


def _stored_hyper(g: Any, spec: Any, path: Path, where: str, n: int) -> dict[str, Any]:
    """The stored hyper-parameters: per-unit ones from their dataset (n,) (format 1: a scalar
    attribute), the others from attributes; a missing one takes its registered default."""
    out: dict[str, Any] = {}
    for h in spec.hyper:
        try:
            as_dataset, as_attr = h.per_neuron and h.name in g, h.name in g.attrs
        except H5_ERRORS as exc:
            raise FormatError(f"{path}: the members of '{where}' are unreadable ({exc})") from exc
        if as_dataset:
            _check_sizes(g, path, {h.name: (n,)})
            out[h.name] = np.asarray(dataset(g, h.name, path))
        elif as_attr:
            out[h.name] = attr(g, h.name, path, where)
        elif not h.required:
            out[h.name] = h.default
        else:
            attr(g, h.name, path, where)  # raises FormatError naming the missing attribute
    return out


def write_model(f: Any, model: Any, readout: Any | None) -> None:
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
        rg.attrs["dtype"] = dtype_name(readout.weight.dtype)
        rg.create_dataset("weight", data=readout.weight.detach().cpu().numpy())
        rg.create_dataset("bias", data=readout.bias.detach().cpu().numpy())


def read_model(f: Any, path: Path) -> tuple[Any, Any | None]:
    mg = group(f, "model", path)
    cls = attr_str(mg, "class", path, "/model")
    n_layers = attr_int(mg, "n_layers", path, "/model")
    if n_layers < 1:
        raise FormatError(f"{path}: attribute 'n_layers' at '/model' is {n_layers}, expected >= 1")
    lg = group(mg, "layers", path)
    layers = [_read_layer(group(lg, str(i), path), path) for i in range(n_layers)]
    if cls == "Stack":
        model = Stack(*layers)
    elif n_layers == 1 and cls == type(layers[0]).__name__:
        model = layers[0]
    else:
        raise FormatError(f"{path}: attribute 'class' at '/model' is {cls!r} with {n_layers} layer(s); "
                          "expected 'Stack', or the class of its single layer")
    readout = None
    if "readout" in f:
        rg = group(f, "readout", path)
        n = attr_int(rg, "hidden_size", path, "/readout")
        n_out = attr_int(rg, "n_out", path, "/readout")
        _check_sizes(rg, path, {"weight": (n_out, n)})
        dtype = DTYPES.get(attr_str(rg, "dtype", path, "/readout"), torch.float32)
        readout = Readout(n, n_out, dtype=dtype)
        with torch.no_grad():
            for name in ("weight", "bias"):
                v = np.asarray(dataset(rg, name, path))
                p = getattr(readout, name)
                if v.shape != tuple(p.shape):
                    raise FormatError(f"{path}: dataset '/readout/{name}' has shape {v.shape}, "
                                      f"expected {tuple(p.shape)}")
                p.copy_(torch.from_numpy(v))
    return model, readout


def save_model(model: Any, path: str | os.PathLike, *, readout: Any | None = None, **extra: Any) -> Path:
    """Store ``model`` (a registered cell such as EGRU or LIF, or a Stack of them) and an optional ``readout``
    (``models.Readout``) in a versioned HDF5 file, atomically. ``extra`` (JSON-able
    values, e.g. accuracy, data spec) is kept in the root attribute ``extra``."""
    def write(f: Any) -> None:
        write_header(f, "evrtrl-model", FORMAT_VERSION, extra)
        write_model(f, model, readout)

    return write_h5(path, write)


@dataclass
class LoadedModel:
    """What :func:`load_model` returns: ``model``, ``readout`` (or None), ``extra``."""

    model: Any
    readout: Any | None
    extra: dict[str, Any] = field(default_factory=dict)

    def __iter__(self):  # model, readout = load_model(path)
        return iter((self.model, self.readout))


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Read a file written by :func:`save_model` (or the model part of a checkpoint)."""
    path = Path(path)
    with open_h5(path, ("evrtrl-model", "evrtrl-checkpoint"), SUPPORTED_VERSIONS) as f:
        model, readout = read_model(f, path)
        return LoadedModel(model, readout, read_extra(f, path))
