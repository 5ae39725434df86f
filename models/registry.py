"""The cell registry: everything the rest of the library knows about a cell, kept beside it.

Each cell module registers one :class:`CellSpec` (``register(CellSpec(...))`` at its end).
The model file and checkpoints (:mod:`evrtrl.models.modelfile`), the NIR/bundle adapter
(:mod:`evrtrl.neuromorphic.netspec`), the training loop's model construction and the
benchmarks read a cell's name, hyper-parameters, parameter names and construction from
here, so a new cell is one new module in ``models/`` (and a test) and nothing else:

>>> import torch
>>> from evrtrl.models import LIF, cell_spec
>>> spec = cell_spec("lif")
>>> layer = LIF(3, 4, tau_mem=0.02, tau_syn=0.005, dt=0.001)
>>> spec.config(layer)["tau_mem"], spec.parameter_names(spec.config(layer))
(0.02, ('W', 'U'))
>>> twin = spec.from_config(3, 4, spec.config(layer))
>>> type(twin).__name__, twin.tau_syn
('LIF', 0.005)

Stored hyper-parameters are the constructor keywords that fix the cell's dynamics (the
LIF time constants, its reset and discretisation); values that only set initial
parameters (``theta_init``, ``weight_scale``) are not stored, since the parameters
themselves are. Every cell takes ``pseudo_derivative``, ``masks``, ``dtype``, ``device``
and ``generator`` keywords besides its hyper-parameters.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from evrtrl.errors import ConfigError
from evrtrl.layer import Layer

__all__ = ["HyperParameter", "CellSpec", "register", "cell_spec", "registered_cells", "REQUIRED"]

_TYPES = (bool, int, float, str, tuple)
#: marks a hyper-parameter without a default (it must be given / stored)
REQUIRED = object()


@dataclass(frozen=True)
class HyperParameter:
    """One stored hyper-parameter of a cell: its constructor keyword, type and allowed values.

    ``per_neuron``: a float or one float per unit (stored as a dataset (n,) in model files,
    coerced to a float when every unit has the same value, else to a float64 array).
    ``tuple``: a tuple of strings (each among ``choices``), stored as a JSON list.
    ``default``: the value when a file does not hold it (an older format); ``None`` as the
    default also makes ``None`` a valid value (an absent option, e.g. a current-free LIF's
    ``tau_syn``).
    """

    name: str
    type: type
    choices: tuple[Any, ...] = ()
    per_neuron: bool = False
    default: Any = REQUIRED

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ConfigError(f"hyper-parameter {self.name!r}: type must be one of "
                              f"{[t.__name__ for t in _TYPES]}, got {self.type!r}")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def coerce(self, value: Any, where: str) -> Any:
        """``value`` (from a file attribute, JSON or a layer) as this type; raises
        :class:`ConfigError` naming ``where`` and the field when it does not fit."""
        if value is None and self.default is None:
            return None
        if isinstance(value, bytes):
            value = value.decode()
        if self.per_neuron:
            return self._coerce_per_neuron(value, where)
        if self.type is tuple:
            return self._coerce_tuple(value, where)
        if hasattr(value, "item") and not isinstance(value, str):  # numpy / torch scalars
            value = value.item()
        try:
            if self.type is bool:
                if not isinstance(value, (bool, int)) or value not in (0, 1):
                    raise ValueError
                out: Any = bool(value)
            elif self.type is str:
                if not isinstance(value, str):
                    raise ValueError
                out = value
            elif self.type is int:
                if isinstance(value, bool) or not float(value).is_integer():
                    raise ValueError
                out = int(value)
            else:
                if isinstance(value, (bool, str)):
                    raise ValueError
                out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: hyper-parameter {self.name!r} must be a "
                              f"{self.type.__name__}, got {value!r}") from None
        if self.choices and out not in self.choices:
            raise ConfigError(f"{where}: hyper-parameter {self.name!r} must be one of "
                              f"{list(self.choices)}, got {out!r}")
        return out

    def _coerce_per_neuron(self, value: Any, where: str) -> Any:
        if hasattr(value, "detach"):
            value = value.detach().cpu()
        try:
            if isinstance(value, (bool, str)):
                raise ValueError
            a = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: hyper-parameter {self.name!r} must be a float or one float "
                              f"per unit, got {value!r}") from None
        if a.ndim > 1:
            raise ConfigError(f"{where}: hyper-parameter {self.name!r} must be a float or one float "
                              f"per unit (1-D), got shape {a.shape}")
        if a.size and (a.ndim == 0 or bool(np.all(a == a.ravel()[0]))):
            return float(a.ravel()[0])
        return a.copy()

    def _coerce_tuple(self, value: Any, where: str) -> tuple[str, ...]:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ConfigError(f"{where}: hyper-parameter {self.name!r} must be a JSON list of "
                                  f"names, got {value!r}") from None
        if hasattr(value, "tolist"):
            value = value.tolist()
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: hyper-parameter {self.name!r} must be a list of names, "
                              f"got {value!r}")
        bad = [v for v in value if self.choices and v not in self.choices]
        if bad:
            raise ConfigError(f"{where}: hyper-parameter {self.name!r}: {bad} are not among "
                              f"{list(self.choices)}")
        return tuple(value)


def _no_state(layer: Layer, weights: Any, components: tuple[Any, ...]) -> Any:
    raise ConfigError(f"{type(layer).__name__}: its CellSpec has no state_from_components")


@dataclass(frozen=True)
class CellSpec:
    """What the library knows about one cell class.

    name
        the class name, stored in model files as the layer ``class`` attribute;
        ``key`` (its lower-case form) is the name in the CLI and in bundles.
    cls
        the :class:`~evrtrl.layer.Layer` subclass.
    hyper
        the stored hyper-parameters (:class:`HyperParameter`), read from a layer by
        attribute and passed back to the constructor by keyword.
    weight_shapes
        ``(input_size, hidden_size, config) -> {weight name: shape}`` of the maskable
        weights (the projections), for :func:`evrtrl.models.random_masks`.
    state_from_components
        ``(layer, weights, components) -> state``: the full state record (events and
        outputs included) from its first ``state_size`` fields, the RTRL state ``s``.
        Used by forward-mode RTRL (:mod:`evrtrl.benchmarks.funcrtrl`) and the Jacobian tests.
    unit_parameters
        ``config -> names`` of the per-unit parameters of a layer with these
        hyper-parameters (default: the class attribute ``unit_parameters``); a cell whose
        trained per-unit values are chosen by a hyper-parameter (LIF's ``trainable``) sets it.
    """

    name: str
    cls: type[Layer]
    hyper: tuple[HyperParameter, ...]
    weight_shapes: Callable[[int, int, Mapping[str, Any]], dict[str, tuple[int, int]]]
    state_from_components: Callable[[Layer, Any, tuple[Any, ...]], Any] = _no_state
    unit_parameters: Callable[[Mapping[str, Any]], tuple[str, ...]] | None = None

    @property
    def key(self) -> str:
        return self.name.lower()

    @property
    def hyper_names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hyper)

    def config(self, layer: Layer) -> dict[str, Any]:
        """The stored hyper-parameters of ``layer`` as plain Python values."""
        return {h.name: h.coerce(getattr(layer, h.name), self.name) for h in self.hyper}

    def check_config(self, config: Mapping[str, Any], where: str | None = None) -> dict[str, Any]:
        """``config`` with every value coerced to its declared type; raises
        :class:`ConfigError` naming an unknown or ill-typed hyper-parameter."""
        where = where or self.name
        unknown = sorted(set(config) - set(self.hyper_names))
        if unknown:
            raise ConfigError(f"{where}: unknown hyper-parameters {unknown} for {self.name}; "
                              f"it has {list(self.hyper_names)}")
        by_name = {h.name: h for h in self.hyper}
        return {k: by_name[k].coerce(v, where) for k, v in config.items()}

    def parameter_names(self, config: Mapping[str, Any]) -> tuple[str, ...]:
        """Names of the parameters of a layer with these hyper-parameters, in order."""
        units = self.unit_parameters(config) if self.unit_parameters else self.cls.unit_parameters
        return tuple(self.weight_shapes(1, 1, config)) + tuple(units)

    def from_config(self, input_size: int, hidden_size: int, config: Mapping[str, Any],
                    **kwargs: Any) -> Layer:
        """A new layer; ``kwargs`` are the common keywords (pseudo_derivative, masks, dtype,
        device, generator) and initialisation options (theta_init, weight_scale, ...)."""
        make: Callable[..., Layer] = self.cls  # a cell's constructor: (input_size, hidden_size, **keywords)
        return make(input_size, hidden_size, **self.check_config(config), **kwargs)

    def rebuild(self, layer: Layer, **changes: Any) -> Layer:
        """A new layer like ``layer`` (same parameters, masks, pseudo-derivative, dtype and
        device) with the hyper-parameters in ``changes`` replaced."""
        new = self.from_config(layer.input_size, layer.hidden_size, {**self.config(layer), **changes},
                               pseudo_derivative=layer.pseudo_derivative, masks=layer.masks,
                               dtype=layer.dtype, device=layer.device)
        # parameters and buffers of the old layer, except the changed (per-unit) values
        missing, unexpected = new.load_state_dict(
            {k: v for k, v in layer.state_dict().items() if k not in changes}, strict=False)
        if unexpected or set(missing) - set(changes):
            raise ConfigError(f"{self.name}.rebuild: the new layer's parameters differ: missing "
                              f"{sorted(set(missing) - set(changes))}, unexpected {sorted(unexpected)}")
        return new


_REGISTRY: dict[str, CellSpec] = {}


def register(spec: CellSpec) -> CellSpec:
    """Add ``spec`` to the registry (by its lower-case key) and return it.

    Registering the same class again replaces its spec; another class under a name that
    is taken raises :class:`ConfigError`."""
    if not (isinstance(spec.cls, type) and issubclass(spec.cls, Layer)):
        raise ConfigError(f"register: {spec.name}: cls must be a subclass of evrtrl.layer.Layer, "
                          f"got {spec.cls!r}")
    old = _REGISTRY.get(spec.key)
    if old is not None and old.cls is not spec.cls and (old.cls.__module__, old.cls.__qualname__) != (
            spec.cls.__module__, spec.cls.__qualname__):
        raise ConfigError(f"register: the cell name {spec.name!r} is taken by "
                          f"{old.cls.__module__}.{old.cls.__qualname__}")
    _REGISTRY[spec.key] = spec
    return spec


def registered_cells() -> tuple[str, ...]:
    """Class names of the registered cells, in registration order."""
    return tuple(s.name for s in _REGISTRY.values())


def cell_spec(what: Any) -> CellSpec:
    """The :class:`CellSpec` of a layer, a layer class, or a cell name (any case)."""
    if isinstance(what, str):
        spec = _REGISTRY.get(what.lower())
        label = repr(what)
    else:
        cls = what if isinstance(what, type) else type(what)
        spec = next((s for s in _REGISTRY.values() if s.cls is cls), None)
        label = f"class {cls.__name__}"
    if spec is None:
        raise ConfigError(f"no registered cell for {label}; registered cells: "
                          f"{list(registered_cells())} (a cell module registers itself with "
                          "evrtrl.models.register(CellSpec(...)))")
    return spec
