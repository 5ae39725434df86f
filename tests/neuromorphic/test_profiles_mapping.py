import json

import numpy as np
import pytest
import torch

from evrtrl.errors import ConfigError, FormatError
from evrtrl.models import EGRU, LIF, Stack
from evrtrl import neuromorphic as N
from evrtrl.neuromorphic.quantize import quantize_decay, quantize_weights
from evrtrl.neuromorphic.profiles import _SOURCED_FIELDS

ALL = ["brainscales2", "loihi1", "loihi2", "speck", "spinnaker2", "truenorth", "xylo_audio2", "xylo_audio3", "xylo_imu"]


def test_every_profile_loads_validates_and_cites():
    assert set(ALL) <= set(N.list_profiles())
    for name in ALL:
        p = N.load_profile(name)
        assert p.name == name
        for f in _SOURCED_FIELDS:
            if getattr(p, f) is not None:
                assert len(p.sources[f]) > 10, (name, f)


def test_bad_profile_is_rejected_and_user_dir_works(tmp_path, monkeypatch):
    d = N.load_profile("loihi2").to_dict()
    d["name"] = "mychip"
    (tmp_path / "mychip.json").write_text(json.dumps(d))
    monkeypatch.setenv(N.PROFILE_PATH_ENV, str(tmp_path))
    assert "mychip" in N.list_profiles()
    assert N.load_profile("mychip").neurons_per_core == 8192
    bad = dict(d, weight_bits=0)
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="weight_bits"):
        N.load_profile(tmp_path / "bad.json")
    nosrc = dict(d)
    nosrc["sources"] = {k: v for k, v in d["sources"].items() if k != "cores_per_chip"}
    (tmp_path / "nosrc.json").write_text(json.dumps(nosrc))
    with pytest.raises(ConfigError, match="cores_per_chip"):
        N.load_profile(tmp_path / "nosrc.json")
    (tmp_path / "x.json").write_text(json.dumps(dict(d, extra=1)))
    with pytest.raises(FormatError, match="extra"):
        N.load_profile(tmp_path / "x.json")


@pytest.mark.parametrize("mode", ["per_tensor", "per_row"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantisation_error_bound(mode, bits):
    rng = np.random.default_rng(bits)
    W, U = rng.normal(size=(20, 7)), rng.normal(size=(20, 20))
    mW = rng.random(W.shape) < 0.7
    q = quantize_weights({"W": W, "U": U}, {"W": mW}, bits, mode)
    s = q.scale.reshape(-1, 1)
    assert np.all(np.abs(q.q["W"]) <= 2 ** (bits - 1) - 1)
    assert np.all(q.q["W"][~mW] == 0)
    for k, w in (("W", np.where(mW, W, 0)), ("U", U)):
        assert np.all(np.abs(w - q.dequantized(k)) <= s / 2 + 1e-12)
    assert q.scale.shape == ((1,) if mode == "per_tensor" else (20,))
    # round half to even
    q2 = quantize_weights({"W": np.array([[0.5, 1.5, 2.5, -2.5, 3.0]])}, {}, 3, "per_tensor")
    assert q2.q["W"].tolist() == [[0, 2, 2, -2, 3]]


def test_decay_quantisation():
    a, dash = quantize_decay(np.exp(-1e-3 / 0.02), "bitshift", 4)
    assert dash == round(np.log2(1 / (1 - np.exp(-1e-3 / 0.02)))) and a == 1 - 2.0 ** -dash
    a, code = quantize_decay(0.9, "fixed_point_decay", 12)
    assert code == round(0.1 * 4096) and abs(a - 0.9) <= 0.5 / 4096


def _lif(d, n, rec=True, **kw):
    torch.manual_seed(0)
    return LIF(d, n, tau_mem=0.02, tau_syn=0.005, dt=1e-3, recurrent=rec, dtype=torch.float64, **kw)


def _rules(report):
    return {v.rule for v in report.violations}


def test_mapping_reports_each_rule():
    big = Stack(_lif(40, 300), _lif(300, 10))
    r = N.map_to_hardware(big, "xylo_audio2")
    assert {"input_channels", "output_channels", "recurrent_outputs"} <= _rules(r)
    v = [v for v in r.violations if v.rule == "input_channels"][0]
    assert (v.layer, v.value, v.limit) == (0, 40, 16)
    assert [v for v in r.violations if v.rule == "recurrent_outputs"][0].model_change
    r = N.map_to_hardware(big, "speck")
    assert {"recurrence", "neuron_model", "time_constant"} <= _rules(r)
    assert all(v.model_change for v in r.violations if v.rule in ("recurrence", "neuron_model"))
    r = N.map_to_hardware(big, "truenorth")
    assert {"cores_per_chip", "fan_in_max", "fan_out_max", "neuron_model", "time_constant"} - _rules(r) == {"cores_per_chip"}
    r = N.map_to_hardware(Stack(_lif(4, 600, rec=False), _lif(600, 2, rec=False)), "xylo_imu")
    assert "neurons_per_chip" in _rules(r) or "core_capacity" in _rules(r)
    r = N.map_to_hardware(EGRU(4, 8, dtype=torch.float64), "loihi1")
    assert {"neuron_model", "graded_spikes"} <= _rules(r)
    assert "neuron_model" not in _rules(N.map_to_hardware(EGRU(4, 8, dtype=torch.float64), "loihi2"))
    # a tiny weight scale makes the threshold register overflow: Xylo's 16-bit threshold, a generic 16-bit state
    m = _lif(4, 8)
    with torch.no_grad():
        m.W.mul_(1e-6), m.U.mul_(1e-6)
    rules = _rules(N.map_to_hardware(m, "xylo_audio2"))
    assert {"threshold_bits", "min_neuron_layers", "reset_mode"} <= rules and "state_bits" not in rules
    assert "state_bits" in _rules(N.map_to_hardware(m, "speck"))
    ok = N.map_to_hardware(Stack(_lif(8, 50), _lif(50, 4, rec=False)), "loihi2")
    assert ok.ok, ok.summary()


def test_placement_respects_core_limits_and_masks():
    torch.manual_seed(1)
    masks = {"W": torch.rand(300, 40) < 0.3, "U": torch.rand(300, 300) < 0.1}
    m = _lif(40, 300, masks=masks)
    prof = N.load_profile("truenorth")
    r = N.map_to_hardware(m, prof)
    assert len(r.cores) > 1 and all(c.neurons <= 256 and c.axons <= 256 for c in r.cores)
    assert sum(c.neurons for c in r.cores) == 300
    assert (r.placement[0] >= 0).all()
    live = int(masks["W"].sum() + masks["U"].sum())
    assert sum(c.synapses for c in r.cores) <= live


def test_quantised_simulation_is_reported():
    net = Stack(_lif(6, 30), _lif(30, 3, rec=False))
    with torch.no_grad():
        net.layers[0].W.mul_(30)
        net.layers[1].W.mul_(30)
    x = (torch.rand(50, 4, 6, dtype=torch.float64) < 0.3).double()
    r = N.map_to_hardware(net, "loihi1", x=x, loss_fn=lambda y, t: (y ** 2).sum(), labels=np.zeros(4, int))
    s = r.simulation
    assert s.spikes_float > 0 and 0 <= s.timing_jaccard <= 1 and s.loss_float is not None
    r16 = N.map_to_hardware(net, "spinnaker2", x=x)
    r2 = N.map_to_hardware(net, N.HardwareProfile(**{**N.load_profile("loihi1").__dict__, "weight_bits": 2}), x=x)
    assert r16.simulation.timing_jaccard >= r2.simulation.timing_jaccard


def test_every_number_is_cited_or_marked_unverified():
    """Each non-null number cites a retrieved source (URL/DOI/arXiv) or says 'UNVERIFIED: <why>'."""
    for name in ALL:
        st = N.load_profile(name).source_status()
        assert "uncited" not in st.values(), (name, {k: v for k, v in st.items() if v == "uncited"})
        for f, v in st.items():
            if v == "unverified":
                assert len(N.load_profile(name).sources[f]) > len("UNVERIFIED: ") + 20, (name, f)


# Counts of verified / UNVERIFIED numbers per built-in profile, so a reader sees them
# (update together with docs/neuromorphic.md, section 1, when a source is checked).
UNVERIFIED_COUNTS = {"brainscales2": (6, 2), "loihi1": (7, 3), "loihi2": (7, 5), "speck": (8, 1),
                     "spinnaker2": (3, 3), "truenorth": (6, 4), "xylo_audio2": (13, 0), "xylo_audio3": (12, 1),
                     "xylo_imu": (12, 1)}


def test_unverified_counts():
    got = {}
    for name in ALL:
        st = N.load_profile(name).source_status()
        got[name] = (sum(v == "verified" for v in st.values()), sum(v == "unverified" for v in st.values()))
    assert got == UNVERIFIED_COUNTS
    assert sum(u for _, u in got.values()) == 20


def _drift_net():
    torch.manual_seed(3)
    # Euler decay 1 - dt/tau: alpha_mem = 0.85 (Xylo bit shift -> 1 - 2^-3 = 0.875), alpha_syn = 0.5 (exact)
    return Stack(LIF(4, 6, tau_mem=1e-3 / 0.15, tau_syn=2e-3, dt=1e-3, v_th=1.0, integration="euler",
                     reset="subtract", dtype=torch.float64),
                 LIF(6, 3, tau_mem=1e-3 / 0.15, tau_syn=2e-3, dt=1e-3, integration="euler", recurrent=False,
                     reset="subtract", dtype=torch.float64))


def test_parameter_drift_is_reported_as_warnings():
    rep = N.map_to_hardware(_drift_net(), "xylo_audio2")
    assert rep.ok  # drift is a warning, not a violation
    am = [w for w in rep.warnings if w.parameter == "alpha_mem"]
    assert [w.layer for w in am] == [0, 1]
    assert am[0].float_value == pytest.approx(0.85) and am[0].hardware_value == 0.875
    assert am[0].rel_error == pytest.approx(0.025 / 0.85)
    assert "dash 3" in am[0].detail and "bitshift" in am[0].detail
    assert not [w for w in rep.warnings if w.parameter == "alpha_syn"]  # 0.5 = 1 - 2^-1 exactly
    for w in rep.warnings:
        if w.parameter == "v_th":  # threshold register = round(v_th * gain): off by at most half a register step
            gain = float(w.detail.split("gain ")[1].split()[0])
            assert abs(w.hardware_value - w.float_value) <= 0.5 / gain * (1 + 1e-9)
            assert w.hardware_value == pytest.approx(rep.quantized_network.layers[w.layer].v_th)
    text = rep.summary()
    assert "WARNING parameter drift: layer 0 alpha_mem: float 0.85 -> hardware 0.875 (+2.94%)" in text
    assert "parameter-drift warning(s)" in text.splitlines()[0]
    assert rep.to_dict()["warnings"][0]["layer"] == 0
    # Loihi's 12-bit fixed-point decay: 0.15 * 4096 = 614.4 -> 614, a tiny drift; float chips: none
    lo = [w for w in N.map_to_hardware(_drift_net(), "loihi2").warnings if w.parameter == "alpha_mem"]
    assert lo and lo[0].hardware_value == pytest.approx(1 - 614 / 4096) and lo[0].rel_error < 1e-3
    sp = N.map_to_hardware(_drift_net(), "spinnaker2").warnings
    assert not [w for w in sp if w.parameter.startswith("alpha")]


def test_cli_prints_parameter_drift(tmp_path, capsys):
    import argparse
    from evrtrl.neuromorphic import cli

    src = tmp_path / "m.h5"
    N.export_bundle(_drift_net(), src)
    ap = argparse.ArgumentParser()
    cli.register(ap.add_subparsers(dest="cmd"))
    a = ap.parse_args(["export", str(src), "--target", "xylo_audio2", "-o", str(tmp_path / "o.h5")])
    assert a.func(a) == 0  # warnings do not change the exit code
    out = capsys.readouterr().out
    assert "WARNING parameter drift: layer 0 alpha_mem" in out and "0.875" in out
