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

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from evrtrl.errors import ConfigError
from evrtrl.layer import Layer

__all__ = ["HyperParameter", "CellSpec", "register", "cell_spec", "registered_cells"]

_TYPES = (bool, int, float, str)


@dataclass(frozen=True)
class HyperParameter:
    """One stored hyper-parameter of a cell: its constructor keyword, type and allowed values."""

    name: str
    type: type
    choices: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ConfigError(f"hyper-parameter {self.name!r}: type must be one of "
                              f"{[t.__name__ for t in _TYPES]}, got {self.type!r}")

    def coerce(self, value: Any, where: str) -> Any:
        """``value`` (from a file attribute, JSON or a layer) as this type; raises
        :class:`ConfigError` naming ``where`` and the field when it does not fit."""
        if isinstance(value, bytes):
            value = value.decode()
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
    """

    name: str
    cls: type[Layer]
    hyper: tuple[HyperParameter, ...]
    weight_shapes: Callable[[int, int, Mapping[str, Any]], dict[str, tuple[int, int]]]
    state_from_components: Callable[[Layer, Any, tuple[Any, ...]], Any] = _no_state

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
        return tuple(self.weight_shapes(1, 1, config)) + tuple(self.cls.unit_parameters)

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
        new.load_state_dict(layer.state_dict())
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
