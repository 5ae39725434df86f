"""Smoke test of the benchmark machinery (no timing assertions)."""
from __future__ import annotations

import argparse
import json

import pytest

from evrtrl.benchmarks import bench
from evrtrl.benchmarks.funcrtrl import check_against_dense

FIELDS = ("engine", "cell", "n", "rho", "beta", "T", "ms_per_step", "macs_per_step",
          "influence_bytes", "peak_bytes")


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
    ana = bench.analytic_event_macs(model, x)
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
