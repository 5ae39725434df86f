"""Comparison utilities on hand-made spike trains (known values)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evrtrl.spikecompare import (
    compare_spikes, match_count, spike_times, state_rms, van_rossum, victor_purpura,
)


def raster(T, trains):
    """trains: list over neurons of lists of spike steps -> (T, 1, n)."""
    r = np.zeros((T, 1, len(trains)))
    for k, ts in enumerate(trains):
        r[list(ts), 0, k] = 1
    return r


def test_van_rossum_known_values():
    tau = 5.0
    assert van_rossum([], [], tau) == 0.0
    assert van_rossum([3, 7], [3, 7], tau) == 0.0
    assert van_rossum([4], [], tau) == pytest.approx(math.sqrt(0.5), abs=1e-15)
    for delta in (1, 2, 10):
        assert van_rossum([10], [10 + delta], tau) == pytest.approx(
            math.sqrt(1 - math.exp(-delta / tau)), abs=1e-15)
    # two spikes vs none: D^2 = 1/2 (1 + 1 + 2 e^{-|t1-t2|/tau})
    assert van_rossum([0, 3], [], tau) ** 2 == pytest.approx(0.5 * (2 + 2 * math.exp(-3 / tau)))
    # symmetric
    assert van_rossum([1, 9], [4], 2.0) == pytest.approx(van_rossum([4], [1, 9], 2.0))


def test_van_rossum_matches_numerical_integral():
    a, b, tau, dt = [2.0, 5.5], [3.0], 4.0, 1e-3
    t = np.arange(0, 200, dt)
    f = sum(np.where(t >= s, np.exp(-(t - s) / tau), 0.0) for s in a)
    g = sum(np.where(t >= s, np.exp(-(t - s) / tau), 0.0) for s in b)
    numeric = math.sqrt(np.sum((f - g) ** 2) * dt / tau)
    assert van_rossum(a, b, tau) == pytest.approx(numeric, rel=1e-3)


def test_victor_purpura_known_values():
    assert victor_purpura([], [], 1.0) == 0.0
    assert victor_purpura([1, 2, 3], [], 1.0) == 3.0
    assert victor_purpura([0], [3], 0.5) == 1.5          # shift cheaper than delete+insert
    assert victor_purpura([0], [5], 0.5) == 2.0          # delete+insert cheaper than shift
    assert victor_purpura([0, 10], [1, 10], 0.5) == 0.5
    assert victor_purpura([0], [3], 0.0) == 0.0          # q = 0: only counts matter


def test_match_count_greedy_is_one_to_one_and_maximal():
    assert match_count([5], [5, 6], 1) == 1               # one-to-one
    assert match_count([1, 2], [2, 3], 1) == 2            # greedy pairs 1-2, 2-3 (not 2-2)
    assert match_count([1, 2], [2, 3], 0) == 1
    assert match_count([0, 10, 20], [2, 11, 23], 2) == 2
    assert match_count([], [1], 5) == 0


def test_compare_spikes_fields():
    a = raster(20, [[2, 8, 15], [4], []])
    b = raster(20, [[2, 9, 17], [], [6]])
    c = compare_spikes(a, b)
    assert c.count_diff.tolist() == [[0, 1, -1]]
    assert c.total_a == 4 and c.total_b == 4
    # neuron 0: 3 spikes, matched 1 (s=0), 2 (s=1), 3 (s=2); neurons 1, 2: max(N) = 1 each
    assert c.matched == {0: pytest.approx(1 / 5), 1: pytest.approx(2 / 5), 2: pytest.approx(3 / 5)}
    assert c.first_mismatch == (4, 0, 1)
    assert c.n_mismatch == 6
    assert not c.identical
    assert c.van_rossum[0, 1] == pytest.approx(math.sqrt(0.5))
    w = c.worst()
    assert w["max_abs_count_diff"] == 1 and w["mismatched_steps"] == 6
    assert "matched within 0 steps: 0.2000" in c.summary()
    same = compare_spikes(torch.tensor(a), torch.tensor(a))
    assert same.identical and same.matched == {0: 1.0, 1: 1.0, 2: 1.0}
    assert same.van_rossum.max() == 0.0 and same.victor_purpura.max() == 0.0


def test_compare_empty_and_state_rms():
    z = np.zeros((10, 2, 3))
    c = compare_spikes(z, z, states_a={"v": np.ones((10, 2, 3))},
                       states_b={"v": np.ones((10, 2, 3)) + np.eye(10)[:, :1, None] * 0 + 0.0})
    assert c.matched == {0: 1.0, 1: 1.0, 2: 1.0} and c.state_max_abs["v"] == 0.0
    va = np.zeros((4, 1, 2))
    vb = va.copy()
    vb[2, 0, 1] = 2.0
    rms, mx, arg = state_rms({"v": va}, {"v": vb})
    assert mx["v"] == 2.0 and arg["v"] == (2, 0, 1)
    assert rms["v"] == pytest.approx(math.sqrt(4 / 8))


def test_compare_rejects_bad_input():
    with pytest.raises(ValueError, match="shapes differ"):
        compare_spikes(np.zeros((5, 1, 2)), np.zeros((5, 1, 3)))
    with pytest.raises(ValueError, match="only 0 and 1"):
        compare_spikes(np.full((5, 1, 2), 0.5), np.zeros((5, 1, 2)))


def test_spike_times_layout():
    r = raster(6, [[1, 4], [0]])
    ts = spike_times(r)
    assert [t.tolist() for t in ts[0]] == [[1, 4], [0]]
