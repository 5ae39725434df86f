"""Column shards: the shards' gradients sum to the unsharded gradient (float64, 1e-12),
each shard's gradient is exactly zero outside its columns; the memory planner predicts the
engines' influence bytes exactly and refuses plans above the memory available."""
from __future__ import annotations

import pytest
import torch

import evrtrl
from evrtrl.errors import ConfigError, MemoryBudgetError, UnknownMethodError
from evrtrl.influence import ColumnBlock
from evrtrl.memory import LayerSize, check_memory, layer_sizes, plan_memory
from evrtrl.models import EGRU, LIF, Stack, random_masks
from evrtrl.shards import ColumnShard, shard_size

from .helpers import egru, lif, per_step_loss, rel_err, spikes_in, values_in

RTRL = ("event", "dense", "dense-live")


def _stack(seed=1):
    layers = [
        EGRU(2, 6, theta_init=0.05, masks=random_masks(EGRU.weight_shapes(2, 6), 0.5, seed=seed)),
        LIF(6, 5, tau_mem=0.01, tau_syn=0.004, dt=0.001, weight_scale=12.0,
            masks=random_masks(LIF.weight_shapes(6, 5), 0.6, seed=seed + 1)),
        EGRU(5, 3, theta_init=0.05),
    ]
    return Stack(*layers).double()


CASES = {
    "egru": lambda: (egru(seed=1), values_in(20, 1, 3, seed=1)),
    "egru-masked-B3": lambda: (egru(density=0.4, seed=3), values_in(20, 3, 3, seed=3)),
    "lif-exact": lambda: (lif(), spikes_in(30, 2, 4)),
    "lif-euler-subtract-masked": lambda: (lif(integration="euler", reset="subtract", density=0.5),
                                          spikes_in(30, 2, 4)),
    "lif-feedforward": lambda: (lif(recurrent=False), spikes_in(30, 2, 4)),
    "stack-3-masked": lambda: (_stack(), values_in(15, 2, 2)),
}


def _check_union(model, x, method, P, partition):
    full = evrtrl.gradients(model, x, per_step_loss, method=method)
    assert sum(float(g.norm()) for g in full.values()) > 0
    parts = [evrtrl.gradients(model, x, per_step_loss, method=method, shard=s)
             for s in ColumnShard.all(P, partition)]
    bptt = evrtrl.gradients(model, x, per_step_loss, method="bptt")
    for name, g in full.items():
        union = sum(p[name] for p in parts)
        e = rel_err(union, g)
        assert e <= 1e-12, f"{method} P={P} {partition} {name}: rel err {e:.2e}"
        e = rel_err(union, bptt[name])  # and against the independent reference
        assert e <= 1e-10, f"{method} P={P} {partition} {name} vs bptt: rel err {e:.2e}"
        # disjoint: at every entry at most one shard is non-zero
        nonzero = sum((p[name] != 0).to(torch.int) for p in parts)
        assert int(nonzero.max()) <= 1, name
    # each shard holds a part of the work (the stats count only its columns)
    assert sum(p.stats.p_live for p in parts) == full.stats.p_live


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("method", RTRL)
def test_union_of_shards_is_the_gradient(case, method):
    model, x = CASES[case]()
    _check_union(model, x, method, 2, "contiguous")


@pytest.mark.parametrize("partition", ["contiguous", "strided"])
@pytest.mark.parametrize("P", [3, 5])
@pytest.mark.parametrize("method", ["event", "dense-live"])
def test_union_more_shards_and_partitions(P, partition, method):
    """Per-unit parameters (EGRU biases, theta) split across shards; stacks; B > 1."""
    model, x = CASES["stack-3-masked"]()
    _check_union(model, x, method, P, partition)
    model, x = CASES["egru-masked-B3"]()
    _check_union(model, x, method, P, partition)


def test_more_shards_than_columns():
    """A shard with no column in a layer (P larger than a block) still works exactly."""
    model = egru(d=1, n=2, seed=4)
    x = values_in(12, 2, 1, seed=4)
    assert model.live_parameter_count < 40
    _check_union(model, x, "event", 40, "contiguous")


def test_shard_is_not_a_pruning_mask():
    """The forward pass uses every weight: a sharded engine's outputs equal simulate's."""
    model, x = CASES["stack-3-masked"]()
    ref = evrtrl.simulate(model, x).outputs
    eng = evrtrl.make_engine(model, x.shape[1], "event", shard=ColumnShard(1, 3))
    out = torch.stack([eng.step(x[t]) for t in range(x.shape[0])])
    assert torch.equal(out, ref)


@pytest.mark.parametrize("partition", ["contiguous", "strided"])
def test_partition_covers_disjoint_balanced(partition):
    model = _stack()
    for ref_layer in model.layers:
        blocks = [ColumnBlock(ref_layer, "", s) for s in ColumnShard.all(4, partition)]
        whole = ColumnBlock(ref_layer, "")
        cover = sum(b.tracked.to(torch.int) for b in blocks)
        assert torch.equal(cover, whole.tracked.to(torch.int))  # disjoint and complete
        sizes = [b.p_live for b in blocks]
        assert max(sizes) - min(sizes) <= 1
        assert sizes == [shard_size(whole.p_live, s) for s in ColumnShard.all(4, partition)]
        if partition == "contiguous":  # contiguous runs of the live entries in parameter order
            live = whole.tracked.nonzero(as_tuple=True)[0]
            got = torch.cat([b.tracked.nonzero(as_tuple=True)[0] for b in blocks])
            assert torch.equal(got, live)


def test_bad_shards_are_refused():
    with pytest.raises(ConfigError):
        ColumnShard(2, 2)
    with pytest.raises(ConfigError):
        ColumnShard(0, 0)
    with pytest.raises(UnknownMethodError):
        ColumnShard(0, 2, "random")
    with pytest.raises(UnknownMethodError):
        evrtrl.gradients(egru(), values_in(3, 1, 3), per_step_loss, method="bptt",
                         shard=ColumnShard(0, 2))


# ------------------------------------------------------------------------- memory
@pytest.mark.parametrize("method", RTRL)
@pytest.mark.parametrize("P", [1, 2, 3])
def test_plan_predicts_the_engines_influence_bytes(method, P):
    model = _stack()
    B = 3
    total = 0
    for s in ColumnShard.all(P):
        eng = evrtrl.make_engine(model, B, method, shard=s)
        plan = plan_memory(model, B, method, shard=s)
        assert plan.influence_bytes == eng.stats.influence_bytes
        total += eng.stats.influence_bytes
    assert total == plan_memory(model, B, method).influence_bytes  # P = 1 plan
    # the default (largest shard) plan bounds every shard
    worst = plan_memory(model, B, method, columns=P)
    assert worst.influence_bytes >= total / P
    # sizes given as numbers (for models that are not built) plan the same
    assert plan_memory(layer_sizes(model), B, method, columns=P,
                       dtype=torch.float64).influence_bytes == worst.influence_bytes


def test_plan_grid_and_formula():
    """n = 1024 EGRU, d = 64, density 0.2: the issue's ~2.7 GB per sequence in float32."""
    n, d = 1024, 64
    w = 3 * (n * d + n * n)
    s = LayerSize(n=n, m=1, p_total=w + 4 * n, p_live=round(0.2 * w) + 4 * n)
    one = plan_memory([s], 1)
    assert one.influence_bytes == n * s.p_live * 4
    assert 2.5e9 < one.influence_bytes < 2.9e9
    grid = plan_memory([s], 64, data=4, columns=16)
    assert grid.local_batch == 16
    assert grid.influence_bytes == 16 * n * 4 * -(-s.p_live // 16)


def test_check_memory_refuses_and_allows():
    plan = plan_memory([LayerSize(64, 1, 20000, 20000)], 16)
    check_memory(plan, available=plan.total_bytes)  # fits exactly
    with pytest.raises(MemoryBudgetError) as exc:
        check_memory(plan, available=plan.total_bytes - 1)
    msg = str(exc.value)
    assert "influence matrix" in msg and "--allow-memory" in msg and "available" in msg
    check_memory(plan, available=1, allow=True)


@pytest.mark.parametrize("method", RTRL)
def test_engines_refuse_before_allocating(method):
    """batch 10^9 would ask for petabytes: refused with the numbers, nothing allocated."""
    with pytest.raises(MemoryBudgetError, match="per process"):
        evrtrl.make_engine(egru(n=32), 10**9, method)
