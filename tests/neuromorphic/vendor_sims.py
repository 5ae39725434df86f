"""Import the vendors' simulators for the cross-checks; skip naming the extra where they are absent."""
from __future__ import annotations

import pytest

EXTRA = "vendor extra not installed: pip install -e '.[vendor]' (rockpool, xylosim)"


def syns61201():
    """``rockpool.devices.xylo.syns61201`` (XyloSim, mapper), or skip naming the extra.

    Loaded without running ``rockpool.devices.xylo.__init__`` (it imports samna, which is not
    installable): see ``evrtrl.neuromorphic.examples.xylo_mapper_compare.load_syns61201``.
    """
    pytest.importorskip("xylosim", reason=EXTRA)
    pytest.importorskip("rockpool", reason=EXTRA)
    from evrtrl.neuromorphic.examples.xylo_mapper_compare import load_syns61201

    return load_syns61201()
