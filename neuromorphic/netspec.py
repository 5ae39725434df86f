"""A plain-numpy view of a trained network, and the adapter to the model API.

This is the only module that touches ``models`` (the cells). Everything else in
``neuromorphic`` (quantisation, placement, NIR, bundles) works on
:class:`Network`, a list of :class:`LIFLayer` / :class:`EGRULayer` records
holding numpy arrays. The model reading and building functions import
``models`` lazily.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evrtrl.errors import ConfigError, ShapeError, UnsupportedError

__all__ = ["LIFLayer", "EGRULayer", "Network", "network_from_model", "model_from_network",
           "EGRU_WEIGHTS", "LIF_NEURON_FIELDS"]

EGRU_WEIGHTS = ("W_u", "W_r", "W_z", "U_u", "U_r", "U_z", "b_u", "b_r", "b_z", "theta")


#: per-neuron LIF fields (each a float or an array (n,)); same names as ``models.LIF``
LIF_NEURON_FIELDS = ("tau_mem", "tau_syn", "v_th", "v_leak", "v_reset", "bias")


@dataclass
class LIFLayer:
    """One LIF layer: ``W`` (n x d), optional ``U`` (n x n), masks, neuron parameters (seconds).

    Each neuron parameter is a float (the same for every neuron) or an array of shape (n,);
    arrays whose values are all equal are stored as floats. ``synapse=False`` is the
    current-free LIF (the nir.LIF node; ``tau_syn`` is None). ``trainable`` names the neuron
    parameters the model learns (kept through files; see ``models.LIF``).
    """

    W: np.ndarray
    U: np.ndarray | None
    tau_mem: Any
    tau_syn: Any
    dt: float
    v_th: Any = 1.0
    v_leak: Any = 0.0
    v_reset: Any = 0.0
    reset: str = "zero"
    integration: str = "exact"
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    kind: str = "lif"
    bias: Any = 0.0
    synapse: bool = True
    trainable: tuple = ()

    def __post_init__(self) -> None:
        self.W = np.asarray(self.W)
        if self.W.ndim != 2:
            raise ShapeError(f"LIF weight 'W' must be 2-D (n x d), got shape {self.W.shape}")
        n = self.W.shape[0]
        if self.U is not None:
            self.U = np.asarray(self.U)
            if self.U.shape != (n, n):
                raise ShapeError(f"LIF weight 'U' must have shape {(n, n)}, got {self.U.shape}")
        self.synapse = bool(self.synapse)
        if not self.synapse and self.tau_syn is not None:
            raise ConfigError("a current-free LIF layer (synapse=False) has no tau_syn; got "
                              f"{self.tau_syn!r}")
        for name in LIF_NEURON_FIELDS:
            if name == "tau_syn" and not self.synapse:
                continue
            setattr(self, name, _neuron_field(name, getattr(self, name), n))
        if not (np.isfinite(self.dt) and self.dt > 0):
            raise ConfigError(f"LIF parameter 'dt' must be a positive finite number of seconds, got {self.dt!r}")
        self.dt = float(self.dt)
        if self.reset not in ("zero", "subtract"):
            raise ConfigError(f"LIF reset must be 'zero' or 'subtract', got {self.reset!r}")
        if self.integration not in ("exact", "euler"):
            raise ConfigError(f"LIF integration must be 'exact' or 'euler', got {self.integration!r}")
        self.trainable = tuple(str(t) for t in self.trainable)
        bad = [t for t in self.trainable if t not in self.neuron_fields]
        if bad:
            raise ConfigError(f"LIF trainable names {bad} are not neuron parameters of this layer "
                              f"({list(self.neuron_fields)})")
        for k, m in self.masks.items():
            w = self.weight(k)
            if w is None or np.shape(m) != w.shape:
                raise ShapeError(f"mask {k!r} has shape {np.shape(m)}, expected that of weight {k!r}")

    @property
    def n(self) -> int:
        return self.W.shape[0]

    @property
    def d(self) -> int:
        return self.W.shape[1]

    @property
    def neuron_fields(self) -> tuple[str, ...]:
        """The per-neuron parameters of this layer (no ``tau_syn`` when current-free)."""
        return tuple(k for k in LIF_NEURON_FIELDS if self.synapse or k != "tau_syn")

    def values(self, name: str) -> np.ndarray:
        """Neuron parameter ``name`` as a float64 array (n,) (scalars broadcast)."""
        return np.broadcast_to(np.asarray(getattr(self, name), np.float64), (self.n,)).copy()

    @property
    def homogeneous(self) -> bool:
        """True when every neuron parameter is one value for the whole layer."""
        return all(np.ndim(getattr(self, k)) == 0 for k in self.neuron_fields)

    def weight(self, name: str) -> np.ndarray | None:
        return {"W": self.W, "U": self.U}.get(name)

    def weight_names(self) -> tuple[str, ...]:
        return ("W", "U") if self.U is not None else ("W",)

    def mask(self, name: str) -> np.ndarray:
        w = self.weight(name)
        m = self.masks.get(name)
        return np.ones(w.shape, bool) if m is None else np.asarray(m, bool)

    def decay_factors(self, tau_mem: Any = None, tau_syn: Any = None) -> tuple[Any, Any]:
        """Per-step decay (membrane, synapse) for this layer's discretisation (floats, or arrays
        (n,) for per-neuron time constants; the synapse decay is None when current-free)."""
        tm = np.asarray(self.tau_mem if tau_mem is None else tau_mem, np.float64)
        ts = None if not self.synapse else np.asarray(self.tau_syn if tau_syn is None else tau_syn, np.float64)
        out = lambda v: float(v) if np.ndim(v) == 0 else v  # noqa: E731
        if self.integration == "exact":
            return out(np.exp(-self.dt / tm)), None if ts is None else out(np.exp(-self.dt / ts))
        return out(1.0 - self.dt / tm), None if ts is None else out(1.0 - self.dt / ts)


def _neuron_field(name: str, value: Any, n: int) -> Any:
    """A validated per-neuron value: a float, or a float64 array (n,) when the neurons differ."""
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"LIF parameter {name!r} must be a number or an array of {n} numbers, got {value!r}") from e
    if a.ndim and a.shape not in ((n,), (1,)):
        raise ShapeError(f"LIF parameter {name!r} has shape {a.shape}, expected () or ({n},)")
    if not np.all(np.isfinite(a)):
        raise ConfigError(f"LIF parameter {name!r} must be finite, got {value!r}")
    if name.startswith("tau") and not np.all(a > 0):
        raise ConfigError(f"LIF parameter {name!r} must be a positive number of seconds, got min {a.min()!r}")
    if a.ndim == 0 or np.all(a == a.ravel()[0]):
        return float(a.ravel()[0])
    return a.copy()


@dataclass
class EGRULayer:
    """One EGRU layer: the named parameters of DESIGN.md section 3, numpy arrays."""

    params: dict[str, np.ndarray]
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    kind: str = "egru"

    def __post_init__(self) -> None:
        missing = [k for k in EGRU_WEIGHTS if k not in self.params]
        if missing:
            raise ConfigError(f"EGRU layer lacks parameters {missing}")
        n, d = np.shape(self.params["W_u"])
        for k in EGRU_WEIGHTS:
            want = (n, d) if k.startswith("W") else (n, n) if k.startswith("U") else (n,)
            if np.shape(self.params[k]) != want:
                raise ShapeError(f"EGRU parameter {k!r} has shape {np.shape(self.params[k])}, expected {want}")

    @property
    def n(self) -> int:
        return np.shape(self.params["W_u"])[0]

    @property
    def d(self) -> int:
        return np.shape(self.params["W_u"])[1]

    def weight(self, name: str) -> np.ndarray | None:
        return self.params.get(name)

    def weight_names(self) -> tuple[str, ...]:
        return tuple(k for k in EGRU_WEIGHTS if k[0] in "WU")

    def mask(self, name: str) -> np.ndarray:
        m = self.masks.get(name)
        return np.ones(np.shape(self.params[name]), bool) if m is None else np.asarray(m, bool)


@dataclass
class Network:
    layers: list

    def __post_init__(self) -> None:
        if not self.layers:
            raise ConfigError("a network needs at least one layer")
        for i in range(1, len(self.layers)):
            if self.layers[i].d != self.layers[i - 1].n:
                raise ShapeError(
                    f"layer {i} takes {self.layers[i].d} inputs but layer {i - 1} has {self.layers[i - 1].n} units"
                )

    @property
    def input_size(self) -> int:
        return self.layers[0].d

    @property
    def output_size(self) -> int:
        return self.layers[-1].n


# --------------------------------------------------------------------------- model adapter

def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _layers_of(model) -> list:
    layers = getattr(model, "layers", None)
    return list(layers) if layers is not None else [model]


def network_from_model(model) -> Network:
    """Read a ``models`` cell or ``Stack`` into a :class:`Network` (numpy copies)."""
    if isinstance(model, Network):
        return model
    out = []
    for i, layer in enumerate(_layers_of(model)):
        cls = type(layer).__name__
        masks = {k: _np(v).astype(bool) for k, v in (getattr(layer, "masks", None) or {}).items()}
        if cls == "LIF" or hasattr(layer, "tau_mem"):
            U = getattr(layer, "U", None)
            vals = {k: v.numpy() for k, v in layer.neuron_parameters().items()}
            out.append(LIFLayer(
                W=_np(layer.W), U=None if U is None else _np(U), tau_syn=vals.pop("tau_syn", None),
                dt=float(layer.dt), reset=str(layer.reset), integration=str(layer.integration),
                masks=masks, synapse=bool(layer.synapse), trainable=tuple(layer.trainable), **vals))
        elif cls == "EGRU" or hasattr(layer, "theta"):
            out.append(EGRULayer(params={k: _np(getattr(layer, k)) for k in EGRU_WEIGHTS}, masks=masks))
        else:
            raise UnsupportedError(f"layer {i} is a {cls}; neuromorphic export knows LIF and EGRU layers")
    return Network(out)


def model_from_network(net: Network, *, dtype=None, device=None):
    """Build ``models`` cells (a ``Stack`` when there is more than one layer) from a :class:`Network`."""
    import torch
    from evrtrl.models import EGRU, LIF, Stack

    dtype = dtype or torch.float32
    cells = []
    for layer in net.layers:
        masks = {k: torch.as_tensor(np.asarray(m, bool), device=device) for k, m in layer.masks.items()} or None
        if layer.kind == "lif":
            cell = LIF(layer.d, layer.n, dt=layer.dt, reset=layer.reset, integration=layer.integration,
                       recurrent=layer.U is not None, masks=masks, synapse=layer.synapse,
                       trainable=layer.trainable, dtype=dtype, device=device,
                       **{k: getattr(layer, k) for k in layer.neuron_fields})
            names = layer.weight_names()
            values = {k: layer.weight(k) for k in names}
        else:
            cell = EGRU(layer.d, layer.n, masks=masks, dtype=dtype, device=device)
            values = layer.params
        with torch.no_grad():
            for k, v in values.items():
                getattr(cell, k).copy_(torch.as_tensor(np.asarray(v), dtype=dtype, device=device))
        cells.append(cell)
    return cells[0] if len(cells) == 1 else Stack(*cells)
