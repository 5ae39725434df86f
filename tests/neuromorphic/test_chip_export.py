"""Register quantisation, integer chip simulation and the Xylo / netx exporters (no vendor package needed)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import evrtrl.neuromorphic as N
from evrtrl.errors import ConfigError, UnsupportedError
from evrtrl.models import LIF, Stack
from evrtrl.neuromorphic.chipsim import NetxLayer, read_netx, simulate_export, simulate_loihi, simulate_xylo
from evrtrl.neuromorphic.registers import XYLO_SPEC_KEYS, layer_registers, neuron_constants
from evrtrl.neuromorphic.vendor_export import export_netx, export_xylo


def _lif(d, n, rec=True, seed=0, scale=6.0, **kw):
    torch.manual_seed(seed)
    p = dict(tau_mem=16e-3, tau_syn=4e-3, dt=1e-3, integration="euler", reset="subtract")
    p.update(kw)
    m = LIF(d, n, recurrent=rec, dtype=torch.float64, **p)
    with torch.no_grad():
        m.W.mul_(scale)
    return m


def _net(**kw):
    return Stack(_lif(8, 30, **kw), _lif(30, 4, rec=False, seed=1, **kw))


def test_xylo_threshold_register_folds_the_gain():
    """threshold = round(v_th * alpha_syn * 2^k / (s * b)), b = dt/tau_mem (the issue's unit fix)."""
    L = N.network_from_model(_lif(8, 30, v_th=1.3)).layers[0]
    for k in (0, 3):
        r = layer_registers(L, 0, "xylo", 8, weight_shift=k)
        s = max(np.abs(L.W).max(), np.abs(L.U).max()) / 127
        want = round(1.3 * (1 - 1e-3 / 4e-3) * 2 ** k / (s * 1e-3 / 16e-3))
        assert (r.threshold == want).all()
        assert (r.decay_mem == 4).all() and (r.decay_syn == 2).all()  # log2(16), log2(4)
    lo = layer_registers(L, 0, "loihi", 8)
    assert (lo.threshold == round(1.3 / (s * 1e-3 / 16e-3))).all()  # vThMant: no alpha, no shift
    assert (lo.decay_mem == round(4096 / 16)).all() and (lo.decay_syn == 1024).all()


def test_per_neuron_parameters_broadcast():
    """Registers treat every neuron parameter as a per-neuron array (scalars broadcast)."""
    L = N.network_from_model(_lif(4, 6)).layers[0]
    L.v_th = np.linspace(0.5, 1.5, 6)
    L.tau_mem = np.array([8e-3, 16e-3, 32e-3, 16e-3, 16e-3, 16e-3])
    r = layer_registers(L, 0, "xylo", 8)
    assert r.threshold.shape == (6,) and np.all(np.diff(r.threshold[3:]) > 0)
    assert list(r.decay_mem[:3]) == [3, 4, 5]
    c = neuron_constants(L)
    assert c["b"].shape == (6,) and c["b"][0] == pytest.approx(1e-3 / 8e-3)


def test_register_widths_are_checked():
    # tau_mem = 100 s: b = 1e-5, the Xylo threshold overflows 16 bits and dash = 17 > 15
    rep = N.map_to_hardware(_net(tau_mem=100.0), "xylo_audio2")
    rules = {v.rule for v in rep.violations}
    assert {"threshold_bits", "decay_code"} <= rules
    msg = [v.message for v in rep.violations if v.rule == "threshold_bits"][0]
    assert "bits of weight precision lost" in msg and "largest weight code of" in msg
    # Loihi: iDecay 0 (tau_syn huge) and vDecay 4096 (tau_mem tiny) are not representable
    lo = N.map_to_hardware(_net(tau_syn=1e4, reset="zero"), "loihi2")
    assert any(v.rule == "decay_code" and "iDecay = 0" in v.message for v in lo.violations)
    lo = N.map_to_hardware(_net(tau_mem=1e-4, tau_syn=1e-4 * 1.5, integration="exact", reset="zero"), "loihi2")
    assert any(v.rule == "decay_code" and "vDecay = 4096" in v.message for v in lo.violations)
    # v_th 400 overflows Xylo's threshold; Loihi's 17-bit mantissa too (v_th / (s b) ~ 1.6e6)
    assert "threshold_bits" in {v.rule for v in N.map_to_hardware(_net(v_th=400.0), "xylo_audio2").violations}
    assert "threshold_bits" in {v.rule for v in N.map_to_hardware(_net(v_th=400.0, reset="zero"), "loihi2").violations}
    assert N.map_to_hardware(_net(), "xylo_audio2").ok
    assert N.map_to_hardware(_net(reset="zero"), "loihi2").ok


def test_profile_rules():
    rules = lambda m, p: {v.rule for v in N.map_to_hardware(m, p).violations}  # noqa: E731
    assert "reset_mode" in rules(_net(reset="zero"), "xylo_audio2")       # Xylo subtracts only
    assert "reset_mode" in rules(_net(), "loihi2")                        # Lava's LIF resets to zero
    assert "min_neuron_layers" in rules(_lif(8, 4, rec=False), "xylo_audio2")
    wide = Stack(_lif(8, 129, rec=False), _lif(129, 4, rec=False))
    assert {"max_input_connected_neurons", "max_output_connected_neurons"} <= rules(wide, "xylo_imu")
    assert not {"max_input_connected_neurons"} & rules(wide, "xylo_audio2")
    # Speck: one layer per core, 9 cores: ten small layers do not fit
    deep = Stack(*[_lif(4, 4, rec=False, seed=i) for i in range(10)])
    r = N.map_to_hardware(deep, "speck")
    assert len(r.cores) == 10 and "cores_per_chip" in {v.rule for v in r.violations}
    assert N.load_profile("loihi2").graded_spike_bits == 24 and N.load_profile("loihi2").threshold_bits == 17


def test_simulate_xylo_by_hand():
    """One hidden and one output neuron, values worked out from xylosim's C++ by hand."""
    spec = {"weights_in": np.array([[[127, 0]]]), "weights_rec": np.zeros((1, 1, 2), int),
            "weights_out": np.array([[2]]), "dash_mem": np.array([4]), "dash_mem_out": np.array([4]),
            "dash_syn": np.array([4]), "dash_syn_2": np.array([4]), "dash_syn_out": np.array([4]),
            "threshold": np.array([1000]), "threshold_out": np.array([20]), "weight_shift_in": 3,
            "weight_shift_rec": 0, "weight_shift_out": 0, "dt": 1e-3}
    x = np.zeros((3, 1, 1), int)
    x[0, 0, 0] = 20  # clipped to 15 input spikes
    h, o = simulate_xylo(spec, x).spikes
    # t0: i = 15 * (127 << 3) = 15240; i -= 15240 >> 4 = 952 -> 14288; v = 14288 -> 14 spikes, v = 288
    assert h[0, 0, 0] == 14
    # t1: output gets 14 * 2 = 28; i -= 28 >> 4 -> 27; v = 27 >= 20 -> one spike (outputs fire at most once)
    assert o[0, 0, 0] == 0 and o[1, 0, 0] == 1
    # hidden t1: i = 14288 - 893 = 13395; v = 288 - 18 + 13395 = 13665 -> 13 spikes
    assert h[1, 0, 0] == 13


def test_simulate_xylo_saturates_exactly():
    spec = {"weights_in": np.full((2, 1, 1), 127), "weights_rec": np.zeros((1, 1, 1), int),
            "weights_out": np.zeros((1, 1), int), "dash_mem": np.array([1]), "dash_mem_out": np.array([1]),
            "dash_syn": np.array([1]), "dash_syn_2": np.array([1]), "dash_syn_out": np.array([1]),
            "threshold": np.array([24576]), "threshold_out": np.array([1]), "weight_shift_in": 6,
            "weight_shift_rec": 0, "weight_shift_out": 0, "dt": 1e-3}
    x = np.full((2, 1, 2), 15)
    run = simulate_xylo(spec, x)
    assert run.saturations > 0
    # 30 spikes of 127 << 6 = 8128 saturate i at 32767; i -= 32767 >> 1 -> 16384; v = 16384 < 24576
    assert run.spikes[0][0, 0, 0] == 0
    # t1: i saturates again -> 16384; v = 16384 - 8192 + 16384 = 24576 >= threshold: one spike
    assert run.spikes[0][1, 0, 0] == 1


def test_simulate_loihi_by_hand():
    """One neuron, weight 10, iDecay 2048, vDecay 0, vThMant 5 (Lava: u += a << 6, spike v > vth << 6)."""
    L = NetxLayer(np.array([[10]]), None, 2048, 0, 5)
    x = np.zeros((5, 1, 1), int)
    x[0] = 1
    z = simulate_loihi([L], x).spikes[0][:, 0, 0]
    # t0: the Dense buffer is empty; t1: u = 640, v = 640 > 320 -> spike, v = 0; t2: u = 320, v = 320 (not >);
    # t3: u = 160, v = 480 -> spike
    assert list(z) == [0, 1, 0, 1, 0]


def test_export_xylo_file(tmp_path):
    m = _net()
    p = tmp_path / "net.npz"
    regs = export_xylo(m, p)
    with np.load(p) as z:
        assert tuple(z.files) == XYLO_SPEC_KEYS
        assert z["weights_in"].shape == (8, 30, 2) and z["weights_out"].shape == (30, 4)
        assert np.abs(z["weights_rec"]).max() <= 127 and z["threshold"].max() <= 32767
        assert int(z["weight_shift_in"]) == regs[0].weight_shift
    x = (np.random.default_rng(0).random((100, 2, 8)) < 0.3).astype(int)
    sp = simulate_export(p, x)
    assert [s.shape for s in sp] == [(100, 2, 30), (100, 2, 4)]
    with pytest.raises(UnsupportedError, match="reset"):
        export_xylo(_net(reset="zero"), tmp_path / "z.npz")
    with pytest.raises(UnsupportedError, match="at least 2"):
        export_xylo(_lif(8, 4, rec=False), tmp_path / "one.npz")
    assert not (tmp_path / "z.npz").exists()


def test_weight_shift_calibration(tmp_path):
    """With calibration input the exporter backs off the shift until nothing saturates."""
    m = _net(scale=30.0)
    x = np.random.default_rng(1).integers(0, 4, (60, 2, 8))
    free = export_xylo(m, tmp_path / "a.npz")[0].weight_shift
    cal = export_xylo(m, tmp_path / "b.npz", x=x)[0].weight_shift
    assert cal <= free
    from evrtrl.neuromorphic.chipsim import simulate_export_run
    assert simulate_export_run(tmp_path / "b.npz", x).saturations == 0 or cal == 0


def test_export_netx_file(tmp_path):
    m = _net(reset="zero")
    p = tmp_path / "net.net"
    regs = export_netx(m, p)
    with h5py.File(p, "r") as f:
        assert f["layer/0/type"][()] == b"dense_rec" and f["layer/1/type"][()] == b"dense"
        assert f["layer/0/weight"].shape == (30, 8) and f["layer/0/weight_rec"].shape == (30, 30)
        n = f["layer/0/neuron"]
        assert n["type"][()] == b"CUBA" and int(n["vThMant"][()]) == regs[0].threshold[0]
        assert int(n["iDecay"][()]) == 1024 and int(n["vDecay"][()]) == 256
    layers = read_netx(p)
    assert len(layers) == 2 and layers[0].weight_rec is not None
    x = (np.random.default_rng(0).random((50, 2, 8)) < 0.3).astype(int)
    assert [s.shape for s in simulate_export(p, x)] == [(50, 2, 30), (50, 2, 4)]
    with pytest.raises(UnsupportedError, match="reset"):
        export_netx(_net(), tmp_path / "s.net")
    with pytest.raises(ConfigError, match="does not exist"):
        simulate_export(tmp_path / "missing.net", x)


@pytest.mark.parametrize("target", ["xylo_audio2", "loihi2"])
def test_map_to_hardware_simulates_the_chip(target):
    torch.manual_seed(0)
    m = _net(reset="subtract" if target == "xylo_audio2" else "zero", scale=12.0)
    x = (torch.rand(200, 4, 8, dtype=torch.float64) < 0.3).double()
    labels = np.zeros(4, int)
    rep = N.map_to_hardware(m, target, x=x, labels=labels)
    s = rep.simulation
    assert s.source == "chip" and len(s.layers) == 2 and s.acc_quant is not None
    assert s.delays == ([0, 1] if target == "xylo_audio2" else [1, 2])
    assert all(d["spikes_float"] > 100 for d in s.layers)
    assert 0.5 < s.layers[0]["spikes_quant"] / s.layers[0]["spikes_float"] < 2
    assert "chip simulation vs float" in rep.summary()
    # a chip that has no register model keeps the quantised float copy
    assert N.map_to_hardware(m, "spinnaker2", x=x).simulation.source == "float copy"


def _cli(argv):
    """The export command under the CLI error contract (an error is one line, exit status 2)."""
    from evrtrl.neuromorphic import cli

    return cli.main(argv)


def test_cli_run_dir_vendor_formats_and_readout(tmp_path, capsys):
    from evrtrl.models import save_model
    from evrtrl.models import Readout

    run = tmp_path / "run"
    run.mkdir()
    m = _net()
    ro = Readout(4, 3, dtype=torch.float64)
    save_model(m, run / "model.h5", readout=ro)
    x = (np.random.default_rng(0).random((100, 2, 8)) < 0.3).astype(np.int64)
    np.save(tmp_path / "cal.npy", x)
    assert _cli(["export", str(run), "--format", "xylo", "--calibration", str(tmp_path / "cal.npy"),
                 "-o", str(tmp_path / "x.npz")]) == 0
    out = capsys.readouterr().out
    assert "readout runs on the host" in out and "chip simulation vs float" in out and "xylo registers" in out
    with np.load(tmp_path / "x.npz") as z:
        assert tuple(z.files) == XYLO_SPEC_KEYS
    # the readout goes into bundles and NIR
    assert _cli(["export", str(run), "-o", str(tmp_path / "b.h5")]) == 0
    b = N.read_bundle(tmp_path / "b.h5")
    assert np.allclose(b.readout["weight"], ro.weight.detach().numpy())
    assert _cli(["export", str(run), "--format", "nir", "-o", str(tmp_path / "r.nir")]) == 0
    import nir
    g = nir.read(str(tmp_path / "r.nir"))
    assert "readout" in g.nodes and ("readout", "output") in [tuple(e) for e in g.edges]
    # Loihi refuses the subtractive reset: exit 2, nothing written
    assert _cli(["export", str(run), "--format", "netx", "-o", str(tmp_path / "n.net")]) == 2
    assert "reset" in capsys.readouterr().err and not (tmp_path / "n.net").exists()
    # clean errors for a directory that is not a run and a file that is not HDF5
    (tmp_path / "empty").mkdir()
    assert _cli(["export", str(tmp_path / "empty"), "-o", str(tmp_path / "e.h5")]) == 2
    assert "without model.h5" in capsys.readouterr().err
    (tmp_path / "junk.h5").write_text("not hdf5")
    assert _cli(["export", str(tmp_path / "junk.h5"), "-o", str(tmp_path / "e.h5")]) == 2
    assert "nor an HDF5 file" in capsys.readouterr().err


@pytest.mark.parametrize("conv", ["rockpool", "snntorch"])
def test_nir_conventions_read_back_and_drop_v_reset(conv, tmp_path):
    import evrtrl

    m = _net(reset="zero")
    p = tmp_path / f"{conv}.nir"
    N.export_nir(m, p, nir_convention=conv)
    with h5py.File(p, "r") as f:
        names = []
        f.visit(names.append)
        assert not [n for n in names if n.endswith("v_reset")]  # nir <= 1.0.4 has no v_reset field
    import nir
    g = nir.read(str(p))
    neurons = [v for v in g.nodes.values() if type(v).__name__ == "CubaLIF"]
    neurons += [w for v in g.nodes.values() if hasattr(v, "nodes") for w in v.nodes.values()
                if type(w).__name__ == "CubaLIF"]
    dt = 1e-4 if conv == "snntorch" else 1e-3
    for c in neurons:
        if conv == "rockpool":  # Rockpool's from_nir: dt = tau_mem / (1 + r)
            assert np.allclose(c.tau_mem / (1 + c.r), 1e-3)
        else:  # snnTorch asserts r = tau_mem / dt at its dt = 1e-4 and rescales by w_in dt / tau_syn
            assert np.allclose(c.r, c.tau_mem / dt) and np.allclose(c.w_in * dt / c.tau_syn, 1.0)
    x = (torch.rand(100, 2, 8, generator=torch.Generator().manual_seed(0)) < 0.3).double()
    back = N.import_nir(p, dt=dt, reset="zero")
    a, b = evrtrl.simulate(m, x), evrtrl.simulate(back, x)
    for la, lb in zip(a.layers, b.layers):
        assert torch.equal(la.spikes, lb.spikes)
