r"""HDF5 files of the library: atomic, sealed writes and verified reads with errors that name file and field.

The model file (:mod:`evrtrl.models.modelfile`), the training checkpoint
(:mod:`evrtrl.training.checkpoint`) and the hardware bundle
(:mod:`evrtrl.neuromorphic.bundle`) are all built on these helpers. Every reading error
is a :class:`~evrtrl.errors.FormatError` naming the file and the missing or bad field.

Content hash (the *seal*)
-------------------------
Every file is created with a 512-byte HDF5 **user block** (bytes libhdf5 reserves for the
application and never reads; the HDF5 superblock follows at offset 512). After the HDF5
file is closed, and before it is moved into place, :func:`seal` writes into that block::

    evrtrl-sha256 1\n
    sha256 <64 hex digits>\n            SHA-256 of every byte after the user block
    bytes <decimal length>\n            number of bytes after the user block

(ASCII, zero padded to 512 bytes). :func:`read_h5` reads the whole file into memory once,
checks the seal, and only then lets libhdf5 parse **those same bytes** (no second read,
so nothing can change between the check and the parse). A flipped, zeroed or truncated
byte anywhere in the file is a :class:`~evrtrl.errors.FormatError` before libhdf5 sees it,
so a corrupt file can neither load silently nor send libhdf5 into one of its endless loops.
The hash lives inside the file (no sidecar that could be lost, copied apart or replaced
non-atomically) and in a region libhdf5 ignores (the file stays a plain HDF5 file for
``h5py``/``h5dump``).

A file that starts with the HDF5 signature at byte 0 has no user block: it was written by
evrtrl 0.1.0 (*legacy*). It still loads, with the structure and field checks and the link
refusal below, but **without an integrity check** (a flipped weight byte loads silently,
and a corrupt legacy file can still make libhdf5 loop); saving it again seals it. Any other
first bytes (no seal, no signature) are a :class:`~evrtrl.errors.FormatError`.

A hash proves that the bytes are what :func:`seal` wrote, not who called it: a crafted file
with a recomputed seal (and the mutants of the fuzzer's ``+rehash`` rows) does reach libhdf5.
So, where the platform can fork, the verified bytes are first parsed in a **forked child**
under a time limit (:func:`probe_time_limit`; every object, attribute and dataset is read,
a superset of what the readers read). libhdf5 is deterministic on the same bytes, so a file
that would loop or crash is refused with :class:`HDF5GuardError` (a FormatError) and only
files the child finished are parsed in the caller's process. Cost: one fork per read
(~0.3 s for a checkpoint on a loaded 2-core machine, about as long as the read itself).
Where the platform cannot fork (Windows), or the fork fails (no memory for a child), the file
is read without the probe.

Files the library did not write (SHD/SSC, NIR graphs) carry no seal; their readers call
:func:`probe_file`, the same forked, time-limited walk on the file as it lies on disk
(opened by path, datasets read in blocks of at most 16 MiB), and then
:func:`refuse_links` (no external links, external storage or virtual datasets). This is
the one HDF5 hang guard of the library.

Links: the library writes hard links only. A file holding an external link (a reference
into another file), a soft link, a dataset with external raw storage or a virtual dataset
is refused, so reading a file never opens another one (foreign files: soft links, which
stay inside the file, are allowed).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import torch

from evrtrl import __version__
from evrtrl.atomic import atomic_write
from evrtrl.errors import FormatError

__all__ = ["DTYPES", "dtype_name", "write_h5", "open_h5", "read_h5", "seal", "seal_status", "write_header",
           "read_extra", "attr", "attr_str", "attr_int", "attr_float", "dataset", "dataset_shape", "group", "USERBLOCK",
           "HDF5_SIGNATURE", "H5_ERRORS", "HDF5GuardError", "probe_time_limit", "probe_file", "refuse_links"]

#: bytes reserved before the HDF5 superblock for the seal (the smallest HDF5 user block)
USERBLOCK = 512
#: first line of a sealed file
SEAL_MAGIC = b"evrtrl-sha256 1\n"
#: the HDF5 format signature; at byte 0 it marks a legacy (unsealed, evrtrl 0.1.0) file
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class HDF5GuardError(FormatError):
    """libhdf5 looped past the time limit, or crashed, parsing the file in a forked child."""


#: time limit of the probe: this many seconds for any file, plus one second per PROBE_BYTES_PER_S bytes
PROBE_BASE_S = 30.0
PROBE_BYTES_PER_S = 20e6
#: the probe reads datasets in blocks of at most this many bytes
BLOCK_BYTES = 1 << 24


def probe_time_limit(size: int) -> float:
    """Seconds the forked parse of a file of ``size`` bytes may take: ``$EVRTRL_H5_PROBE_S``
    if set, else 30 s plus 1 s per 20 MB."""
    env = os.environ.get("EVRTRL_H5_PROBE_S")
    return float(env) if env else PROBE_BASE_S + size / PROBE_BYTES_PER_S


#: attribute names the library's readers look up by name (looked up in the probe too: by-name
#: lookups in dense attribute storage take another path through libhdf5 than iteration)
_LOOKED_UP = ("format_version", "kind", "extra", "evrtrl_version", "class", "n_layers", "input_size", "hidden_size",
              "n_out", "dtype", "pd_kind", "pd_gamma", "pd_width", "recurrent", "tree", "keys", "length", "json",
              "torch_dtype", "numpy", "format", "version", "shape", "bits", "mode", "gate")


def _read_dataset(ds: Any, cap: int) -> None:
    """Read all of ``ds`` in blocks of at most :data:`BLOCK_BYTES` (at most ``cap`` bytes: a
    crafted shape cannot make the probe allocate without bound; past it, the last row only)."""
    shape = ds.shape
    if shape is None:  # null dataspace
        return
    if len(shape) == 0:
        ds[()]
        return
    row = max(1, int(np.prod(shape[1:], dtype=np.int64)) * max(1, ds.dtype.itemsize))
    step = max(1, BLOCK_BYTES // row)
    done = 0
    for start in range(0, shape[0], step):
        if done > cap:
            ds[shape[0] - 1:shape[0]]
            return
        ds[start:start + step]
        done += step * row


def _walk(f: Any, cap: int) -> None:
    """Read every link, object, attribute and dataset of ``f`` the way the readers do (member
    lists, links, objects, attributes by iteration and by name, dataset values in blocks),
    going on past errors: only libhdf5 loops and crashes matter in the probe; errors are met
    again in the parent. A superset of what :func:`read_h5` and the readers touch."""
    def attrs(obj: Any) -> None:
        try:
            names = list(obj.attrs)
        except Exception:  # noqa: BLE001 - any error is fine in the probe
            names = []
        for k in set(names) | set(_LOOKED_UP):
            try:
                if k in obj.attrs:
                    obj.attrs[k]
            except Exception:  # noqa: BLE001
                pass

    seen: set[Any] = set()
    stack = [f]
    while stack:
        g = stack.pop()
        try:
            if g.id in seen:
                continue
            seen.add(g.id)
            members = list(g)
        except Exception:  # noqa: BLE001
            continue
        attrs(g)
        for name in members:
            try:
                name in g
                if not isinstance(g.get(name, getlink=True), h5py.HardLink):
                    continue
                obj = g.get(name)
                if isinstance(obj, h5py.Group):
                    stack.append(obj)
                elif isinstance(obj, h5py.Dataset):
                    attrs(obj)
                    obj.is_virtual
                    obj.id.get_create_plist().get_external_count()
                    _read_dataset(obj, cap)
            except Exception:  # noqa: BLE001
                pass


def _open_image(data: bytes) -> h5py.File:
    """An h5py file on the in-memory image ``data`` (core driver, nothing written back; no
    Python callbacks inside libhdf5, unlike a file object)."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_fapl_core(backing_store=False)
    fapl.set_file_image(data)
    return h5py.File(h5py.h5f.open(f"evrtrl-image-{os.urandom(8).hex()}".encode(), h5py.h5f.ACC_RDONLY, fapl=fapl))


def _probe(open_file: Callable[[], Any], path: Path, size: int, timeout_s: float | None = None) -> None:
    """Open (``open_file()``) and walk the file in a forked child under a time limit (module
    docstring): HDF5GuardError if the child runs past it (killed) or dies from a signal. A
    file the child cannot open passes: the caller's own open meets the error."""
    if not hasattr(os, "fork"):  # pragma: no cover - Windows: no probe
        return
    limit = probe_time_limit(size) if timeout_s is None else float(timeout_s)
    cap = max(64 * size, 1 << 28)
    with warnings.catch_warnings():  # Python >= 3.12 warns about fork in a threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            pid = os.fork()
        except OSError:  # pragma: no cover - no memory or process slot for a child: read unprobed
            return
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            with open_file() as f:
                _walk(f, cap)
        except BaseException:  # noqa: BLE001 - not openable: the parent meets the error itself
            code = 1
        os._exit(code)
    deadline, pause = time.monotonic() + limit, 1e-3
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise HDF5GuardError(f"{path}: libhdf5 did not finish parsing the file within {limit:.0f} s (parsed in "
                                 "a child process, which was killed): a corrupt HDF5 file can make it loop forever; "
                                 "refused ($EVRTRL_H5_PROBE_S sets the limit)")
        time.sleep(pause)
        pause = min(2 * pause, 0.05)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
        raise HDF5GuardError(f"{path}: libhdf5 crashed parsing the file in a child process (signal {name}): "
                             "the file is corrupt; refused")


def probe_file(path: str | os.PathLike, timeout_s: float | None = None) -> None:
    """Walk the HDF5 file ``path`` (one the library did not write: SHD, NIR) in a forked child
    under a time limit (``timeout_s``, default :func:`probe_time_limit`) before the caller
    opens it; :class:`HDF5GuardError` if libhdf5 loops or crashes on it (module docstring)."""
    path = Path(path)
    _probe(lambda: h5py.File(path, "r"), path, os.path.getsize(path), timeout_s)


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
    try:
        present = "extra" in f.attrs
    except H5_ERRORS as exc:
        raise FormatError(f"{path}: the attributes at '/' are unreadable ({exc})") from exc
    raw = attr_str(f, "extra", path, "/") if present else "{}"
    try:
        extra = json.loads(raw)
    except ValueError as exc:
        raise FormatError(f"{path}: attribute 'extra' at '/' is not valid JSON ({exc})") from exc
    if not isinstance(extra, dict):
        raise FormatError(f"{path}: attribute 'extra' at '/' is JSON {type(extra).__name__}, expected an object")
    return extra


def _seal_header(payload: bytes) -> bytes:
    digest = hashlib.sha256(payload).hexdigest()
    text = SEAL_MAGIC + f"sha256 {digest}\nbytes {len(payload)}\n".encode()
    return text + bytes(USERBLOCK - len(text))


def seal(path: str | os.PathLike) -> None:
    """Write the seal (module docstring) into the user block of the HDF5 file ``path``.

    The file must have been created with ``userblock_size=USERBLOCK`` (as :func:`write_h5`
    does) and be closed. Also used by the mutation fuzzer to re-seal mutants, so that the
    parser itself is exercised.
    """
    with open(path, "rb+") as fh:
        data = fh.read()
        if len(data) < USERBLOCK + len(HDF5_SIGNATURE) or data[USERBLOCK:USERBLOCK + 8] != HDF5_SIGNATURE:
            raise FormatError(f"{path}: cannot seal: no HDF5 superblock after a {USERBLOCK}-byte user block")
        fh.seek(0)
        fh.write(_seal_header(data[USERBLOCK:]))


def seal_status(data: bytes, path: str | os.PathLike) -> str:
    """``"sealed"`` if ``data`` (a whole file) carries a valid seal, ``"legacy"`` if it is an
    unsealed HDF5 file (HDF5 signature at byte 0); anything else is a FormatError."""
    if data[:8] == HDF5_SIGNATURE:
        return "legacy"
    if not data.startswith(SEAL_MAGIC):
        raise FormatError(f"{path}: neither an evrtrl file (no 'evrtrl-sha256' seal in the first {USERBLOCK} "
                          "bytes) nor an HDF5 file (no HDF5 signature at byte 0)")
    head = data[len(SEAL_MAGIC):USERBLOCK].split(b"\x00", 1)[0].decode("ascii", "replace").split("\n")
    fields = dict(line.split(" ", 1) for line in head if " " in line)
    digest, length = fields.get("sha256", ""), fields.get("bytes", "")
    if len(digest) != 64 or not length.isdigit():
        raise FormatError(f"{path}: the seal in the first {USERBLOCK} bytes is damaged (field "
                          f"{'sha256' if len(digest) != 64 else 'bytes'})")
    payload = data[USERBLOCK:]
    if len(payload) != int(length):
        raise FormatError(f"{path}: {len(payload)} bytes after the seal, the seal records {length} "
                          "(truncated or extended file)")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise FormatError(f"{path}: content hash mismatch (sha256 of bytes {USERBLOCK}..{len(data)} differs from "
                          "the seal): the file is corrupt")
    return "sealed"


def write_h5(path: str | os.PathLike, write: Callable[[Any], None]) -> Path:
    """Fill a new HDF5 file with ``write(h5file)``, seal it and move it into place atomically
    (:mod:`evrtrl.atomic`)."""
    def fill(tmp: str) -> None:
        with h5py.File(tmp, "w", userblock_size=USERBLOCK) as f:
            write(f)
            f.flush()
        seal(tmp)

    return atomic_write(path, fill)


def refuse_links(f: h5py.File, path: str | os.PathLike, *, soft: bool = True) -> None:
    """FormatError on anything that would make libhdf5 open another file (external links,
    external raw storage, virtual datasets) or, with ``soft``, follow a soft link.

    Walks the group tree itself (no libhdf5 visit callback, in which h5py turns errors into
    SystemError), through hard links only, each group once."""
    seen: set[Any] = set()
    stack: list[tuple[str, Any]] = [("", f)]
    try:
        while stack:
            prefix, g = stack.pop()
            if g.id in seen:
                continue
            seen.add(g.id)
            for name in list(g):
                where = f"{prefix}/{name}"
                link = g.get(name, getlink=True)
                if isinstance(link, h5py.SoftLink) and not soft:
                    continue
                if not isinstance(link, h5py.HardLink):
                    target = getattr(link, "filename", None) or getattr(link, "path", "")
                    kind = {"ExternalLink": "an external link", "SoftLink": "a soft link"}.get(
                        type(link).__name__, f"a {type(link).__name__}")
                    raise FormatError(f"{path}: '{where}' is {kind} to {target!r}; refused: evrtrl files hold "
                                      "hard links only, and no file may make the reader open another file")
                obj = g.get(name)
                if isinstance(obj, h5py.Group):
                    stack.append((where, obj))
                elif isinstance(obj, h5py.Dataset):
                    if obj.is_virtual:
                        raise FormatError(f"{path}: '{where}' is a virtual dataset (data from other files); refused")
                    if obj.id.get_create_plist().get_external_count() > 0:
                        raise FormatError(f"{path}: '{where}' keeps its data in external files; refused")
    except FormatError:
        raise
    except H5_ERRORS as exc:
        raise FormatError(f"{path}: the group tree is unreadable ({exc})") from exc


def read_h5(path: str | os.PathLike) -> h5py.File:
    """Open an HDF5 file the library wrote: seal checked, links refused (module docstring).

    The whole file is read into memory once; libhdf5 parses those verified bytes. The
    returned file's ``seal`` attribute (Python, not HDF5) is ``"sealed"`` or ``"legacy"``.
    """
    path = Path(path)
    if path.is_dir():
        raise FormatError(f"{path}: is a directory, expected an HDF5 file")
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "no such file", str(path))
    data = path.read_bytes()
    status = seal_status(data, path)
    _probe(lambda: _open_image(data), path, len(data))
    try:
        f = _open_image(data)
    except (OSError, RuntimeError, ValueError) as exc:
        raise FormatError(f"{path}: not a readable HDF5 file ({exc})") from exc
    try:
        refuse_links(f, path)
    except BaseException:
        f.close()
        raise
    f.seal = status  # type: ignore[attr-defined]
    return f


def open_h5(path: str | os.PathLike, kinds: tuple[str, ...], supported_versions: tuple[int, ...]) -> h5py.File:
    """Open a library file for reading (:func:`read_h5`), checking its root ``format_version`` and ``kind``."""
    path = Path(path)
    f = read_h5(path)
    try:
        version = attr_int(f, "format_version", path, "/")
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


#: what h5py raises on a damaged structure (libhdf5 errors arrive as OSError/KeyError/RuntimeError,
#: bad stored types as TypeError/ValueError)
H5_ERRORS = (OSError, KeyError, RuntimeError, TypeError, ValueError, IndexError)


def _where(obj: Any) -> str:
    try:
        return obj.name or "/"
    except H5_ERRORS:  # pragma: no cover - a damaged object header
        return "?"


def attr(obj: Any, name: str, path: Path, where: str) -> Any:
    """Attribute ``name`` of ``obj``; FormatError naming file, object and attribute if absent or unreadable."""
    try:
        present = name in obj.attrs
        value = obj.attrs[name] if present else None
    except H5_ERRORS as exc:
        raise FormatError(f"{path}: attribute '{name}' at '{where}' is unreadable ({exc})") from exc
    if not present:
        raise FormatError(f"{path}: missing attribute '{name}' at '{where}'")
    return value


def attr_str(obj: Any, name: str, path: Path, where: str) -> str:
    v = attr(obj, name, path, where)
    if isinstance(v, bytes):
        try:
            return v.decode()
        except UnicodeDecodeError as exc:
            raise FormatError(f"{path}: attribute '{name}' at '{where}' is not UTF-8 text") from exc
    if isinstance(v, np.ndarray):
        raise FormatError(f"{path}: attribute '{name}' at '{where}' is an array, expected text")
    return str(v)


def _number(obj: Any, name: str, path: Path, where: str, cast: Callable[[Any], Any]) -> Any:
    v = attr(obj, name, path, where)
    try:
        if isinstance(v, np.ndarray):
            if v.size != 1:
                raise TypeError(f"an array of shape {v.shape}")
            v = v.reshape(()).item()
        if isinstance(v, (bytes, str)):
            raise TypeError(f"text {v!r}")
        return cast(v)
    except (TypeError, ValueError, OverflowError) as exc:
        raise FormatError(f"{path}: attribute '{name}' at '{where}' is not a {cast.__name__} ({exc})") from exc


def attr_int(obj: Any, name: str, path: Path, where: str) -> int:
    """Integer attribute (a float with a fractional part is refused)."""
    v = _number(obj, name, path, where, float)
    if not np.isfinite(v) or v != int(v):
        raise FormatError(f"{path}: attribute '{name}' at '{where}' is {v!r}, expected an integer")
    return int(v)


def attr_float(obj: Any, name: str, path: Path, where: str) -> float:
    """Float attribute."""
    return _number(obj, name, path, where, float)


def _from_dataset(group: Any, name: str, path: Path, read: Callable[[Any], Any]) -> Any:
    """``read(node)`` of dataset ``group/name``; FormatError naming file and dataset if absent,
    not a dataset or unreadable."""
    full = f"{_where(group).rstrip('/')}/{name}"
    try:
        present = name in group
        node = group[name] if present else None
        if present and not isinstance(node, h5py.Dataset):
            raise FormatError(f"{path}: '{full}' is a {type(node).__name__}, expected a dataset")
        value = read(node) if present else None
    except H5_ERRORS as exc:
        raise FormatError(f"{path}: dataset '{full}' is unreadable ({exc})") from exc
    if not present:
        raise FormatError(f"{path}: missing dataset '{full}'")
    return value


def dataset(group: Any, name: str, path: Path) -> np.ndarray:
    """The values of dataset ``group/name``; FormatError naming file and dataset if absent or unreadable."""
    return _from_dataset(group, name, path, lambda node: node[()])


def dataset_shape(group: Any, name: str, path: Path) -> tuple[int, ...]:
    """The shape of dataset ``group/name`` without reading it (to check sizes before allocating)."""
    return _from_dataset(group, name, path,
                         lambda node: tuple(node.shape) if node.shape is not None else ())


def group(parent: Any, name: str, path: Path) -> Any:
    """Sub-group ``parent/name``; FormatError naming file and group if absent or not a group."""
    full = f"{_where(parent).rstrip('/')}/{name}"
    try:
        present = name in parent
        node = parent[name] if present else None
    except H5_ERRORS as exc:
        raise FormatError(f"{path}: group '{full}' is unreadable ({exc})") from exc
    if not present:
        raise FormatError(f"{path}: missing group '{full}'")
    if not isinstance(node, h5py.Group):
        raise FormatError(f"{path}: '{full}' is a {type(node).__name__}, expected a group")
    return node
