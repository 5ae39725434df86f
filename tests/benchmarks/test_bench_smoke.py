"""Smoke test of the benchmark machinery (no timing assertions)."""
from __future__ import annotations

import argparse
import json

import pytest

from evrtrl.benchmarks import bench
from evrtrl.benchmarks.funcrtrl import check_against_dense

FIELDS = ("engine", "cell", "n", "rho", "beta", "T", "ms_per_step", "macs_per_step",
          "influence_bytes", "peak_bytes", "torch_calls_per_step", "kernel", "threads")


@pytest.mark.parametrize("cell", ["egru", "lif"])
def test_record_fields_and_event_macs_match_analytic(cell, tmp_path):
    theta, width = bench.calibrate(cell, 16, 0.5, 0.3, steps=60)
    cfg = dict(cell=cell, n=16, rho=0.5, T=20, steps=20, warm=0, engine="event",
               theta=theta, width=width, beta_target=0.3, threads=1)
    rec = bench.run_config(cfg)
    for f in FIELDS:
        assert f in rec, f
    json.loads(json.dumps(rec))  # serialisable
    model = bench.build_model(cell, 16, 0.5, width, theta)
    x = bench.input_sequence(cell, 16, 0.5, 20)
    ana = bench.analytic_event_macs(model, x, "live" if rec["kernel"] == "compiled" else "born")
    assert rec["macs_per_step"] * 20 == sum(ana)
    assert rec["influence_bytes"] == 16 * model.state_size * model.live_parameter_count * 4
    assert 0 < rec["beta"] <= 1


@pytest.mark.parametrize("engine", ["dense", "dense-live", "func", "bptt"])
def test_other_engines_give_records(engine):
    cfg = dict(cell="egru", n=16, rho=0.5, T=20, steps=5 if engine != "bptt" else 20, warm=1,
               engine=engine, theta=0.3, width=0.3, beta_target=0.3, threads=1)
    rec = bench.run_config(cfg)
    for f in FIELDS:
        assert f in rec, f
    assert rec["macs_per_step"] > 0


def test_func_baseline_is_exact():
    assert check_against_dense() < 1e-10


def test_register_adds_bench_command():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    bench.register(sub)
    args = parser.parse_args(["bench", "--quick", "--json", "x.json", "--plot", "d"])
    assert args.quick and args.json == "x.json" and args.plot == "d" and callable(args.func)


def test_quick_plan_has_issue9_configurations():
    cfgs = bench.plan(quick=True)
    n_sweep = {(c["cell"], c["n"], c["engine"]) for c in cfgs if c["sweep"] == "n"}
    for n in (16, 64, 128, 256):
        assert ("egru", n, "event") in n_sweep and ("egru", n, "bptt") in n_sweep
    assert ("lif", 64, "event") in n_sweep and ("lif", 64, "bptt") in n_sweep


def test_floor_ms_is_the_larger_of_arithmetic_and_memory():
    rec = dict(n=100, state_size=1, rho_A=0.5, beta=0.1, p_live=1000)
    # 0.5 * 100 * 10 * 1000 = 5e5 MACs at 1 GMAC/s = 0.5 ms; 2 * 4e5 bytes at 1 GB/s = 0.8 ms
    assert bench.floor_ms(rec, 1.0, 1.0) == pytest.approx(0.8)
    assert bench.floor_ms(rec, 1.0, 100.0) == pytest.approx(0.5)


def test_kernel_option_records_the_path_that_ran(monkeypatch):
    """``--kernel`` reaches the child configuration; the record says which path ran."""
    monkeypatch.setenv("EVRTRL_KERNEL", "auto")  # run_config sets it; restored afterwards
    theta, width = bench.calibrate("egru", 16, 0.5, 0.3, steps=60)
    recs = {}
    for k in ("torch", "compiled"):
        cfg = dict(cell="egru", n=16, rho=0.5, T=10, steps=10, warm=0, engine="event", theta=theta,
                   width=width, beta_target=0.3, threads=1, kernel=k, counted=2)
        recs[k] = bench.run_config(cfg)
        assert recs[k]["kernel"] == k
    # each path's count is the algorithm's: the born prefix (torch), every live column (compiled)
    model = bench.build_model("egru", 16, 0.5, width, theta)
    x = bench.input_sequence("egru", 16, 0.5, 10)
    for k, columns in (("torch", "born"), ("compiled", "live")):
        assert recs[k]["macs_per_step"] * 10 == sum(bench.analytic_event_macs(model, x, columns)), k
    args = bench.register(argparse.ArgumentParser().add_subparsers()).parse_args(["--kernel", "torch"])
    assert args.kernel == "torch"
