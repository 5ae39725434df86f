"""Import the vendors' simulators for the cross-checks; skip naming the extra where they are absent.

``rockpool.devices.xylo.__init__`` imports samna (Xylo Audio 3 / HDK support), which is not
installable from PyPI; ``rockpool.devices.xylo.syns61201`` (XyloSim, mapper) loads when the
parent package is registered in ``sys.modules`` without running its ``__init__``.
"""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest

EXTRA = "vendor extra not installed: pip install -e '.[vendor]' (rockpool, xylosim)"


def syns61201():
    """``rockpool.devices.xylo.syns61201`` (XyloSim, mapper), or skip naming the extra."""
    pytest.importorskip("xylosim", reason=EXTRA)
    rockpool = pytest.importorskip("rockpool", reason=EXTRA)
    name = "rockpool.devices.xylo"
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(Path(rockpool.__file__).parent / "devices" / "xylo")]
        sys.modules[name] = pkg
    return importlib.import_module(name + ".syns61201")
