"""Column-sharded training (gloo, local processes): sharded == unsharded in float64.

The quick test trains a few online updates on 2 processes (1 data x 2 column shards) and
compares every weight, the readout and the checkpointed optimizer state with a 1-process
run (<= 1e-12 relative). The slow one runs the 2-D grid (2 data x 2 columns) and the
gradient-exchange variant.
"""
from __future__ import annotations

import os

import pytest
import torch

from evrtrl.errors import ConfigError, MemoryBudgetError
from evrtrl.memory import layer_sizes, plan_memory
from evrtrl.models.modelfile import load_model
from evrtrl.training.checkpoint import load_checkpoint
from evrtrl.training.distributed import spawn_train
from evrtrl.training.loop import TrainConfig, build_model, train
from evrtrl.training.plan import sizes_for
from evrtrl.training.sharded import ColumnOwnership, setup_grid


def _cfg(**kw):
    base = dict(data="synthetic:rotation,n=24", hidden=6, batch=4, epochs=1, lr=0.05,
                dtype="float64", checkpoint_every=2, eval_each_epoch=False, density=0.7, k=5,
                theta_init=0.05, pd_width=0.3, max_batches=3)
    base.update(kw)
    return TrainConfig(**base)


def _params(model, readout):
    return {**{k: v.detach().clone() for k, v in model.named_parameters()},
            **{"readout." + k: v.detach().clone() for k, v in readout.named_parameters()}}


def _rel(a, b):
    return float((a - b).norm()) / max(float(b.norm()), 1e-300)


def _compare_runs(one, out_dir):
    two = load_model(out_dir / "model.h5")
    a, b = _params(one.model, one.readout), _params(two.model, two.readout)
    init = _params(*build_model(_cfg(), 2, 2, None))
    assert sum(float((a[k] - init[k]).norm()) for k in a) > 0  # the weights did move
    for k in a:
        assert _rel(b[k], a[k]) <= 1e-12, (k, _rel(b[k], a[k]))
    # the checkpoint holds the owners' optimizer state (gathered before writing)
    s1 = load_checkpoint(one.run_dir / "checkpoint.h5").optimizer_state["state"]
    s2 = load_checkpoint(out_dir / "checkpoint.h5").optimizer_state["state"]
    assert s1.keys() == s2.keys()
    for i in s1:
        for key, v in s1[i].items():
            if isinstance(v, torch.Tensor) and v.numel() > 1:
                assert _rel(s2[i][key], v) <= 1e-12, (i, key)


def test_two_column_shards_match_one_process(tmp_path):
    one = train(_cfg(), tmp_path / "one", progress=False)
    assert one.batches[-1]["updates"] >= 9  # online: several updates per batch
    spawn_train(2, _cfg(shard_columns=2), tmp_path / "two")
    _compare_runs(one, tmp_path / "two")


@pytest.mark.slow
def test_data_by_columns_grid_matches_one_process(tmp_path):
    """2 data x 2 column processes; an LIF stack with masks."""
    kw = dict(model="lif", layers=2, data="synthetic:spikes,n=16,d=5,classes=2,T=12", batch=4,
              density=0.6, k=4)
    one = train(_cfg(**kw), tmp_path / "one", progress=False)
    spawn_train(4, _cfg(**kw, shard_columns=2), tmp_path / "grid")
    two = load_model(tmp_path / "grid" / "model.h5")
    a, b = _params(one.model, one.readout), _params(two.model, two.readout)
    for k in a:
        assert _rel(b[k], a[k]) <= 1e-12, (k, _rel(b[k], a[k]))


def _exchange_worker(rank, world, init, out):
    import torch.distributed as dist

    from evrtrl.online import OnlineLearner
    from evrtrl.training.loop import make_loss
    from evrtrl.training.data import open_data

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        cfg = _cfg()
        data = open_data(cfg.data, "train")
        for exchange in ("weights", "gradients"):
            model, readout = build_model(cfg, data.n_inputs, data.n_classes, None)
            grid = setup_grid(2)
            opt = grid.wrap_optimizer(torch.optim.Adam(list(model.parameters())
                                                       + list(readout.parameters()), lr=0.05),
                                      model, exchange=exchange)
            for b in range(2):
                x, y = data.batch(grid.data_shard(list(range(4 * b, 4 * b + 4))), torch.float64)
                OnlineLearner(model, opt, make_loss(readout, y, x.shape[0], "mean", 4), k=5,
                              extra_parameters=readout.parameters(),
                              engine_options=grid.engine_options()).run(x)
            if rank == 0:
                torch.save(_params(model, readout), os.path.join(out, f"{exchange}.pt"))
                torch.save(grid.log.summary(), os.path.join(out, f"{exchange}_log.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_python_api_both_exchanges(tmp_path):
    import torch.multiprocessing as mp

    from evrtrl.online import OnlineLearner
    from evrtrl.training.data import open_data
    from evrtrl.training.loop import make_loss

    cfg = _cfg()
    data = open_data(cfg.data, "train")
    model, readout = build_model(cfg, data.n_inputs, data.n_classes, None)
    opt = torch.optim.Adam(list(model.parameters()) + list(readout.parameters()), lr=0.05)
    for b in range(2):
        x, y = data.batch(list(range(4 * b, 4 * b + 4)), torch.float64)
        OnlineLearner(model, opt, make_loss(readout, y, x.shape[0], "mean", 4), k=5,
                      extra_parameters=readout.parameters()).run(x)
    ref = _params(model, readout)
    init = "file://" + str(tmp_path / "store")
    mp.spawn(_exchange_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    for exchange in ("weights", "gradients"):
        got = torch.load(tmp_path / f"{exchange}.pt")
        for k in ref:
            assert _rel(got[k], ref[k]) <= 1e-12, (exchange, k, _rel(got[k], ref[k]))
        log = torch.load(tmp_path / f"{exchange}_log.pt")
        kind = "all_gather_weights" if exchange == "weights" else "all_reduce_grad"
        assert log["calls"][kind] >= 6 and log["sent_bytes"][kind] > 0


# ------------------------------------------------------------ grid, ownership, memory
def test_ownership_partitions_the_live_entries():
    cfg = _cfg(layers=2)
    model, _ = build_model(cfg, 2, 2, None)
    own = ColumnOwnership(model, 3)
    allidx = torch.cat(own.owned)
    assert allidx.unique().numel() == allidx.numel()  # disjoint
    live = sum(r for r in (m.live_parameter_count for m in model.layers))
    assert allidx.numel() == live
    dense = ColumnOwnership(model, 3, method="dense")
    assert torch.cat(dense.owned).numel() == own.numel


def test_grid_refuses_a_column_count_that_does_not_divide():
    assert setup_grid(1).data == 1
    with pytest.raises(ConfigError, match="multiple of 2 processes"):
        setup_grid(2)  # one process cannot hold 2 column shards
    with pytest.raises(ConfigError):
        setup_grid(0)


def test_sizes_for_match_the_built_model():
    for model in ("egru", "lif"):
        cfg = _cfg(model=model, layers=2, density=0.3, hidden=9)
        built, _ = build_model(cfg, 5, 2, None)
        assert sizes_for(model, inputs=5, hidden=9, layers=2, density=0.3) == layer_sizes(built)


def test_training_refuses_a_plan_above_the_memory(tmp_path, monkeypatch):
    """The loop plans first; --allow-memory (allow_memory=True) lets the run through."""
    import evrtrl.training.loop as loop

    monkeypatch.setattr(loop, "check_memory",
                        lambda plan, allow=False, **kw: None if allow else (_ for _ in ()).throw(
                            MemoryBudgetError(f"needs {plan.total_bytes}")))
    with pytest.raises(MemoryBudgetError):
        train(_cfg(max_batches=1, checkpoint_every=0), tmp_path / "a", progress=False)
    train(_cfg(max_batches=1, checkpoint_every=0), tmp_path / "b", progress=False,
          allow_memory=True)


def test_cli_plan(capsys):
    from evrtrl.cli import main

    assert main(["plan", "--hidden", "64", "--inputs", "8", "--batch", "4", "--json"]) == 0
    import json

    got = json.loads(capsys.readouterr().out)
    assert got["influence_bytes"] == plan_memory(sizes_for("egru", inputs=8, hidden=64), 4).influence_bytes
    assert main(["plan", "--hidden", "4096", "--batch", "4096", "--available", "1"]) == 1
    assert "does NOT fit" in capsys.readouterr().out


@pytest.mark.slow
def test_shard_bench_smoke(tmp_path):
    """The benchmark runs (P = 1, 2, the forward probe); its exact checks hold."""
    from evrtrl.training.shard_bench import report, run

    recs = run(dict(n=12, d=3, density=0.5, B=2, T=4, k=2, theta=0.3), str(tmp_path),
               partitions=("strided",))
    exact = [c for c in recs["checks"] if c["what"].startswith("plan == engine")]
    assert len(exact) == 3 and all(c["ok"] for c in exact)
    two = recs["runs"]["2 strided"]
    assert all(r["comm"]["calls"]["all_gather_weights"] == 2 for r in two)
    assert "| 4096 | 64 |" in report(recs)
