"""The training data path stays sparse for the event engine: binned event data reach the
learner as a SparseSequence (no collate densify) and train to the same losses and weights
as the dense path (``sparse=0``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from evrtrl.datasets import audio_events, write_shd
from evrtrl.datasets.offline.saccades import build_saccades
from evrtrl.errors import ConfigError
from evrtrl.events import SparseSequence
from evrtrl.training import TrainConfig, open_data, train
from evrtrl.training.data import learner_batch


@pytest.fixture(scope="module")
def nmnist(tmp_path_factory):
    out = tmp_path_factory.mktemp("saccades")
    build_saccades(out, per_class=1, test_per_class=1, workers=1, progress=False)
    return out


def test_learner_batch_is_sparse_for_the_event_engine_only(nmnist, tmp_path):
    rng = np.random.default_rng(0)
    t = np.sort(rng.integers(0, 400_000, 300))
    write_shd(tmp_path / "shd_train.h5", [audio_events(t, rng.integers(0, 700, 300))] * 3, [0, 1, 2],
              ["a", "b", "c"])
    for spec in (f"nmnist:{nmnist},duration_ms=120,pool=2",
                 f"shd:{tmp_path / 'shd_train.h5'},duration_ms=500,factor=5"):
        data = open_data(spec, dt_us=10_000)
        dense, y = data.batch([2, 0, 1], torch.float64)
        for method in ("event", "dense", "dense-live", "bptt"):
            x, yl = learner_batch(data, [2, 0, 1], torch.float64, method)
            assert torch.equal(yl, y)
            if method == "event":
                assert isinstance(x, SparseSequence) and x.shape == tuple(dense.shape)
                assert x.dtype == torch.float64 and torch.equal(x.to_dense(), dense)
                assert 0 < x.index.numel() < dense.numel()
            else:
                assert isinstance(x, torch.Tensor) and torch.equal(x, dense)
        off = open_data(spec + ",sparse=0", dt_us=10_000)
        assert isinstance(learner_batch(off, [0], torch.float64, "event")[0], torch.Tensor)
    with pytest.raises(ConfigError, match="sparse=2"):
        open_data(f"nmnist:{nmnist},sparse=2", dt_us=10_000)


def _params(res):
    return {**dict(res.model.named_parameters()),
            **{"readout." + k: v for k, v in res.readout.named_parameters()}}


@pytest.mark.parametrize("method", ["event", "bptt"])
def test_sparse_and_dense_paths_train_identically(nmnist, tmp_path, method):
    runs = {}
    for sparse in (1, 0):
        cfg = TrainConfig(data=f"nmnist:{nmnist},duration_ms=80,pool=2,sparse={sparse}", hidden=6,
                          batch=4, epochs=1, lr=0.05, k=3, dtype="float64", method=method,
                          eval_each_epoch=False, theta_init=0.05, pd_width=0.5)
        runs[sparse] = train(cfg, tmp_path / f"{method}{sparse}", progress=False)
    a, b = runs[1], runs[0]
    assert len(a.batches) == 3
    assert [r["loss"] for r in a.batches] == [r["loss"] for r in b.batches]
    pa, pb = _params(a), _params(b)
    assert a.batches[-1]["updates"] > 0 and len({r["loss"] for r in a.batches}) == 3
    for k in pb:
        assert torch.equal(pa[k], pb[k]), k


def test_sparse_path_benchmark_runs(nmnist, tmp_path):
    from evrtrl.benchmarks.sparse_path import main
    res = main(["--data", str(nmnist), "--repeat", "1", "--hidden", "4", "--duration-ms", "50",
                "--out", str(tmp_path / "bench.json")])
    assert res["same_loss"] and res["samples"] == 10 and res["T"] == 5
    assert (tmp_path / "bench.json").is_file()


def test_data_lengths_agree_for_sparse_and_dense_batches():
    """beta per sequence counts the steps that carry data: the same from either input form."""
    from evrtrl.events import SparseSequence
    from evrtrl.training.metrics import data_lengths
    x = torch.zeros(7, 3, 4)
    x[2, 0, 1], x[5, 0, 3], x[0, 2, 0] = 1.0, 2.0, 1.0
    assert data_lengths(x).tolist() == [6, 0, 1]
    assert data_lengths(SparseSequence.from_dense(x)).tolist() == [6, 0, 1]
