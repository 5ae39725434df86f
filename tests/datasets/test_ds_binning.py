import numpy as np
import pytest
import torch

from evrtrl.datasets import (CropTime, DownsampleChannels, MergePolarity, SparseSteps, SpatialPool, audio_events,
                      bin_events, camera_channels, camera_events, collate)
from evrtrl.errors import ConfigError, ShapeError


def test_audio_binning_hand_computed():
    ev = audio_events([0, 999, 1000, 1500, 1500, 4200], [2, 2, 0, 3, 0, 1])
    s = bin_events(ev, dt_us=1000, n_channels=4)
    assert s.T == 5 and s.indptr.tolist() == [0, 1, 3, 3, 3, 4]
    assert s.channels.tolist() == [2, 0, 3, 1] and s.counts.tolist() == [2.0, 2.0, 1.0, 1.0]
    assert s.counts.dtype == np.float32
    dense = s.to_dense()
    expect = np.zeros((5, 4), np.float32)
    expect[0, 2], expect[1, 0], expect[1, 3], expect[4, 1] = 2, 2, 1, 1
    np.testing.assert_array_equal(dense, expect)
    assert torch.equal(s.to_torch(torch.float64), torch.from_numpy(expect).double())
    ch, cnt = s.step(1)
    assert ch.tolist() == [0, 3] and cnt.tolist() == [2, 1]


def test_t0_and_T_drop_out_of_window():
    ev = audio_events([100, 2500, 9000], [0, 1, 1])
    s = bin_events(ev, 1000, n_channels=2, t0_us=500, T=3)
    assert s.T == 3 and s.to_dense().sum() == 1 and s.to_dense()[2, 1] == 1


def test_camera_channel_order_p_y_x():
    ev = camera_events([0, 0, 10], [1, 0, 2], [0, 2, 1], [0, 1, 1])
    ch = camera_channels(ev, width=3, height=4, n_polarities=2)
    assert ch.tolist() == [1, (1 * 4 + 2) * 3 + 0, (1 * 4 + 1) * 3 + 2]
    s = bin_events(ev, 5, sensor_size=(3, 4, 2))
    assert s.n_channels == 24 and s.T == 3
    with pytest.raises(ShapeError):
        camera_channels(ev, width=2, height=4)
    with pytest.raises(ConfigError):
        bin_events(ev, 5)


def test_transforms_hand_computed():
    a = audio_events([0, 1, 2], [699, 5, 4])
    assert DownsampleChannels(5)(a)["unit"].tolist() == [139, 1, 0]
    c = camera_events([0, 5, 9], [33, 4, 3], [0, 7, 8], [1, 0, 1])
    assert MergePolarity()(c)["p"].tolist() == [0, 0, 0]
    pooled = SpatialPool(4)(c)
    assert pooled["x"].tolist() == [8, 1, 0] and pooled["y"].tolist() == [0, 1, 2]
    assert SpatialPool(4).pooled_size(34, 34) == (9, 9)
    cr = CropTime(5, 9, rebase=True)(c)
    assert cr["t"].tolist() == [0] and cr["x"].tolist() == [4]
    assert CropTime(1)(c)["t"].tolist() == [5, 9]
    with pytest.raises(ConfigError):
        CropTime(5, 5)
    with pytest.raises(ConfigError):
        DownsampleChannels(0)
    assert c["x"].tolist() == [33, 4, 3]  # transforms do not modify their input


def test_collate_pads_and_cuts():
    s1 = bin_events(audio_events([0, 2500], [0, 1]), 1000, n_channels=3)  # T = 3
    s2 = bin_events(audio_events([0], [2]), 1000, n_channels=3)  # T = 1
    x = collate([s1, s2])
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    assert x[:, 0].tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 0]]
    assert x[:, 1].tolist() == [[0, 0, 1], [0, 0, 0], [0, 0, 0]]
    assert collate([s1, s2], T=2).shape == (2, 2, 3)
    with pytest.raises(ShapeError):
        collate([s1, bin_events(audio_events([0], [0]), 1000, n_channels=4)])


def test_sparse_steps_validation():
    with pytest.raises(ShapeError):
        SparseSteps(np.array([0, 2]), np.array([0]), np.array([1.0], np.float32), 2, 1000)
    with pytest.raises(ShapeError):
        SparseSteps(np.array([0, 1]), np.array([5]), np.array([1.0], np.float32), 2, 1000)
    with pytest.raises(ConfigError):
        bin_events(audio_events([0], [0]), 0)


def test_binning_matches_dense_reference_random():
    rng = np.random.default_rng(3)
    t = rng.integers(0, 50_000, 2000)
    u = rng.integers(0, 40, 2000)
    s = bin_events(audio_events(t, u), 1000, n_channels=40)
    ref = np.zeros((s.T, 40), np.float32)
    np.add.at(ref, (t // 1000, u), 1)
    np.testing.assert_array_equal(s.to_dense(), ref)
