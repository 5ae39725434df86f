"""A plain-numpy view of a trained network, and the adapter to the model API.

This is the only module that touches ``models`` (the cells). Everything else in
``neuromorphic`` (quantisation, placement, NIR, bundles) works on
:class:`Network`, a list of :class:`LIFLayer` / :class:`EGRULayer` records
holding numpy arrays. What a cell is (its hyper-parameters, parameter names,
construction, decay coefficients and validation) comes from the cell registry
(:mod:`evrtrl.models.registry`) and the cell modules, never restated here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

import torch

from evrtrl.errors import ConfigError, ShapeError, UnsupportedError
from evrtrl.models import Stack, cell_spec
from evrtrl.models.egru import SPEC as EGRU_SPEC
from evrtrl.models.lif import SPEC as LIF_SPEC

__all__ = ["LIFLayer", "EGRULayer", "Network", "network_from_model", "model_from_network",
           "EGRU_WEIGHTS", "EGRU_UNIT_PARAMETERS", "LIF_HYPER", "LIF_NEURON_FIELDS"]

#: every EGRU parameter, weights first (from the cell registry)
EGRU_WEIGHTS = EGRU_SPEC.parameter_names({})
#: EGRU's per-unit parameters (biases, threshold)
EGRU_UNIT_PARAMETERS = tuple(EGRU_SPEC.cls.unit_parameters)
#: the LIF hyper-parameters a :class:`LIFLayer` carries (the registry's, less ``recurrent``)
LIF_HYPER = tuple(k for k in LIF_SPEC.hyper_names if k != "recurrent")
#: per-neuron LIF fields (each a float or an array (n,)); same names as ``models.LIF``
LIF_NEURON_FIELDS = tuple(h.name for h in LIF_SPEC.hyper if h.per_neuron)


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

    def values_of(self, name: str) -> np.ndarray:
        """Neuron parameter ``name`` as a float64 array (n,) (scalars broadcast)."""
        return np.broadcast_to(np.asarray(getattr(self, name), np.float64), (self.n,)).copy()

    @property
    def homogeneous(self) -> bool:
        """True when every neuron parameter is one value for the whole layer."""
        return all(np.ndim(getattr(self, k)) == 0 for k in self.neuron_fields)

    def weight(self, name: str) -> np.ndarray | None:
        return {"W": self.W, "U": self.U}.get(name)

    def hyper(self) -> dict[str, Any]:
        """The neuron parameters and structure (:data:`LIF_HYPER`) as a dict."""
        return {k: getattr(self, k) for k in LIF_HYPER}

    def config(self) -> dict[str, Any]:
        """The cell's stored hyper-parameters (:meth:`evrtrl.models.CellSpec.config` form)."""
        return {**self.hyper(), "recurrent": self.U is not None}

    def values(self) -> dict[str, np.ndarray]:
        """The values to copy into a built cell: the weights and the trained neuron values."""
        out = {k: self.weight(k) for k in self.weight_names()}
        out.update({k: self.values_of(k) for k in self.trainable})
        return out

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
    """One EGRU layer: its named parameters (:mod:`evrtrl.models.egru`), numpy arrays."""

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
        return tuple(k for k in EGRU_WEIGHTS if k not in EGRU_UNIT_PARAMETERS)

    def config(self) -> dict[str, Any]:
        return {}

    def values(self) -> dict[str, np.ndarray]:
        return dict(self.params)

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
        try:
            spec = cell_spec(layer)
        except ConfigError:
            spec = None
        if spec not in (LIF_SPEC, EGRU_SPEC):
            raise UnsupportedError(f"layer {i} is a {type(layer).__name__}; neuromorphic export knows "
                                   "LIF and EGRU layers")
        config = spec.config(layer)
        masks = {k: _np(v).astype(bool) for k, v in layer.masks.items()}
        values = {k: _np(getattr(layer, k)) for k in spec.parameter_names(config)}
        if spec is LIF_SPEC:
            out.append(LIFLayer(W=values["W"], U=values.get("U"), masks=masks,
                                **{k: config[k] for k in LIF_HYPER}))
        else:
            out.append(EGRULayer(params=values, masks=masks))
    return Network(out)


def model_from_network(net: Network, *, dtype=None, device=None):
    """Build ``models`` cells (a ``Stack`` when there is more than one layer) from a :class:`Network`."""
    dtype = dtype or torch.float32
    cells = []
    for layer in net.layers:
        masks = {k: torch.as_tensor(np.asarray(m, bool), device=device) for k, m in layer.masks.items()} or None
        cell = cell_spec(layer.kind).from_config(layer.d, layer.n, layer.config(), masks=masks,
                                                 dtype=dtype, device=device)
        with torch.no_grad():
            for k, v in layer.values().items():
                getattr(cell, k).copy_(torch.as_tensor(np.asarray(v), dtype=dtype, device=device))
        cells.append(cell)
    return cells[0] if len(cells) == 1 else Stack(*cells)
