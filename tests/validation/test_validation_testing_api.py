"""The validation API: passes on correct models, fails with precise messages on perturbed ones."""
from __future__ import annotations

import argparse
import re

import pytest
import torch

import evrtrl.validation.testing as et
from evrtrl.models import EGRU, LIF
from evrtrl.models.lif import lif_step


class WrongJacobianLIF(LIF):
    """A LIF whose analytic Jacobian for W is off by 1 %: RTRL and BPTT must disagree on W."""

    def local_jacobian(self, weights, prev, x, new, aux, first):
        lj = super().local_jacobian(weights, prev, x, new, aux, first)
        lj.phi["W"] = lj.phi["W"] * 1.01
        return lj


class ShiftedThresholdLIF(LIF):
    """Steps with v_th + 0.05 while reporting v_th: simulators built from it must disagree."""

    def step(self, weights, state, x):
        return lif_step(weights._replace(v_th=weights.v_th + 0.05), state, x, self.p)


def _loss(T, B, n):
    c = torch.randn(T, B, n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return lambda y, t: (y * c[t]).sum()


def test_gradients_match_passes(make_lif, make_spikes):
    m = make_lif(4, 6, seed=1)
    x = make_spikes(60, 2, 4, 0.2, 1)
    errs = et.assert_gradients_match(m, x, _loss(60, 2, 6))
    assert {e.parameter for e in errs} == {"W", "U"}
    assert len(errs) == 2 * 3 and max(e.relative_error for e in errs) < 1e-12
    e = EGRU(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    xe = torch.randn(30, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    et.assert_gradients_match(e, xe, _loss(30, 2, 5))


def test_gradients_mismatch_names_parameter_methods_and_index(make_spikes):
    g = torch.Generator().manual_seed(1)
    m = WrongJacobianLIF(4, 6, tau_mem=20e-3, tau_syn=10e-3, dt=1e-3, weight_scale=3.0,
                         dtype=torch.float64, generator=g)
    x = make_spikes(60, 2, 4, 0.2, 1)
    with pytest.raises(AssertionError) as ei:
        et.assert_gradients_match(m, x, _loss(60, 2, 6))
    msg = str(ei.value)
    assert "parameter 'W'" in msg
    assert "'event' vs 'bptt'" in msg and "'dense' vs 'bptt'" in msg
    assert re.search(r"relative error \d\.\d+e-0[1-4]", msg)
    assert re.search(r"largest difference at index \[\d, \d\]", msg)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_brian2_assertion(make_lif, make_spikes):
    pytest.importorskip("brian2", reason="needs Brian2, the 'sim' extra: pip install 'evrtrl[sim]'")
    m = make_lif(4, 6, seed=4, scale=4.0)
    x = make_spikes(100, 2, 4, 0.2, 4)
    comps = et.assert_matches_brian2(m, x)
    assert comps[0].identical
    bad = ShiftedThresholdLIF(4, 6, tau_mem=20e-3, tau_syn=10e-3, dt=1e-3, weight_scale=4.0,
                              dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with pytest.raises(AssertionError) as ei:
        et.assert_matches_brian2(bad, x)
    msg = str(ei.value)
    assert re.search(r"layer 0, batch \d, neuron \d, step \d+: evrtrl spike=\d .* vs Brian2 "
                     r"spike=\d \(v=", msg), msg


@pytest.mark.slow
def test_norse_assertion(make_lif, make_spikes):
    pytest.importorskip("norse.torch", reason="needs Norse: pip install --no-deps norse==1.1.0 (scripts/setup.sh)")
    m = make_lif(4, 6, seed=4, scale=4.0, integration="euler")
    x = make_spikes(100, 2, 4, 0.2, 4)
    et.assert_matches_norse(m, x)
    bad = ShiftedThresholdLIF(4, 6, tau_mem=20e-3, tau_syn=10e-3, dt=1e-3, weight_scale=4.0,
                              integration="euler", dtype=torch.float64,
                              generator=torch.Generator().manual_seed(4))
    with pytest.raises(AssertionError, match=r"layer 0, batch \d, neuron \d, step \d+"):
        et.assert_matches_norse(bad, x)
    # with a step tolerance: the message lists both neurons' spike steps
    with pytest.raises(AssertionError, match=r"beyond 1 step\(s\): layer 0, batch \d, neuron \d: "
                                             r"evrtrl spikes at steps \["):
        et.assert_matches_norse(bad, x, max_step_shift=1)


def test_testing_imports_without_simulators():
    import subprocess
    import sys

    code = ("import sys; import evrtrl.validation.testing, evrtrl.validation.validate, evrtrl.spikecompare; "
            "bad = [m for m in ('brian2', 'norse') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_register_adds_validate_command():
    from evrtrl.validation.validate import main, register

    p = argparse.ArgumentParser(prog="evrtrl")
    sub = p.add_subparsers(dest="command")
    register(sub)
    args = p.parse_args(["validate", "--quick", "--model", "m.h5"])
    assert args.func is main and args.quick and args.model == "m.h5"
    args = p.parse_args(["validate"])
    assert args.model is None and not args.quick


def test_validate_saved_model(tmp_path, capsys):
    """`evrtrl validate --model PATH` checks a saved model; a missing file is exit code 2."""
    import torch

    from evrtrl.models.modelfile import save_model
    from evrtrl.validation.validate import main
    from evrtrl.models import EGRU

    path = tmp_path / "m.h5"
    save_model(EGRU(2, 5, generator=torch.Generator().manual_seed(0)), path)
    code = main(["--quick", "--model", str(path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "pass" in out.lower()
    assert main(["--model", str(tmp_path / "missing.h5")]) == 2


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_validate_quick_passes_and_prints_table(capsys):
    pytest.importorskip("brian2", reason="needs Brian2, the 'sim' extra: pip install 'evrtrl[sim]'")
    pytest.importorskip("norse.torch", reason="needs Norse: pip install --no-deps norse==1.1.0 (scripts/setup.sh)")
    from evrtrl.validation.validate import main

    assert main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "check" in out and "worst error" in out and "tolerance" in out
    assert "FAIL" not in out and out.count("pass") >= 8


def test_validate_failure_returns_nonzero(monkeypatch, capsys):
    import evrtrl.validation.validate as v

    def fake_checks(quick, model=None):
        return [("always fails", "", lambda: v.CheckResult("always fails", "x", 1.0, 0.0, False,
                                                          "deliberate"))]

    monkeypatch.setattr(v, "_checks", fake_checks)
    assert v.main([]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "deliberate" in out
