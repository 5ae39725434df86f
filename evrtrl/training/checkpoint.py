r"""Training checkpoints: the model plus everything needed to resume a run bit for bit.

Format version 1, written **atomically** (:mod:`evrtrl.atomic`): the model file's ``/model``
and ``/readout`` groups (:mod:`evrtrl.models.modelfile`) plus ``/optimizer`` (the
optimizer's ``state_dict``), ``/rng`` (RNG states), ``/counters`` (epoch, batch, step, ...)
and ``/metrics`` (the records logged so far), each a *tree*: dicts and lists are groups
(attribute ``tree`` = ``"dict"``/``"list"``/``"tuple"``, dict keys in the JSON attribute
``keys``, children named ``0, 1, ...``), tensors are datasets with attribute
``torch_dtype``, other leaves are JSON strings. Root ``kind`` is ``"evrtrl-checkpoint"``.

The file is sealed with a content hash checked before libhdf5 parses it
(:mod:`evrtrl.h5file`). :func:`save_checkpoint` refuses non-finite weights or optimizer
state (:class:`~evrtrl.errors.NonFiniteError` naming the tensor and the counters) and,
with ``keep_previous=True``, keeps the checkpoint it replaces as ``<stem>.prev<suffix>``
(:func:`previous_path`; hard-linked, so both files exist at every moment).

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

from evrtrl.atomic import atomic_write
from evrtrl.errors import ConfigError, FormatError
from evrtrl.finite import check_finite
from evrtrl.h5file import (DTYPES, H5_ERRORS, attr_int, attr_str, dtype_name, group, open_h5, read_extra,
                           write_h5, write_header)
from evrtrl.models import EGRU, LIF, Readout, Stack, random_masks
from evrtrl.models.modelfile import FORMAT_VERSION, SUPPORTED_VERSIONS, read_model, write_model

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "previous_path", "sample_checkpoints"]


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


def _json(text: Any, path: Path, where: str) -> Any:
    try:
        return json.loads(text.decode() if isinstance(text, bytes) else text)
    except (TypeError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise FormatError(f"{path}: '{where}' is not valid JSON ({exc})") from exc


def _read_tree(node: Any, path: Path, depth: int = 0) -> Any:
    where = node.name
    if depth > 64:
        raise FormatError(f"{path}: '{where}' is nested more than 64 levels deep")
    if isinstance(node, h5py.Dataset):
        try:
            v = node[()]
            is_json = bool(node.attrs.get("json", False))
            dt = node.attrs.get("torch_dtype", None)
        except H5_ERRORS as exc:
            raise FormatError(f"{path}: dataset '{where}' is unreadable ({exc})") from exc
        if is_json:
            return _json(v, path, where)
        if dt is not None:
            dt = dt.decode(errors="replace") if isinstance(dt, bytes) else str(dt)
            if dt not in DTYPES:
                raise FormatError(f"{path}: attribute 'torch_dtype' of '{where}' is {dt!r}")
            try:
                return torch.from_numpy(np.array(v)).to(DTYPES[dt])
            except (TypeError, ValueError, RuntimeError) as exc:
                raise FormatError(f"{path}: dataset '{where}' does not hold {dt} numbers ({exc})") from exc
        return np.array(v)
    kind = attr_str(node, "tree", path, where)
    if kind == "dict":
        keys = _json(attr_str(node, "keys", path, where), path, f"{where}' attribute 'keys")
        if not isinstance(keys, list) or not all(isinstance(k, (str, int)) for k in keys):
            raise FormatError(f"{path}: attribute 'keys' at '{where}' is not a list of str/int keys")
        return {k: _read_tree(_child(node, str(i), path), path, depth + 1) for i, k in enumerate(keys)}
    if kind in ("list", "tuple"):
        n = attr_int(node, "length", path, where)
        if not 0 <= n <= len(node):
            raise FormatError(f"{path}: attribute 'length' at '{where}' is {n}; the group holds {len(node)} items")
        items = [_read_tree(_child(node, str(i), path), path, depth + 1) for i in range(n)]
        return items if kind == "list" else tuple(items)
    raise FormatError(f"{path}: attribute 'tree' at '{where}' is {kind!r}; expected dict, list or tuple")


def _child(node: Any, name: str, path: Path) -> Any:
    try:
        present = name in node
        child = node[name] if present else None
    except H5_ERRORS as exc:
        raise FormatError(f"{path}: '{node.name}/{name}' is unreadable ({exc})") from exc
    if not present:
        raise FormatError(f"{path}: missing item '{node.name}/{name}'")
    return child


def previous_path(path: str | os.PathLike) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint it replaces: ``checkpoint.prev.h5``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _keep_previous(path: Path) -> None:
    """Make ``previous_path(path)`` the current ``path`` (hard link; a copy where links fail)."""
    if not path.exists():
        return
    prev = previous_path(path)
    tmp = prev.with_name(f".{prev.name}.link.tmp")
    try:
        if tmp.exists():
            tmp.unlink()
        os.link(path, tmp)
        os.replace(tmp, prev)
    except OSError:
        data = path.read_bytes()
        atomic_write(prev, lambda t: Path(t).write_bytes(data))


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
    keep_previous: bool = False,
    **extra: Any,
) -> Path:
    """Write a training checkpoint atomically (sealed, :mod:`evrtrl.h5file`).

    ``optimizer``: an optimizer (its ``state_dict()`` is stored) or a state dict;
    ``counters``: e.g. ``{"epoch": 1, "batch": 0, "updates": 40}``; ``rng``: name -> RNG
    state (default: the global torch RNG state); ``metrics``: the records logged so far;
    ``keep_previous``: first keep the file being replaced as :func:`previous_path`.
    Non-finite parameters or optimizer state raise :class:`~evrtrl.errors.NonFiniteError`
    (naming the tensor and ``counters``) and nothing is written.
    """
    if rng is None:
        rng = {"torch": torch.get_rng_state()}
    opt_state = optimizer.state_dict() if hasattr(optimizer, "state_dict") else (optimizer or {})
    when = f" at {', '.join(f'{k} {v}' for k, v in counters.items() if k != 'wall_s')}; checkpoint not written"
    check_finite(list(model.named_parameters()) + ([("readout." + n, p) for n, p in readout.named_parameters()]
                                                   if readout is not None else []), "parameter", when)
    check_finite(((f"state[{i}].{k}", v) for i, st in opt_state.get("state", {}).items()
                  for k, v in st.items() if isinstance(v, torch.Tensor)), "optimizer", when)

    def write(f: Any) -> None:
        write_header(f, "evrtrl-checkpoint", FORMAT_VERSION, extra)
        write_model(f, model, readout)
        _write_tree(f, "optimizer", opt_state)
        _write_tree(f, "counters", dict(counters))
        _write_tree(f, "rng", dict(rng))
        _write_tree(f, "metrics", list(metrics or []))

    if keep_previous:
        _keep_previous(Path(path))
    return write_h5(path, write)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a file written by :func:`save_checkpoint`."""
    path = Path(path)
    with open_h5(path, ("evrtrl-checkpoint",), SUPPORTED_VERSIONS) as f:
        model, readout = read_model(f, path)
        parts = {}
        for name, kind in (("optimizer", dict), ("counters", dict), ("rng", dict), ("metrics", list)):
            parts[name] = _read_tree(group(f, name, path), path)
            if not isinstance(parts[name], kind):
                raise FormatError(f"{path}: group '/{name}' holds a {type(parts[name]).__name__}, expected a "
                                  f"{kind.__name__}")
        return Checkpoint(
            model, readout, optimizer_state=parts["optimizer"], counters=parts["counters"], rng=parts["rng"],
            metrics=parts["metrics"], extra=read_extra(f, path),
        )


def sample_checkpoints(out: str | os.PathLike, shared: Any = None) -> list[Path]:
    """Write two small valid checkpoints into ``out`` (EGRU with masks and Adam state after
    two steps, a two-layer LIF stack) and return their paths: seeds of the mutation fuzzer
    (``evrtrl.benchmarks.fuzz_run_files``). ``shared`` (the shared-data folder) is unused."""
    out = Path(out)
    g = torch.Generator().manual_seed(0)
    models = [EGRU(3, 5, theta_init=0.1, generator=g, masks=random_masks(EGRU.weight_shapes(3, 5), 0.6, seed=1)),
              Stack(LIF(3, 4, tau_mem=0.02, tau_syn=0.005, dt=1e-3, generator=g),
                    LIF(4, 2, tau_mem=0.02, tau_syn=0.01, dt=1e-3, recurrent=False, generator=g))]
    paths = []
    for i, model in enumerate(models):
        readout = Readout(model.hidden_size if hasattr(model, "hidden_size") else 2, 2)
        opt = torch.optim.Adam(list(model.parameters()) + list(readout.parameters()), lr=1e-3)
        for _ in range(2):
            for p in opt.param_groups[0]["params"]:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        metrics = [{"kind": "batch", "epoch": 0, "batch": b, "loss": 0.5 / (b + 1), "saving": None} for b in range(3)]
        paths.append(save_checkpoint(out / f"checkpoint{i}.h5", model, readout, opt,
                                     counters={"epoch": 1, "batch": 0, "global_batch": 3, "updates": 3},
                                     metrics=metrics, run_id=f"{i:032x}"))
    return paths
