"""Training: checkpoints (round trip, atomicity, corrupt files), the dense MAC formula, the
data adapter, bit-exact resume, the CLI end to end, figures and 2-process equivalence."""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import pytest
import torch

import evrtrl
from evrtrl.models.modelfile import FORMAT_VERSION, load_model, save_model
from evrtrl.training.checkpoint import load_checkpoint, save_checkpoint
from evrtrl.errors import ConfigError, FormatError, UnknownMethodError
from evrtrl.extras import available
from evrtrl.training import TrainConfig, dense_rtrl_macs, open_data, parse_data_spec, train
from evrtrl.models import EGRU, LIF, FastSigmoid, Readout, Stack, Triangle, random_masks


@pytest.fixture(autouse=True)
def _one_thread():
    # small models on a shared 2-core machine: one thread is ~10x faster than two
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _egru(d=3, n=6, density=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return EGRU(d, n, masks=random_masks(EGRU.weight_shapes(d, n), density, seed=seed),
                theta_init=0.1, pseudo_derivative=Triangle(0.6, 0.4), generator=g).double()


def _lif_stack():
    g = torch.Generator().manual_seed(1)
    a = LIF(3, 5, tau_mem=0.02, tau_syn=0.005, dt=0.001, reset="subtract", v_th=0.8,
            v_leak=0.1, v_reset=-0.1, weight_scale=6.0, generator=g,
            masks=random_masks(LIF.weight_shapes(3, 5), 0.6, seed=2)).double()
    b = LIF(5, 4, tau_mem=0.03, tau_syn=0.01, dt=0.001, integration="euler", recurrent=False,
            pseudo_derivative=FastSigmoid(1.0, 0.2), weight_scale=6.0, generator=g).double()
    return Stack(a, b)


def _x(T=12, B=3, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, B, d, generator=g, dtype=torch.float64) < 0.4).double() * 1.5


# ------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("make", [_egru, _lif_stack,
                                  lambda: LIF(3, 4, tau_mem=0.02, tau_syn=0.02, dt=0.001,
                                              weight_scale=6.0).double()])
def test_model_round_trip_identical_outputs(tmp_path, make):
    torch.manual_seed(0)
    model = make()
    readout = Readout(model.hidden_size, 3, dtype=torch.float64)
    p = save_model(model, tmp_path / "m.h5", readout=readout, note="hi", acc=0.25)
    lm = load_model(p)
    assert type(lm.model) is type(model)
    assert lm.extra == {"note": "hi", "acc": 0.25}
    sd0, sd1 = model.state_dict(), lm.model.state_dict()
    assert sd0.keys() == sd1.keys()
    for k in sd0:
        assert torch.equal(sd0[k], sd1[k]), k
    x = _x()
    a, b = evrtrl.simulate(model, x), evrtrl.simulate(lm.model, x)
    assert a.spikes.sum() > 0
    assert torch.equal(a.outputs, b.outputs) and torch.equal(a.spikes, b.spikes)
    assert torch.equal(readout(a.outputs), lm.readout(b.outputs))
    for la, lb in zip(getattr(model, "layers", [model]), getattr(lm.model, "layers", [lm.model])):
        assert la.pseudo_derivative == lb.pseudo_derivative
        assert la.extra_repr() == lb.extra_repr()
    with h5py.File(p) as f:
        assert int(f.attrs["format_version"]) == FORMAT_VERSION


def test_checkpoint_round_trip_optimizer_rng_metrics(tmp_path):
    model, readout = _egru(), Readout(6, 2, dtype=torch.float64)
    opt = torch.optim.Adam(list(model.parameters()) + list(readout.parameters()), lr=0.003)
    for _ in range(2):
        for p in opt.param_groups[0]["params"]:
            p.grad = torch.randn_like(p)
        opt.step()
    rng = {"torch": torch.get_rng_state(), "data": torch.Generator().manual_seed(3).get_state()}
    metrics = [{"kind": "batch", "loss": 0.5, "acc": None}, {"kind": "epoch", "epoch": 0}]
    save_checkpoint(tmp_path / "c.h5", model, readout, opt, counters={"epoch": 1, "batch": 2},
                    rng=rng, metrics=metrics, run="x")
    c = load_checkpoint(tmp_path / "c.h5")
    assert c.counters == {"epoch": 1, "batch": 2} and c.metrics == metrics and c.extra == {"run": "x"}
    assert torch.equal(c.rng["torch"], rng["torch"]) and torch.equal(c.rng["data"], rng["data"])
    opt2 = torch.optim.Adam(list(c.model.parameters()) + list(c.readout.parameters()), lr=1.0)
    opt2.load_state_dict(c.optimizer_state)
    s0, s1 = opt.state_dict(), opt2.state_dict()
    assert s0["param_groups"] == s1["param_groups"]
    for i in s0["state"]:
        for k in s0["state"][i]:
            assert torch.equal(s0["state"][i][k], s1["state"][i][k])
    # a checkpoint is also a model file
    assert torch.equal(load_model(tmp_path / "c.h5").model.U_u, model.U_u)


def test_failed_write_leaves_previous_file_intact(tmp_path, monkeypatch):
    import evrtrl.models.modelfile as ck

    path = tmp_path / "m.h5"
    old = _egru(seed=0)
    save_model(old, path)
    before = path.read_bytes()
    real = ck._write_layer

    def exploding(g, layer):
        real(g, layer)  # half of the file is written ...
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ck, "_write_layer", exploding)
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_model(_egru(seed=5), path)
    with pytest.raises(RuntimeError):
        save_checkpoint(path, _egru(seed=5), None, None, counters={})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.equal(load_model(path).model.W_u, old.W_u)
    assert sorted(os.listdir(tmp_path)) == ["m.h5"]  # no temporary left behind


def _corrupt(path: Path, edit) -> None:
    """Edit a sealed file with h5py and seal it again (as a crafted file would be), so that
    the field checks behind the content hash are exercised."""
    from evrtrl.h5file import seal

    with h5py.File(path, "a") as f:
        edit(f)
    seal(path)


def test_corrupt_files_raise_format_error_naming_file_and_field(tmp_path):
    good = tmp_path / "good.h5"
    save_model(_egru(), good, readout=Readout(6, 2, dtype=torch.float64))
    data = good.read_bytes()

    cases = {
        "garbage.h5": (lambda p: p.write_bytes(b"not an hdf5 file at all" * 10), "neither an evrtrl file"),
        "truncated.h5": (lambda p: p.write_bytes(data[: len(data) // 3]), "truncated"),
        "noversion.h5": (lambda p: (p.write_bytes(data), _corrupt(p, lambda f: f.attrs.__delitem__("format_version"))),
                         "format_version"),
        "future.h5": (lambda p: (p.write_bytes(data), _corrupt(p, lambda f: f.attrs.__setitem__("format_version", 99))),
                      "format_version 99"),
        "nodata.h5": (lambda p: (p.write_bytes(data), _corrupt(p, lambda f: f.__delitem__("model/layers/0/U_z"))),
                      "/model/layers/0/U_z"),
        "nomask.h5": (lambda p: (p.write_bytes(data), _corrupt(p, lambda f: f.__delitem__("model/layers/0/mask_W_r"))),
                      "mask_W_r"),
        "badshape.h5": (lambda p: (p.write_bytes(data), _corrupt(p, lambda f: (f.__delitem__("model/layers/0/b_u"),
                                                                                f.create_dataset("model/layers/0/b_u", data=[1.0])))),
                        "b_u' has shape"),
        "noattr.h5": (lambda p: (p.write_bytes(data), _corrupt(p, lambda f: f["model/layers/0"].attrs.__delitem__("hidden_size"))),
                      "hidden_size"),
        "badclass.h5": (lambda p: (p.write_bytes(data), _corrupt(p, lambda f: f["model/layers/0"].attrs.__setitem__("class", "GRU"))),
                        "'GRU'"),
    }
    for name, (make, needle) in cases.items():
        p = tmp_path / name
        make(p)
        with pytest.raises(FormatError) as exc:
            load_model(p)
        msg = str(exc.value)
        assert str(p) in msg and needle in msg, (name, msg)
    # a model file is not a checkpoint
    with pytest.raises(FormatError, match="kind"):
        load_checkpoint(good)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "absent.h5")


# ---------------------------------------------------------------- dense formula
@pytest.mark.parametrize("columns", ["all", "live"])
def test_dense_mac_formula_matches_dense_engine(columns):
    for model in (_egru(), _lif_stack(), Stack(_egru(3, 4), _egru(4, 5, seed=1))):
        x = _x(T=6, B=2, d=model.layers[0].input_size if isinstance(model, Stack) else 3)
        g = evrtrl.gradients(model, x, lambda y, t: y.sum() if t % 2 else None,
                             method="dense" if columns == "all" else "dense-live")
        assert g.stats.total_macs == dense_rtrl_macs(model, 2, 6, loss_steps=3, columns=columns)


# ------------------------------------------------------------------------- data
def test_data_spec_and_synthetic_tasks():
    s = parse_data_spec("synthetic:rotation,n=10,seed=3")
    assert (s.kind, s.path, s.options) == ("synthetic", "rotation", {"n": "10", "seed": "3"})
    assert parse_data_spec("shd:/data/a,b/shd.h5").path == "/data/a,b/shd.h5"
    with pytest.raises(UnknownMethodError):
        parse_data_spec("mnist:/x")
    with pytest.raises(ConfigError):
        parse_data_spec("synthetic")
    rot = open_data("synthetic:rotation,n=10")
    x, y = rot.batch([0, 1, 2], torch.float64)
    assert x.shape == (17, 3, 2) and y.tolist() == rot.y[:3].tolist()
    t = torch.arange(17, dtype=torch.float64)
    r = torch.hypot(x[:, :, 0], x[:, :, 1])
    assert torch.allclose(r, (1 / (1 + t))[:, None].expand(17, 3))
    # class 1 rotates the other way: x1 flips sign
    x2, _ = open_data("synthetic:rotation,n=10").batch([0, 1, 2], torch.float64)
    assert torch.equal(x, x2)  # deterministic
    assert not torch.equal(open_data("synthetic:rotation,n=10", "test").x, rot.x)
    sp = open_data("synthetic:spikes,n=12,d=5,classes=3")
    xs, ys = sp.batch(range(12))
    assert xs.shape == (20, 12, 5) and set(xs.unique().tolist()) <= {0.0, 1.0}
    assert sp.n_classes == 3 and sorted(set(ys.tolist())) == [0, 1, 2]


# ---------------------------------------------------------------------- resume
def _tiny(**kw):
    base = dict(data="synthetic:rotation,n=24", hidden=6, batch=6, epochs=2, lr=0.05,
                dtype="float64", checkpoint_every=3, eval_each_epoch=False, density=0.7, k=5,
                theta_init=0.05, pd_width=0.3)
    base.update(kw)
    return TrainConfig(**base)


class _Killed(Exception):
    pass


def _params(model, readout):
    return {**{k: v.detach().clone() for k, v in model.named_parameters()},
            **{"readout." + k: v.detach().clone() for k, v in readout.named_parameters()}}


def test_resume_after_kill_is_bit_identical(tmp_path):
    cfg = _tiny()
    full = train(cfg, tmp_path / "full", progress=False)

    def kill_at(n):
        def cb(rec):
            if rec["global_batch"] == n:
                raise _Killed
        return cb

    run = tmp_path / "killed"
    with pytest.raises(_Killed):  # 4 batches per epoch; checkpoints at 3, 4 (epoch end), 6
        train(cfg, run, progress=False, callbacks=[kill_at(7)])
    ck = load_checkpoint(run / "checkpoint.h5")
    assert ck.counters["global_batch"] == 6 and ck.counters["epoch"] == 1 and ck.counters["batch"] == 2
    # batch 7 was logged before the kill; resume must drop it and redo it
    assert len((run / "batches.jsonl").read_text().splitlines()) == 7
    resumed = train(cfg, run, resume=True, progress=False)

    a, b = _params(full.model, full.readout), _params(resumed.model, resumed.readout)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("batch_s", "wall_s", "train_s")} for r in rs]  # noqa: E731
    assert strip(full.batches) == strip(resumed.batches)
    assert len(strip(resumed.epochs)) == 2
    lines = (run / "batches.jsonl").read_text().splitlines()
    assert [json.loads(l)["global_batch"] for l in lines] == list(range(1, 9))
    assert len((run / "batches.csv").read_text().splitlines()) == 1 + 8
    # the final model file equals the final weights too
    lm = load_model(run / "model.h5")
    assert torch.equal(lm.model.U_u, full.model.U_u)
    # k=5 over 17 steps: 4 online updates per batch
    assert full.batches[-1]["updates"] == 8 * 4


# --------------------------------------------------------------------- CLI, plot
@pytest.mark.skipif(not available("matplotlib"),
                    reason="needs matplotlib, the 'data' extra: pip install 'evrtrl[data]'")
def test_cli_train_evaluate_plot_end_to_end(tmp_path, capsys):
    from evrtrl.training.cli import main

    out = tmp_path / "run"
    rc = main(["train", "--data", "synthetic:spikes,n=16,d=6,classes=2,T=10", "--model", "lif",
               "--hidden", "5", "--density", "0.8", "--batch", "8", "--epochs", "1", "--lr", "0.02",
               "--out", str(out), "--seed", "1", "--log", "csv", "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs"] == 1 and 0 <= summary["test_acc"] <= 1
    for f in ("config.json", "checkpoint.h5", "model.h5", "batches.csv", "epochs.csv", "summary.json"):
        assert (out / f).exists(), f
    assert not (out / "batches.jsonl").exists()
    header = (out / "batches.csv").read_text().splitlines()[0].split(",")
    for col in ("loss", "acc", "alpha", "beta", "gamma", "m_density", "macs_event", "macs_dense", "saving"):
        assert col in header
    assert main(["evaluate", str(out), "--json"]) == 0
    acc = json.loads(capsys.readouterr().out)["accuracy"]
    assert acc == pytest.approx(json.loads((out / "summary.json").read_text())["last_epoch"]["test_acc"])
    assert main(["evaluate", str(out / "model.h5"), "--data", "synthetic:spikes,n=16,d=6,classes=2,T=10"]) == 0
    assert main(["plot", str(out)]) == 0
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert pngs == ["activity.png", "curves.png", "influence.png", "raster.png"]
    for p in (out / "figures").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    # bad input is an error message and exit code 2, not a traceback
    assert main(["train", "--data", "synthetic:nope", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "unknown synthetic task" in capsys.readouterr().err


@pytest.mark.slow
def test_training_learns_the_rotation_task(tmp_path):
    # ~128 updates are needed; about 40 s on one CPU thread (docs/training.md)
    # the loop's learning, not the sparsity defaults: the wide window and no regulariser
    # (the activity-sparse defaults learn this task in evrtrl demo, with larger batches)
    cfg = TrainConfig(data="synthetic:rotation,n=128", hidden=16, batch=4, epochs=4, k=0, lr=0.02,
                      pd_width=0.5, activity=0.0)
    res = train(cfg, tmp_path / "r", progress=False)
    assert res.epochs[-1]["test_acc"] >= 0.9, res.epochs
    assert res.epochs[-1]["saving"] > 1.0


# -------------------------------------------------------------------- distributed
def test_two_processes_match_one_process(tmp_path):
    from evrtrl.training.distributed import spawn_train

    cfg = _tiny(epochs=1, checkpoint_every=0, batch=8, data="synthetic:rotation,n=24", k=6)
    one = train(cfg, tmp_path / "one", progress=False)
    spawn_train(2, cfg, tmp_path / "two")
    two = load_model(tmp_path / "two" / "model.h5")
    a = _params(one.model, one.readout)
    b = _params(two.model, two.readout)
    moved = 0.0
    init = train.__globals__["build_model"](cfg, 2, 2, None)
    for k in a:
        ref = a[k]
        err = float((ref - b[k]).norm()) / max(float(ref.norm()), 1e-300)
        assert err < 1e-12, (k, err)
    for k, v in _params(*init).items():
        moved += float((a[k] - v).norm())
    assert moved > 0  # the weights did change
    recs = [json.loads(l) for l in (tmp_path / "two" / "batches.jsonl").read_text().splitlines()]
    for r1, r2 in zip(one.batches, recs):
        assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-12)
        assert r1["acc"] == r2["acc"] and r1["macs_dense"] == r2["macs_dense"]


# ------------------------------------------------------------ down-sampling options
def test_adapter_pools_and_downsamples_real_format_files(tmp_path):
    """``factor`` (SHD) and ``pool`` (N-MNIST) shrink the inputs without losing events."""
    import numpy as np

    from evrtrl.datasets import audio_events, camera_events, write_nmnist, write_shd
    from evrtrl.training.data import open_data

    rng = np.random.default_rng(0)
    units = rng.integers(0, 700, 300)
    t = np.sort(rng.integers(0, 500_000, 300))
    write_shd(tmp_path / "shd_train.h5", [audio_events(t, units)], [3], [str(k) for k in range(4)])
    full = open_data("shd:" + str(tmp_path / "shd_train.h5") + ",duration_ms=500", dt_us=10_000)
    down = open_data("shd:" + str(tmp_path / "shd_train.h5") + ",duration_ms=500,factor=5",
                     dt_us=10_000)
    assert (full.n_inputs, down.n_inputs) == (700, 140)
    xf, yf = full.batch([0])
    xd, _ = down.batch([0])
    assert float(xf.sum()) == float(xd.sum()) == 300 and int(yf[0]) == 3
    torch.testing.assert_close(xd[:, 0, 2], xf[:, 0, 10:15].sum(-1))  # channel 2 = units 10..14

    (tmp_path / "nm" / "Train" / "7").mkdir(parents=True)
    ev = camera_events(np.arange(200) * 1000, rng.integers(0, 34, 200), rng.integers(0, 34, 200),
                       rng.integers(0, 2, 200))
    write_nmnist(tmp_path / "nm" / "Train" / "7" / "00001.bin", ev)
    pooled = open_data(f"nmnist:{tmp_path / 'nm'},pool=4,duration_ms=200", dt_us=10_000)
    assert pooled.n_inputs == 2 * 9 * 9
    xp, _ = pooled.batch([0])
    assert float(xp.sum()) == 200
    e0 = ev[0]
    ch = (int(e0["p"]) * 9 + int(e0["y"]) // 4) * 9 + int(e0["x"]) // 4
    assert float(xp[0, 0, ch]) >= 1
