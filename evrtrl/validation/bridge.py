"""What the simulator bridges return, and the checks they share."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from evrtrl.models.lif import LIF  # local: neuromorphic -> models

from evrtrl.api import LayerTrace
from evrtrl.errors import UnsupportedError
from evrtrl.network import check_sequence, layers_of

__all__ = ["BridgeResult", "lif_layers"]


@dataclass
class BridgeResult:
    """A reference simulator's run in the library's layout.

    ``spikes`` (T, B, n) and ``states`` {"v", "i"} (T, B, n) of the last layer (end-of-step
    values: ``v`` after reset, ``i`` after every jump of the step), ``layers`` one
    :class:`~evrtrl.api.LayerTrace` per layer, ``simulator`` e.g. ``"brian2 2.9.0"``,
    ``batch_index`` the batch entries of ``x`` that were simulated.
    """

    spikes: torch.Tensor
    states: dict[str, torch.Tensor]
    layers: list[LayerTrace] = field(default_factory=list)
    simulator: str = ""
    batch_index: list[int] = field(default_factory=list)


def lif_layers(model, x: torch.Tensor, who: str, integration: str) -> list:
    """The LIF layers of ``model``; raises UnsupportedError for anything else."""

    check_sequence(model, x)
    refs = layers_of(model)
    for ref in refs:
        layer = ref.layer
        if not isinstance(layer, LIF):
            raise UnsupportedError(
                f"{who}: layer {ref.index} is a {type(layer).__name__}; only models.LIF layers "
                f"have a {who.split('_')[-1]} equivalent (no gated/EGRU neuron exists there)"
            )
        if layer.integration != integration:
            raise UnsupportedError(
                f"{who}: layer {ref.index} uses integration={layer.integration!r}; this bridge "
                f"reproduces integration={integration!r} only"
            )
    return refs


def check_spike_input(x: torch.Tensor, who: str) -> None:
    """Spike generators carry events, not values: ``x`` must hold only 0 and 1."""
    bad = ~((x == 0) | (x == 1))
    if bool(bad.any()):
        idx = tuple(int(v) for v in bad.nonzero()[0])
        raise UnsupportedError(
            f"{who}: input x must be 0/1 spikes (a SpikeGeneratorGroup emits events, not "
            f"values); x{list(idx)} = {float(x[idx])}"
        )
