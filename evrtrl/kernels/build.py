"""Building and loading the compiled kernels (PyTorch C++ extensions), with the fallback rule.

A kernel is C++ source compiled on first use by :func:`torch.utils.cpp_extension.load`
(a C++ compiler and ``ninja`` on ``PATH``) and cached in :func:`cache_dir`: under
``$EVRTRL_KERNEL_CACHE`` if set, else ``$XDG_CACHE_HOME/evrtrl/kernels`` (default
``~/.cache/evrtrl/kernels``), one folder per torch version, Python version and CPU (the
code is built for the machine's instruction set) and, inside it, one folder per kernel and
hash of its sources and flags (two checkouts or versions of evrtrl never share a build;
an old version's folders stay until the cache is cleared), never inside site-packages.
Later processes load the cached library in milliseconds.

Which path the event engine runs is chosen by ``EVRTRL_KERNEL`` (or the engine's
``kernel=`` argument): ``"auto"`` (default) uses the compiled path where it builds and
covers the run and pure torch otherwise, with one warning naming why a build failed;
``"compiled"`` raises :class:`evrtrl.errors.UnsupportedError` instead of falling back;
``"torch"`` never builds.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch

from evrtrl.errors import UnknownMethodError, UnsupportedError

__all__ = ["KERNEL_ENV", "KERNEL_MODES", "KernelBuildWarning", "kernel_mode", "cache_dir",
           "compiler", "load", "build_error"]

#: environment variable that picks the event engine's implementation
KERNEL_ENV = "EVRTRL_KERNEL"
KERNEL_MODES = ("auto", "torch", "compiled")
#: flags: optimised for this machine's CPU; no fast-math (exactness is the product)
CFLAGS = ["-O3", "-march=native"]


class KernelBuildWarning(UserWarning):
    """A compiled kernel could not be built or loaded; the pure-torch path runs instead."""


#: per-process cache of loaded modules (name -> module) and of failures (name -> reason)
_LOADED: dict[str, ModuleType] = {}
_FAILED: dict[str, str] = {}


def kernel_mode(mode: str | None = None) -> str:
    """The requested path: ``mode`` if given, else ``$EVRTRL_KERNEL``, else ``"auto"``."""
    mode = mode if mode is not None else os.environ.get(KERNEL_ENV, "auto")
    mode = mode.strip().lower() or "auto"
    if mode not in KERNEL_MODES:
        raise UnknownMethodError(f"kernel (or ${KERNEL_ENV}) must be one of {KERNEL_MODES}, got {mode!r}")
    return mode


def _cpu_tag() -> str:
    name = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags")):
                    name += line
    except OSError:
        pass
    return hashlib.sha1(name.encode()).hexdigest()[:10]


def _source_tag(sources: list[Path]) -> str:
    """A hash of the sources and flags: two checkouts (or versions) never share a build."""
    h = hashlib.sha1(" ".join(CFLAGS).encode())
    for src in sources:
        h.update(Path(src).read_bytes())
    return h.hexdigest()[:12]


def cache_dir() -> Path:
    """Where built kernels are cached (module docstring)."""
    root = os.environ.get("EVRTRL_KERNEL_CACHE")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "evrtrl" / "kernels"
    tag = f"torch{torch.__version__.replace('+', '_')}-py{sys.version_info[0]}{sys.version_info[1]}-{_cpu_tag()}"
    return base / tag


def compiler() -> str | None:
    """Path of the C++ compiler torch would use (``$CXX`` or ``c++``), None if absent."""
    return shutil.which(os.environ.get("CXX", "c++"))


def build_error(name: str) -> str | None:
    """Why kernel ``name`` failed to build in this process (None if it did not fail)."""
    return _FAILED.get(name)


def load(name: str, sources: list[Path]) -> ModuleType | None:
    """The compiled module ``name`` built from ``sources``; None (one warning) if it cannot be built."""
    if name in _LOADED:
        return _LOADED[name]
    if name in _FAILED:
        return None
    reason = None
    if compiler() is None:
        reason = f"no C++ compiler found (${'CXX'} or c++ on PATH)"
    elif shutil.which("ninja") is None:
        reason = "ninja is not on PATH (pip install ninja)"
    if reason is None:
        try:
            from torch.utils import cpp_extension

            build = cache_dir() / f"{name}-{_source_tag(sources)}"
            build.mkdir(parents=True, exist_ok=True)
            mod = cpp_extension.load(name=name, sources=[str(s) for s in sources],
                                     extra_cflags=CFLAGS, build_directory=str(build), verbose=False)
            _LOADED[name] = mod
            return mod
        except Exception as exc:  # any build or load failure means: fall back
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    _FAILED[name] = reason
    warnings.warn(f"evrtrl: the compiled kernel {name!r} is unavailable ({reason}); "
                  "the event engine runs the pure-torch path", KernelBuildWarning, stacklevel=3)
    return None


def require(name: str, sources: list[Path]) -> ModuleType:
    """Like :func:`load` but raise :class:`UnsupportedError` when it cannot be built."""
    mod = load(name, sources)
    if mod is None:
        raise UnsupportedError(f"the compiled kernel {name!r} is unavailable: {_FAILED[name]} "
                               f"(${KERNEL_ENV}=compiled was requested)")
    return mod
