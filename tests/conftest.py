"""Shared pytest configuration: the `slow` marker and the shared-data locator."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # small tensors: one thread is fastest and avoids OpenMP contention on shared machines
    import torch

    torch.set_num_threads(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="also run tests marked slow (cross-simulator checks); CI sets this",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow") or os.environ.get("EVRTRL_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: run with --run-slow (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _shared_data_dir() -> Path | None:
    env = os.environ.get("EVRTRL_SHARED_DATA")
    candidates = [Path(env)] if env else []
    root = Path(__file__).resolve().parents[1]
    candidates += [root.parent / "shared" / "data", root / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data`` (real recordings); skips where it is absent."""
    d = _shared_data_dir()
    if d is None:
        pytest.skip("../shared/data is absent (set EVRTRL_SHARED_DATA to its path)")
    return d
