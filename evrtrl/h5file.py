r"""HDF5 files of the library: atomic writes and reading with errors that name file and field.

The model file (:mod:`evrtrl.models.modelfile`) and the training checkpoint
(:mod:`evrtrl.training.checkpoint`) are both built on these helpers. Every reading error
is a :class:`~evrtrl.errors.FormatError` naming the file and the missing or bad field.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import torch

from evrtrl import __version__
from evrtrl.atomic import atomic_write
from evrtrl.errors import FormatError

__all__ = ["DTYPES", "dtype_name", "write_h5", "open_h5", "write_header", "read_extra", "attr", "attr_str",
           "dataset", "group"]

#: torch dtypes by the name the files store
DTYPES = {
    "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
    "float64": torch.float64, "int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16,
    "int32": torch.int32, "int64": torch.int64, "bool": torch.bool,
}


def dtype_name(dtype: torch.dtype) -> str:
    """The name under which ``dtype`` is stored (a key of :data:`DTYPES`)."""
    return str(dtype).replace("torch.", "")


def write_header(f: Any, kind: str, version: int, extra: dict[str, Any]) -> None:
    """Root attributes of every library file: format_version, kind, evrtrl_version, extra (JSON)."""
    f.attrs["format_version"] = version
    f.attrs["kind"] = kind
    f.attrs["evrtrl_version"] = __version__
    f.attrs["extra"] = json.dumps(extra, sort_keys=True, default=str)


def read_extra(f: Any, path: Path) -> dict[str, Any]:
    """The root attribute ``extra`` (JSON) of a library file."""
    raw = f.attrs.get("extra", "{}")
    try:
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{path}: attribute 'extra' at '/' is not valid JSON ({exc})") from exc


def write_h5(path: str | os.PathLike, write: Callable[[Any], None]) -> Path:
    """Fill a new HDF5 file with ``write(h5file)`` atomically (:mod:`evrtrl.atomic`)."""
    def fill(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            write(f)
            f.flush()

    return atomic_write(path, fill)


def open_h5(path: str | os.PathLike, kinds: tuple[str, ...], supported_versions: tuple[int, ...]) -> h5py.File:
    """Open a library file for reading, checking its root ``format_version`` and ``kind``."""
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
        if version not in supported_versions:
            raise FormatError(
                f"{path}: format_version {version} is not supported; this evrtrl reads "
                f"{supported_versions}"
            )
        got = attr_str(f, "kind", path, "/")
        if got not in kinds:
            raise FormatError(f"{path}: attribute 'kind' at '/' is {got!r}, expected one of {list(kinds)}")
    except BaseException:
        f.close()
        raise
    return f


def attr(obj: Any, name: str, path: Path, where: str) -> Any:
    if name not in obj.attrs:
        raise FormatError(f"{path}: missing attribute '{name}' at '{where}'")
    return obj.attrs[name]


def attr_str(obj: Any, name: str, path: Path, where: str) -> str:
    v = attr(obj, name, path, where)
    return v.decode() if isinstance(v, bytes) else str(v)


def dataset(group: Any, name: str, path: Path) -> np.ndarray:
    if name not in group:
        raise FormatError(f"{path}: missing dataset '{group.name.rstrip('/')}/{name}'")
    try:
        return group[name][()]
    except Exception as exc:  # h5py raises OSError/KeyError on damaged data
        raise FormatError(f"{path}: dataset '{group.name.rstrip('/')}/{name}' is unreadable ({exc})") from exc


def group(parent: Any, name: str, path: Path) -> Any:
    if name not in parent:
        raise FormatError(f"{path}: missing group '{parent.name.rstrip('/')}/{name}'")
    return parent[name]
