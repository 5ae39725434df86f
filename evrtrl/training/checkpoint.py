r"""Training checkpoints: the model plus everything needed to resume a run bit for bit.

Format version 1, written **atomically** (:mod:`evrtrl.atomic`): the model file's ``/model``
and ``/readout`` groups (:mod:`evrtrl.models.modelfile`) plus ``/optimizer`` (the
optimizer's ``state_dict``), ``/rng`` (RNG states), ``/counters`` (epoch, batch, step, ...)
and ``/metrics`` (the records logged so far), each a *tree*: dicts and lists are groups
(attribute ``tree`` = ``"dict"``/``"list"``/``"tuple"``, dict keys in the JSON attribute
``keys``, children named ``0, 1, ...``), tensors are datasets with attribute
``torch_dtype``, other leaves are JSON strings. Root ``kind`` is ``"evrtrl-checkpoint"``.

Every reading error is a :class:`~evrtrl.errors.FormatError` naming the file and the
missing or bad field.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from evrtrl.errors import ConfigError, FormatError
from evrtrl.h5file import DTYPES, attr, attr_str, dtype_name, group, open_h5, read_extra, write_h5, write_header
from evrtrl.models.modelfile import FORMAT_VERSION, SUPPORTED_VERSIONS, read_model, write_model

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint"]


def _write_tree(parent: Any, name: str, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        dtype = dtype_name(t.dtype)
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
            if dt not in DTYPES:
                raise FormatError(f"{path}: attribute 'torch_dtype' of '{where}' is {dt!r}")
            return torch.from_numpy(np.array(v)).to(DTYPES[dt])
        return np.array(v)
    kind = attr_str(node, "tree", path, where)
    if kind == "dict":
        keys = json.loads(attr_str(node, "keys", path, where))
        return {k: _read_tree(group(node, str(i), path), path) for i, k in enumerate(keys)}
    if kind in ("list", "tuple"):
        n = int(attr(node, "length", path, where))
        items = [_read_tree(group(node, str(i), path), path) for i in range(n)]
        return items if kind == "list" else tuple(items)
    raise FormatError(f"{path}: attribute 'tree' at '{where}' is {kind!r}; expected dict, list or tuple")




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
        write_header(f, "evrtrl-checkpoint", FORMAT_VERSION, extra)
        write_model(f, model, readout)
        _write_tree(f, "optimizer", opt_state)
        _write_tree(f, "counters", dict(counters))
        _write_tree(f, "rng", dict(rng))
        _write_tree(f, "metrics", list(metrics or []))

    return write_h5(path, write)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a file written by :func:`save_checkpoint`."""
    path = Path(path)
    with open_h5(path, ("evrtrl-checkpoint",), SUPPORTED_VERSIONS) as f:
        model, readout = read_model(f, path)
        return Checkpoint(
            model, readout,
            optimizer_state=_read_tree(group(f, "optimizer", path), path),
            counters=_read_tree(group(f, "counters", path), path),
            rng=_read_tree(group(f, "rng", path), path),
            metrics=_read_tree(group(f, "metrics", path), path),
            extra=read_extra(f, path),
        )
