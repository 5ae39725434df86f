"""Activity-sparse training: beta per sequence without padding, per layer and epoch; the
regulariser's knobs in TrainConfig and `evrtrl train`; the regulariser lowers activity."""
from __future__ import annotations

import json

import pytest
import torch

from evrtrl.errors import ConfigError
from evrtrl.training import TrainConfig, train
from evrtrl.training.cli import main as cli_main
from evrtrl.training.data import TensorData
from evrtrl.training.loop import SPARSE_DEFAULTS
from evrtrl.training.metrics import data_lengths, sequence_beta


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_data_lengths_ignore_trailing_silence():
    x = torch.zeros(6, 3, 2)
    x[0, 0, 1] = 1.0
    x[3, 0, 0] = 2.0  # sequence 0: data up to step 3
    x[5, 1, 1] = 1.0  # sequence 1: the whole length; sequence 2: empty
    assert data_lengths(x).tolist() == [4, 6, 0]


def test_sequence_beta_counts_only_steps_with_data():
    # 2 layers of 4 and 2 units, 3 steps, 2 sequences
    active = torch.tensor([[[4, 2], [2, 0]],
                           [[2, 2], [0, 2]],
                           [[0, 4], [2, 2]]])  # (T, L, B)
    per_layer, overall = sequence_beta(active, torch.tensor([2, 3]), [4, 2])
    # sequence 0 sees steps 0, 1 only; the padded step 2 (4 active units) is not counted
    assert per_layer[:, 0].tolist() == pytest.approx([(4 + 2) / 4 / 2, (2 + 0) / 2 / 2])
    assert per_layer[:, 1].tolist() == pytest.approx([(2 + 2 + 4) / 4 / 3, (0 + 2 + 2) / 2 / 3])
    assert overall.tolist() == pytest.approx([(4 + 2 + 2 + 0) / 6 / 2, (2 + 2 + 4 + 0 + 2 + 2) / 6 / 3])


def _padded_spikes(n=48, T=14, seed=0):
    """Spike patterns whose second half is silent padding for half the samples."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    rate = torch.where(y[:, None, None] == 0, torch.tensor([0.5, 0.05, 0.3]),
                       torch.tensor([0.05, 0.5, 0.3]))
    x = (torch.rand(n, T, 3, generator=g) < rate).double()
    x[::2, T // 2:] = 0.0
    return TensorData(x, y, 2)


def _cfg(**kw):
    base = dict(data="synthetic:spikes", model="egru", hidden=8, layers=2, batch=8, epochs=2,
                lr=0.02, dtype="float64", seed=0, log=("json",))
    base.update(kw)
    return TrainConfig(**base)


def test_train_logs_beta_per_layer_and_epoch_and_the_regulariser_lowers_it(tmp_path):
    data, test = _padded_spikes(), _padded_spikes(16, seed=1)
    runs = {}
    for lam in (0.0, 1.0):
        res = train(_cfg(activity=lam, activity_warmup=0.0, pd_width=0.2, theta_init=0.3),
                    tmp_path / f"l{lam}",
                    progress=False, train_data=data, test_data=test)
        runs[lam] = res
        for rec in res.batches:
            assert 0 < rec["beta"] <= 1 and 0 < rec["beta_all_steps"] <= 1
            for key in ("beta_l0", "beta_l1"):
                assert 0 <= rec[key] <= 1
            assert (rec["reg_loss"] == 0) == (lam == 0) or rec["batch"] > 0  # silence: 0
        for rec in res.epochs:
            for key in ("beta", "beta_l0", "beta_l1", "test_beta", "test_beta_l0",
                        "test_beta_l1", "train_s"):
                assert key in rec, key
    assert runs[1.0].batches[0]["reg_loss"] > 0
    assert runs[1.0].epochs[-1]["test_beta"] < 0.8 * runs[0.0].epochs[-1]["test_beta"]
    summary = json.loads((tmp_path / "l0.0" / "summary.json").read_text())
    assert 0 < summary["train_wall_s"] <= summary["wall_s"]


def test_bptt_training_measures_test_beta_and_matches_event(tmp_path):
    """One update per batch: event and BPTT training with the regulariser agree (float64)."""
    data, test = _padded_spikes(32), _padded_spikes(8, seed=1)
    res = {m: train(_cfg(method=m, activity=1.0, epochs=1, layers=1), tmp_path / m,
                    progress=False, train_data=data, test_data=test)
           for m in ("event", "bptt")}
    assert res["bptt"].batches[0]["beta"] is None  # no event engine: no beta (null, never NaN)
    assert res["event"].epochs[-1]["test_beta"] == res["bptt"].epochs[-1]["test_beta"]
    for (name, p), (_, q) in zip(res["event"].model.named_parameters(),
                                 res["bptt"].model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11, msg=name)


def test_cli_flags_reach_the_config(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli_main(["train", "--data", "synthetic:rotation,n=16", "--hidden", "4", "--batch", "8",
                     "--epochs", "1", "--out", str(out), "--no-progress", "--width", "0.15",
                     "--theta-init", "0.4", "--activity", "0.5", "--activity-target", "0.01",
                     "--activity-warmup", "0.5"])
    assert code == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["pd_width"], cfg["theta_init"], cfg["activity"], cfg["activity_target"],
            cfg["activity_warmup"]) == (0.15, 0.4, 0.5, 0.01, 0.5)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 < printed["test_beta"] <= 1
    with pytest.raises(ConfigError, match="activity"):
        TrainConfig(activity=-1.0).validate()


def test_warmup_factor_ramps_linearly_to_one():
    from evrtrl.training.loop import warmup_factor

    assert warmup_factor(0.0, 0.0) == 1.0  # no warm-up: full strength from the first batch
    assert [warmup_factor(2.0, p) for p in (0.0, 0.5, 1.0, 2.0, 3.5)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    with pytest.raises(ConfigError, match="activity-warmup"):
        TrainConfig(activity_warmup=-1.0).validate()
    # the model's measured default fills an unset warm-up; a run stored before the warm-up
    # existed resumes without one
    cfg = TrainConfig(model="egru")
    cfg.validate()
    assert cfg.activity_warmup == SPARSE_DEFAULTS["egru"]["activity_warmup"] > 0
    old = TrainConfig.from_dict({"model": "egru", "pd_width": 0.1, "activity": 2.0,
                                 "activity_target": 0.03})
    assert old.activity_warmup == 0.0


def test_activity_warmup_ramps_the_regulariser_and_event_matches_bptt(tmp_path):
    """The ramp is constant within a batch: event and BPTT training still agree (float64)."""
    data, test = _padded_spikes(32), _padded_spikes(8, seed=1)
    res = {m: train(_cfg(method=m, activity=1.0, activity_warmup=1.5, epochs=2, layers=1,
                         pd_width=0.3), tmp_path / m, progress=False, train_data=data, test_data=test)
           for m in ("event", "bptt")}
    strengths = [r["activity"] for r in res["bptt"].batches]
    assert strengths == pytest.approx([0.0, 0.25 / 1.5, 0.5 / 1.5, 0.75 / 1.5, 1.0 / 1.5,
                                       1.25 / 1.5, 1.0, 1.0])
    assert res["bptt"].batches[0]["reg_loss"] == 0 and res["bptt"].batches[-1]["reg_loss"] > 0
    for (name, p), (_, q) in zip(res["event"].model.named_parameters(),
                                 res["bptt"].model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11, msg=name)
    no_warmup = train(_cfg(method="bptt", activity=1.0, activity_warmup=0.0, epochs=2, layers=1,
                           pd_width=0.3),
                      tmp_path / "no_warmup", progress=False, train_data=data, test_data=test)
    assert [r["activity"] for r in no_warmup.batches] == [1.0] * 8
    assert not torch.equal(no_warmup.model.theta, res["bptt"].model.theta)
