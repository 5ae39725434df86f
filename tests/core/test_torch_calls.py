"""The pure-torch event engine's per-step call budget (issue 9): at most 120 Python-level
torch calls for ``step`` + ``accumulate`` of a one-layer EGRU n = 64, B = 1 (rho 0.2,
beta ~0.1), counted with a TorchFunctionMode. A count is deterministic, unlike a time."""
from __future__ import annotations

import statistics

import torch

import evrtrl
from evrtrl.benchmarks import bench
from evrtrl.stats import CallCounter, torch_calls_per_step

# bench.calibrate("egru", 64, 0.2, 0.1) on the seeded benchmark input
THETA, WIDTH = 0.4, 0.057348952461102366


def _run(T=300):
    model = bench.build_model("egru", 64, 0.2, WIDTH, THETA)
    x = bench.input_sequence("egru", 64, 0.2, T)
    r = bench.loss_signal(64, T)
    return evrtrl.make_engine(model, 1, "event"), list(x), list(r)


def test_event_step_within_120_torch_calls():
    eng, xs, rs = _run()
    counts = torch_calls_per_step(eng, xs, rs, warm=100, reduce=list)
    beta = sum(eng.stats.beta[100:]) / len(eng.stats.beta[100:])
    assert 0.05 < beta < 0.2, beta  # the configuration is the benchmark's
    assert statistics.median(counts) <= 120, statistics.median(counts)
    assert statistics.mean(counts) <= 120, statistics.mean(counts)


def test_counter_counts_and_can_fail():
    """The counter sees every call: a dense step of the same model costs far more."""
    with CallCounter() as c:
        torch.zeros(3).add_(1).sum()
    assert c.calls == 3 and c.by_name["sum"] == 1
    eng, xs, rs = _run(T=3)
    dense = evrtrl.make_engine(eng.refs[0].layer, 1, "dense")
    assert torch_calls_per_step(dense, xs, rs) > 120
