"""Exceptions raised by evrtrl.

Every error names what was wrong (the tensor, field, file or parameter) and what
was expected, so that a user can fix the call without reading the source.
All of them derive from :class:`EvrtrlError`; those about bad values also derive
from :class:`ValueError` so that generic handlers keep working.
"""
from __future__ import annotations


class EvrtrlError(Exception):
    """Base class of every error evrtrl raises on purpose."""


class ShapeError(EvrtrlError, ValueError):
    """A tensor or array has the wrong rank or size."""


class NonFiniteError(EvrtrlError, ValueError):
    """An input or a parameter holds NaN or infinity."""


class MaskError(EvrtrlError, ValueError):
    """A parameter mask has the wrong shape, or holds values other than 0 and 1."""


class UnknownMethodError(EvrtrlError, ValueError):
    """A method, engine or option name is not one of the supported names."""


class ConfigError(EvrtrlError, ValueError):
    """A model or run configuration is inconsistent (bad time constant, size, ...)."""


class FormatError(EvrtrlError, ValueError):
    """A file is truncated, corrupt or not in the expected format."""


class UnsupportedError(EvrtrlError, NotImplementedError):
    """The request is valid but cannot be expressed (e.g. a node type on export)."""


class MissingExtraError(EvrtrlError, ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


class MemoryBudgetError(EvrtrlError, MemoryError):
    """A planned allocation (the influence matrix) exceeds the memory the machine has."""


class RunError(EvrtrlError, RuntimeError):
    """A training run cannot start or go on: its directory is in use or holds another run, a
    checkpoint belongs to another run, or another process of a distributed run failed."""


class PeerFailedError(RunError):
    """Another process of a distributed run failed, left or stopped answering; this one stops too."""
