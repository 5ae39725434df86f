"""Quantisation of weights and neuron parameters to a profile's bit widths.

Weights: symmetric, signed, round-half-to-even (``numpy.round``).
For ``bits`` b the integer range is ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (the most
negative code is not used, so the range is symmetric). The scale is shared by
all weights that feed the same neurons, because the neuron sums them into one
state register:

* ``"per_tensor"``: one scale per layer, ``s = max|[W U]| / qmax``;
* ``"per_row"``: one scale per postsynaptic neuron (row of ``[W U]``).

Pruned entries (mask False) are set to zero and do not enter the maximum. For
every live entry ``|w - q s| <= s / 2``.

The threshold is not a weight: its register holds it in membrane units, which
differ from weight steps by the current-to-membrane gain (``registers.py``: Xylo
``round(v_th alpha_syn 2^k / (s b))``, Loihi ``round(v_th / (s b))``, other chips
``round(v_th / (s b))`` assuming a unit per-step gain). The mapper computes and
checks it (``mapping.py``).

Time constants: the per-step decay factor ``alpha`` (``exp(-dt/tau)`` for
``integration="exact"``, ``1 - dt/tau`` for ``"euler"``) is quantised according
to ``profile.time_constant``:

* ``bitshift`` (Xylo): ``alpha_q = 1 - 2^-dash``, ``dash = round(log2(1/(1-alpha)))``
  clipped to ``[0, 2^bits - 1]``;
* ``fixed_point_decay`` (Loihi): ``alpha_q = 1 - round((1-alpha) 2^bits) / 2^bits``;
* ``float``/``analog``: unchanged; ``none``/``linear_leak``: not representable
  (the mapper reports it), unchanged here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from evrtrl.errors import ConfigError

__all__ = ["QuantizedWeights", "quantize_weights", "quantize_decay", "tau_from_decay"]


@dataclass(frozen=True)
class QuantizedWeights:
    q: dict            # name -> int64 array (pruned entries 0)
    scale: np.ndarray  # shape (1,) per tensor, or (n,) per row
    bits: int
    mode: str

    def dequantized(self, name: str) -> np.ndarray:
        s = self.scale.reshape(-1, 1)
        return self.q[name].astype(np.float64) * s

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1


def quantize_weights(weights: dict, masks: dict, bits: int, mode: str = "per_tensor") -> QuantizedWeights:
    """Quantise the weight matrices ``weights`` (name -> (n x k) array) that feed the same n neurons."""
    if mode not in ("per_tensor", "per_row"):
        raise ConfigError(f"quantisation mode must be 'per_tensor' or 'per_row', got {mode!r}")
    if not isinstance(bits, int) or bits < 2:
        raise ConfigError(f"weight bits must be an int >= 2, got {bits!r}")
    qmax = 2 ** (bits - 1) - 1
    live = {k: np.where(np.asarray(masks.get(k, True), bool), np.asarray(w, np.float64), 0.0)
            for k, w in weights.items()}
    n = next(iter(live.values())).shape[0]
    absmax = np.zeros(n)
    for w in live.values():
        if w.size:
            absmax = np.maximum(absmax, np.abs(w).max(axis=1))
    if mode == "per_tensor":
        absmax = np.array([absmax.max() if absmax.size else 0.0])
    scale = np.where(absmax > 0, absmax / qmax, 1.0)
    s = scale.reshape(-1, 1)
    q = {k: np.clip(np.round(w / s), -qmax, qmax).astype(np.int64) for k, w in live.items()}
    return QuantizedWeights(q=q, scale=scale, bits=bits, mode=mode)


def quantize_decay(alpha: float, representation: str, bits: int | None) -> tuple[float, int | None]:
    """Quantised decay factor and its integer code (``dash`` or the fixed-point decrement)."""
    if representation == "bitshift":
        one_minus = max(1.0 - alpha, 1e-300)
        dash = int(np.clip(np.round(math.log2(1.0 / one_minus)), 0, 2 ** bits - 1))
        return 1.0 - 2.0 ** -dash, dash
    if representation == "fixed_point_decay":
        code = int(np.clip(np.round((1.0 - alpha) * 2 ** bits), 0, 2 ** bits))
        return 1.0 - code / 2 ** bits, code
    return alpha, None


def tau_from_decay(alpha: float, dt: float, integration: str) -> float:
    """Invert the decay factor of one step back to a time constant (inf for alpha >= 1)."""
    if integration == "exact":
        return math.inf if alpha >= 1.0 else (-dt / math.log(alpha) if alpha > 0 else 0.0)
    return math.inf if alpha >= 1.0 else dt / (1.0 - alpha)
