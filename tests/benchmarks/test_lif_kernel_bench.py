"""Smoke test of ``evrtrl.benchmarks.lif_kernel`` (no timing assertions)."""
from __future__ import annotations

import json

import pytest

from evrtrl.benchmarks import lif_kernel
from evrtrl.kernels import compiler


@pytest.mark.skipif(compiler() is None, reason="no C++ compiler: the compiled kernels cannot be built here")
def test_record_has_every_configuration_and_engine(monkeypatch):
    monkeypatch.setenv("EVRTRL_KERNEL", "auto")
    rec = lif_kernel.run(T=30, rounds=1, warm=5, width=0.5)  # asserts inside that each path ran
    json.loads(json.dumps(rec))
    configs = ("uniform", "per-neuron", "current-free per-neuron")
    assert tuple(rec["ms_per_step"]) == configs
    for c in configs:
        assert set(rec["ms_per_step"][c]) == set(lif_kernel.ENGINES)
        assert all(v > 0 for v in rec["ms_per_step"][c].values())
    table = lif_kernel.markdown(rec)
    assert all(f"| {c} |" in table for c in configs)
    assert lif_kernel.per_neuron_model(8, 0.5, 0.5, synapse=False).unit_parameters == (
        "tau_mem", "v_th", "v_leak", "v_reset", "bias")
