"""Hardware profiles: the limits of a neuromorphic chip, as data.

A profile is a JSON file (one per chip) loaded into the frozen dataclass
:class:`HardwareProfile`, validated in ``__post_init__``. The built-in profiles
live in ``neuromorphic/profile_data/``. Users add their own without touching code:

* pass a file path to :func:`load_profile` (``load_profile("my_chip.json")``), or
* put ``*.json`` files in one or more directories listed in the environment
  variable ``EVRTRL_PROFILE_PATH`` (separated by ``os.pathsep``); they are then
  found by name and listed by :func:`list_profiles` (a user file with the same
  name as a built-in one takes precedence).

Every number carries its source in ``sources[field]``; a field whose number
is not published is ``null`` in the file (``None`` here) and the mapper then
does not check it. See ``docs/neuromorphic.md`` for the table.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from evrtrl.errors import ConfigError, FormatError

__all__ = ["HardwareProfile", "TimeConstantRepr", "load_profile", "list_profiles", "PROFILE_PATH_ENV", "UNVERIFIED"]

PROFILE_PATH_ENV = "EVRTRL_PROFILE_PATH"
_BUILTIN_DIR = Path(__file__).resolve().parent / "profile_data"

#: neuron model names a profile may list
NEURON_MODELS = {"lif_cuba", "if", "adex", "truenorth_lif", "programmable"}
#: how a chip represents a decay time constant
TAU_REPRESENTATIONS = {"float", "fixed_point_decay", "bitshift", "analog", "linear_leak", "none"}

_INT_FIELDS = (
    "cores_per_chip", "neurons_per_core", "neurons_per_chip", "synapses_per_core",
    "synapse_memory_bits_per_core", "synapses_per_chip", "fan_in_max", "fan_out_max",
    "weight_bits", "state_bits", "graded_spike_bits", "input_channels", "output_channels",
)
#: optional rule fields (default null: not checked); integers unless noted
_RULE_INT_FIELDS = ("min_neuron_layers", "max_input_connected_neurons", "max_output_connected_neurons",
                    "layers_per_core", "threshold_bits", "max_weight_shift")
#: reset modes a neuron may have
RESET_MODES = {"zero", "subtract"}
#: register models with an integer chip simulation (``registers.py``, ``chipsim.py``)
REGISTER_FORMATS = {"xylo", "loihi"}
#: numeric fields that must carry a source when they are set
_SOURCED_FIELDS = _INT_FIELDS + _RULE_INT_FIELDS + ("time_constant", "reset_modes", "decay_codes")
_OPTIONAL_FIELDS = _RULE_INT_FIELDS + ("reset_modes", "decay_codes", "register_format", "threshold_signed")
#: prefix of a source string whose number could not be checked against a retrieved source
UNVERIFIED = "UNVERIFIED:"
_CITATION = re.compile(r"https?://|doi:10\.|arXiv:\d")


@dataclass(frozen=True)
class TimeConstantRepr:
    """How the chip stores a decay: ``representation`` in TAU_REPRESENTATIONS, ``bits`` or None."""

    representation: str
    bits: int | None = None

    def __post_init__(self) -> None:
        if self.representation not in TAU_REPRESENTATIONS:
            raise ConfigError(
                f"time_constant.representation is {self.representation!r}; expected one of "
                f"{sorted(TAU_REPRESENTATIONS)}"
            )
        if self.bits is not None and (not isinstance(self.bits, int) or self.bits <= 0):
            raise ConfigError(f"time_constant.bits must be a positive int or null, got {self.bits!r}")
        if self.representation in ("bitshift", "fixed_point_decay") and self.bits is None:
            raise ConfigError(f"time_constant.bits is required for representation {self.representation!r}")


@dataclass(frozen=True)
class HardwareProfile:
    """Limits of one chip. ``None`` means "not published / not a fixed limit" (not checked)."""

    name: str
    display_name: str
    vendor: str
    technology: str
    cores_per_chip: int | None
    neurons_per_core: int | None
    neurons_per_chip: int | None
    synapses_per_core: int | None
    synapse_memory_bits_per_core: int | None
    synapses_per_chip: int | None
    fan_in_max: int | None
    fan_out_max: int | None
    weight_bits: int | None
    weight_signed: bool
    state_bits: int | None
    time_constant: TimeConstantRepr
    neuron_models: tuple[str, ...]
    programmable_neurons: bool
    recurrence: bool
    recurrent_outputs: bool
    graded_spikes: bool
    graded_spike_bits: int | None
    input_channels: int | None
    output_channels: int | None
    sources: Mapping[str, str]
    notes: tuple[str, ...] = ()
    #: reset modes the chip's neuron implements (None: not checked)
    reset_modes: tuple[str, ...] | None = None
    #: fewest neuron layers a network must have (Xylo: hidden + output)
    min_neuron_layers: int | None = None
    #: hidden neurons that may receive network input / drive output neurons
    max_input_connected_neurons: int | None = None
    max_output_connected_neurons: int | None = None
    #: network layers one core may hold (Speck: 1)
    layers_per_core: int | None = None
    #: width of the threshold register (chip units; see ``registers.py``) and its signedness
    threshold_bits: int | None = None
    threshold_signed: bool = True
    #: representable decay codes ``{"mem": [lo, hi], "syn": [lo, hi]}`` (inclusive)
    decay_codes: Mapping[str, tuple[int, int]] | None = None
    #: register model with an integer simulation: "xylo", "loihi" or None
    register_format: str | None = None
    #: largest weight left-shift (Xylo ``weight_shift_*``)
    max_weight_shift: int | None = None
    path: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError(f"profile name must be an identifier-like string, got {self.name!r}")
        where = f"profile {self.name!r}"
        for f in _INT_FIELDS:
            v = getattr(self, f)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ConfigError(f"{where}: field {f!r} must be a positive integer or null, got {v!r}")
        for f in _RULE_INT_FIELDS:
            v = getattr(self, f)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ConfigError(f"{where}: field {f!r} must be a non-negative integer or null, got {v!r}")
        if self.reset_modes is not None and (not self.reset_modes or set(self.reset_modes) - RESET_MODES):
            raise ConfigError(f"{where}: field 'reset_modes' is {self.reset_modes!r}; expected a non-empty subset of "
                              f"{sorted(RESET_MODES)} or null")
        if self.register_format is not None and self.register_format not in REGISTER_FORMATS:
            raise ConfigError(f"{where}: field 'register_format' is {self.register_format!r}; expected one of "
                              f"{sorted(REGISTER_FORMATS)} or null")
        if self.decay_codes is not None:
            for k in ("mem", "syn"):
                r = self.decay_codes.get(k)
                if (r is None or len(r) != 2 or not all(isinstance(c, int) and not isinstance(c, bool) for c in r)
                        or r[0] > r[1]):
                    raise ConfigError(f"{where}: decay_codes[{k!r}] must be [lo, hi] integers with lo <= hi, got {r!r}")
        for f in ("weight_signed", "programmable_neurons", "recurrence", "recurrent_outputs", "graded_spikes",
                  "threshold_signed"):
            if not isinstance(getattr(self, f), bool):
                raise ConfigError(f"{where}: field {f!r} must be true or false, got {getattr(self, f)!r}")
        if not isinstance(self.time_constant, TimeConstantRepr):
            raise ConfigError(f"{where}: field 'time_constant' must be a TimeConstantRepr")
        bad = set(self.neuron_models) - NEURON_MODELS
        if not self.neuron_models or bad:
            raise ConfigError(
                f"{where}: field 'neuron_models' holds {sorted(bad) or 'nothing'}; expected a non-empty "
                f"subset of {sorted(NEURON_MODELS)}"
            )
        if self.programmable_neurons != ("programmable" in self.neuron_models):
            raise ConfigError(f"{where}: programmable_neurons must be true exactly when 'programmable' is in neuron_models")
        if self.recurrent_outputs and not self.recurrence:
            raise ConfigError(f"{where}: recurrent_outputs is true but recurrence is false")
        if self.graded_spikes != (self.graded_spike_bits is not None):
            raise ConfigError(f"{where}: graded_spike_bits must be set exactly when graded_spikes is true")
        if self.weight_bits is not None and self.weight_signed and self.weight_bits < 2:
            raise ConfigError(f"{where}: a signed weight needs at least 2 bits, got weight_bits={self.weight_bits}")
        if (self.neurons_per_core and self.neurons_per_chip and self.cores_per_chip
                and self.neurons_per_chip > self.neurons_per_core * self.cores_per_chip):
            raise ConfigError(
                f"{where}: neurons_per_chip={self.neurons_per_chip} exceeds cores_per_chip x "
                f"neurons_per_core = {self.cores_per_chip * self.neurons_per_core}"
            )
        missing = [f for f in _SOURCED_FIELDS if getattr(self, f) is not None and not self.sources.get(f)]
        if missing:
            raise ConfigError(f"{where}: fields {missing} have values but no entry in 'sources'")
        if any(not isinstance(v, str) or not v.strip() for v in self.sources.values()):
            raise ConfigError(f"{where}: every entry of 'sources' must be a non-empty citation string")

    def source_status(self) -> dict[str, str]:
        """``{field: "verified" | "unverified" | "uncited"}`` for every non-null sourced field.

        ``verified``: the source string cites a retrieved document (URL, DOI or
        arXiv id) and is not marked; ``unverified``: it starts with ``UNVERIFIED:``
        (kept as the best available number, with the reason); ``uncited``: neither
        (a test forbids this for the built-in profiles).
        """
        out = {}
        for f in _SOURCED_FIELDS:
            if getattr(self, f) is None and not (f == "time_constant"):
                continue
            src = self.sources.get(f, "")
            if src.startswith(UNVERIFIED):
                out[f] = "unverified"
            elif _CITATION.search(src):
                out[f] = "verified"
            else:
                out[f] = "uncited"
        return out

    @property
    def n_cores(self) -> int:
        return self.cores_per_chip or 1

    def supports(self, model: str) -> bool:
        return model in self.neuron_models or self.programmable_neurons

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "") -> "HardwareProfile":
        names = {f.name for f in fields(cls)} - {"path"}
        unknown = set(d) - names
        if unknown:
            raise FormatError(f"profile {path or d.get('name')!r}: unknown fields {sorted(unknown)}")
        absent = {f.name for f in fields(cls) if f.name not in ("notes", "path") + _OPTIONAL_FIELDS} - set(d)
        if absent:
            raise FormatError(f"profile {path or d.get('name')!r}: missing fields {sorted(absent)}")
        kw = dict(d)
        tc = kw["time_constant"]
        if not isinstance(tc, Mapping) or "representation" not in tc:
            raise FormatError(f"profile {path!r}: field 'time_constant' must be an object with 'representation'")
        kw["time_constant"] = TimeConstantRepr(tc["representation"], tc.get("bits"))
        kw["neuron_models"] = tuple(kw["neuron_models"])
        kw["notes"] = tuple(kw.get("notes", ()))
        if kw.get("reset_modes") is not None:
            kw["reset_modes"] = tuple(kw["reset_modes"])
        if kw.get("decay_codes") is not None:
            if not isinstance(kw["decay_codes"], Mapping):
                raise FormatError(f"profile {path!r}: field 'decay_codes' must be an object or null")
            kw["decay_codes"] = {k: tuple(v) for k, v in kw["decay_codes"].items()}
        if not isinstance(kw["sources"], Mapping):
            raise FormatError(f"profile {path!r}: field 'sources' must be an object")
        kw["sources"] = dict(kw["sources"])
        return cls(**kw, path=str(path))

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "path"}
        d["time_constant"] = {"representation": self.time_constant.representation, "bits": self.time_constant.bits}
        d["neuron_models"] = list(self.neuron_models)
        d["notes"] = list(self.notes)
        d["sources"] = dict(self.sources)
        if self.reset_modes is not None:
            d["reset_modes"] = list(self.reset_modes)
        if self.decay_codes is not None:
            d["decay_codes"] = {k: list(v) for k, v in self.decay_codes.items()}
        return d


def _search_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get(PROFILE_PATH_ENV, "").split(os.pathsep) if p]
    return dirs + [_BUILTIN_DIR]


def _read(path: Path) -> HardwareProfile:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise FormatError(f"profile file {str(path)!r} cannot be read as JSON: {e}") from e
    if not isinstance(d, dict):
        raise FormatError(f"profile file {str(path)!r} must hold one JSON object")
    return HardwareProfile.from_dict(d, path=str(path))


def list_profiles() -> list[str]:
    """Names of all profiles found (built-in plus ``$EVRTRL_PROFILE_PATH``), sorted."""
    names = set()
    for d in _search_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.json"))
    return sorted(names)


def load_profile(name_or_path: str | os.PathLike | HardwareProfile) -> HardwareProfile:
    """Load a profile by name (``"loihi2"``) or from a JSON file path."""
    if isinstance(name_or_path, HardwareProfile):
        return name_or_path
    s = str(name_or_path)
    p = Path(s)
    if s.endswith(".json") or p.is_file():
        if not p.is_file():
            raise ConfigError(f"profile file {s!r} does not exist")
        return _read(p)
    for d in _search_dirs():
        cand = d / f"{s}.json"
        if cand.is_file():
            prof = _read(cand)
            if prof.name != s:
                raise FormatError(f"profile file {str(cand)!r} declares name {prof.name!r}, expected {s!r}")
            return prof
    raise ConfigError(f"unknown hardware profile {s!r}; known: {list_profiles()} (or pass a .json path)")
