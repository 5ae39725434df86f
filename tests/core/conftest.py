"""Every core test runs under both paths of the event engine: pure torch and compiled.

The ``kernel_path`` parameter sets ``$EVRTRL_KERNEL`` for the test (:mod:`evrtrl.kernels`):
``torch`` forces the pure-torch path, ``compiled`` forces the compiled kernels (an engine
that cannot use them raises, so a broken build fails here instead of falling back). The
compiled variant is skipped only where no C++ compiler exists. A test module can narrow
the paths with a module-level ``KERNEL_PATHS`` tuple.
"""
from __future__ import annotations

import pytest

from evrtrl.kernels import KERNEL_ENV, compiler

PATHS = ("torch", "compiled")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kernel_path" in metafunc.fixturenames:
        metafunc.parametrize("kernel_path", getattr(metafunc.module, "KERNEL_PATHS", PATHS),
                             indirect=True)


@pytest.fixture(autouse=True)
def kernel_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    path = request.param
    if path == "compiled" and compiler() is None:
        pytest.skip("no C++ compiler: the compiled kernels cannot be built here")
    monkeypatch.setenv(KERNEL_ENV, path)
    return path
