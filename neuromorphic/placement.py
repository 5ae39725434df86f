"""Placement of neurons on cores: greedy bin packing by synapse count with locality.

Synapses are stored at the postsynaptic core (as on Loihi and TrueNorth), so a
neuron costs one neuron slot, ``fan_in`` synapse slots, ``fan_in * weight_bits``
bits of synapse memory, and it adds its presynaptic sources to the core's set
of input axons. Recurrent synapses count exactly like feed-forward ones.

Algorithm (per layer, in layer order, continuing on the current core):

1. candidates = the layer's neurons, by synapse count descending;
2. if the open core is empty take the largest candidate that fits, otherwise
   the candidate whose presynaptic set overlaps most with the core's axon set
   (ties: more synapses first), provided it fits every per-core limit
   (neurons, synapses, synapse memory, distinct input axons);
3. if no candidate fits, close the core and open a new one;
4. a neuron that does not fit even an empty core is placed alone and reported.

The cost is O(n^2 k) for n neurons and k inputs per neuron, fine for the few
thousand neurons of these chips.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Core", "CoreLimits", "NeuronLoad", "place", "neuron_loads"]


@dataclass
class NeuronLoad:
    layer: int
    index: int
    sources: frozenset  # presynaptic ids: ("in", j) / ("L", layer, j)
    synapses: int       # stored synapses (an EGRU neuron stores one per gate and source)


@dataclass
class Core:
    index: int
    neurons: list = field(default_factory=list)  # (layer, index)
    synapses: int = 0
    axons: set = field(default_factory=set)

    def memory_bits(self, weight_bits: int) -> int:
        return self.synapses * weight_bits


@dataclass(frozen=True)
class CoreLimits:
    neurons: int | None
    synapses: int | None
    memory_bits: int | None
    axons: int | None
    weight_bits: int


def _fits(core: Core, nl: NeuronLoad, lim: CoreLimits) -> bool:
    if lim.neurons is not None and len(core.neurons) + 1 > lim.neurons:
        return False
    if lim.synapses is not None and core.synapses + nl.synapses > lim.synapses:
        return False
    if lim.memory_bits is not None and (core.synapses + nl.synapses) * lim.weight_bits > lim.memory_bits:
        return False
    if lim.axons is not None and len(core.axons | nl.sources) > lim.axons:
        return False
    return True


def _add(core: Core, nl: NeuronLoad) -> None:
    core.neurons.append((nl.layer, nl.index))
    core.synapses += nl.synapses
    core.axons |= nl.sources


def place(loads_per_layer: list, lim: CoreLimits) -> tuple[list, list]:
    """Return (cores, oversized) where oversized lists neurons that fit no empty core."""
    cores = [Core(0)]
    oversized = []
    for loads in loads_per_layer:
        pending = sorted(loads, key=lambda nl: -nl.synapses)
        while pending:
            core = cores[-1]
            best, best_key = None, None
            for i, nl in enumerate(pending):
                if not _fits(core, nl, lim):
                    continue
                key = (len(core.axons & nl.sources), nl.synapses)
                if best_key is None or key > best_key:
                    best, best_key = i, key
                if not core.neurons:
                    break  # empty core: largest that fits
            if best is not None:
                _add(core, pending.pop(best))
                continue
            if not core.neurons:
                nl = pending.pop(0)  # fits no empty core: place alone, report
                _add(core, nl)
                oversized.append(nl)
            cores.append(Core(len(cores)))
    if not cores[-1].neurons and len(cores) > 1:
        cores.pop()
    return cores, oversized


def neuron_loads(layer_idx: int, matrices: list) -> list:
    """Loads of one layer from ``[(source_prefix, live_matrix), ...]`` (rows = this layer's neurons)."""
    n = matrices[0][1].shape[0]
    out = []
    for i in range(n):
        src, count = set(), 0
        for prefix, M in matrices:
            nz = np.flatnonzero(M[i])
            count += nz.size
            src.update((*prefix, int(j)) for j in nz)
        out.append(NeuronLoad(layer_idx, i, frozenset(src), count))
    return out
