"""Optional packages, the extra that installs each, and the one-line error when one is missing.

evrtrl's core needs torch, numpy, h5py and tqdm only. The rest comes with extras
(``pip install 'evrtrl[sim]'``, ``[data]``, ``[test]``, ``[docs]``, ``[all]``), except Norse,
installed without its dependencies (see :data:`INSTALL`). Code that uses an optional package
imports it through :func:`require`, so a missing one is a :class:`MissingExtraError` whose
message says what to install, and the CLI prints that line instead of a traceback.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from evrtrl.errors import MissingExtraError

__all__ = ["INSTALL", "install_hint", "require", "available"]

_SIM, _DATA = "pip install 'evrtrl[sim]'", "pip install 'evrtrl[data]'"

#: top-level module -> the command that installs it
INSTALL: dict[str, str] = {
    "brian2": _SIM, "nir": _SIM, "nirtorch": _SIM,
    "norse": ("pip install --no-deps norse==1.1.0 (its torchvision requirement would replace a CPU "
              "torch by a CUDA one; scripts/setup.sh does this)"),
    "scipy": _DATA, "sklearn": _DATA, "soundfile": _DATA, "matplotlib": _DATA,
    "pytest": "pip install 'evrtrl[test]'", "hypothesis": "pip install 'evrtrl[test]'",
    "mypy": "pip install 'evrtrl[test]'", "pdoc": "pip install 'evrtrl[docs]'",
    "rockpool": "pip install 'evrtrl[vendor]'", "xylosim": "pip install 'evrtrl[vendor]'",
}


def install_hint(module: str) -> str:
    """How to install the package of ``module`` (e.g. ``"brian2"`` or ``"scipy.signal"``)."""
    top = module.split(".")[0]
    return INSTALL.get(top, f"pip install {top}")


def available(module: str) -> bool:
    """Whether ``module`` imports."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module``; if its package is missing, raise :class:`MissingExtraError`
    ``"<purpose> needs <package>, which is not installed: <install command>"``."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise  # the package is there, but something it imports is not: not ours to rename
        raise MissingExtraError(f"{purpose} needs {top}, which is not installed: {install_hint(top)}") from None
