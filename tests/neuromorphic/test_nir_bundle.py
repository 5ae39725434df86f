
import h5py
import numpy as np
import pytest
import torch

import evrtrl
from evrtrl.errors import FormatError, UnsupportedError
from evrtrl.models import EGRU, LIF, Stack
from evrtrl import neuromorphic as N
from evrtrl.neuromorphic.nir_io import flatten_graph

try:
    import nir
except ImportError:  # the 'sim' extra is not installed: the NIR tests skip, the bundle tests run
    nir = None
needs_nir = pytest.mark.skipif(nir is None, reason="needs nir, the 'sim' extra: pip install 'evrtrl[sim]'")

GRAPHS = ["braille_noDelay_bias_zero.nir", "braille_noDelay_noBias_subtract.nir", "lif_norse.nir",
          "two_lif_neurons.nir"]
FIELDS = ("weight", "bias", "tau", "tau_mem", "tau_syn", "r", "v_leak", "v_threshold", "v_reset", "w_in")


def assert_same_graph(a, b):
    na, ea, _ = flatten_graph(a)
    nb, eb, _ = flatten_graph(b)
    assert set(na) == set(nb) and set(ea) == set(eb)
    for k in na:
        assert type(na[k]) is type(nb[k]), k
        for f in FIELDS:
            if hasattr(na[k], f):
                x, y = np.asarray(getattr(na[k], f)), np.asarray(getattr(nb[k], f))
                assert x.shape == y.shape and x.dtype == y.dtype, (k, f)
                np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-7 * max(1.0, np.abs(x).max()), err_msg=f"{k}.{f}")


@needs_nir
@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("nested", [False, True])
def test_round_trip_shared_graphs(shared_data, tmp_path, name, nested):
    src = shared_data / "nir" / name
    m = N.import_nir(src, dt=1e-4)
    out = tmp_path / "rt.nir"
    N.export_nir(m, out, nested=nested)
    g = nir.read(out)
    assert_same_graph(nir.read(src), g)
    if nested:
        assert any(isinstance(v, nir.NIRGraph) for v in g.nodes.values()) == ("braille" in name)
    assert float(g.metadata["evrtrl.dt"]) == 1e-4


@needs_nir
def test_braille_import_structure(shared_data):
    """Biases import as the neurons' bias (no extra input channel, no relay neurons)."""
    m = N.import_nir(shared_data / "nir" / "braille_noDelay_bias_zero.nir", dt=1e-4)
    assert m.layers[0].W.shape == (38, 12) and m.layers[1].W.shape == (7, 38)
    g = nir.read(shared_data / "nir" / "braille_noDelay_bias_zero.nir")
    n = g.nodes["lif1.lif"]
    gain = n.r * n.w_in * 1e-4 / n.tau_syn
    np.testing.assert_allclose(m.layers[0].U.detach().numpy(), gain[:, None] * g.nodes["lif1.w_rec"].weight,
                               rtol=1e-6)
    b = gain * (g.nodes["fc1"].bias.astype(np.float64) + g.nodes["lif1.w_rec"].bias)
    np.testing.assert_allclose(m.layers[0].bias.numpy(), b, rtol=1e-12)
    n2 = g.nodes["lif2"]
    np.testing.assert_allclose(m.layers[1].bias.numpy(), n2.r * n2.w_in * 1e-4 / n2.tau_syn * g.nodes["fc2"].bias,
                               rtol=1e-6)
    # with zero input only the biases drive the network
    out = evrtrl.simulate(m, torch.zeros(20, 1, 12, dtype=torch.float64))
    assert out.layers[0].spikes.sum() > 0


@needs_nir
def test_cnn_is_rejected_naming_node(shared_data):
    with pytest.raises(UnsupportedError, match=r"node '0'.*Conv2d.*'type'"):
        N.import_nir(shared_data / "nir" / "cnn_sinabs.nir", dt=1e-3)


@needs_nir
def test_corrupt_field_is_named(tmp_path):
    g = nir.NIRGraph.from_list(nir.Linear(weight=np.ones((3, 2))),
                               nir.CubaLIF(tau_syn=np.array([1e-3, -2e-3, 1e-3]), tau_mem=np.full(3, 1e-2),
                                           r=np.ones(3), v_leak=np.zeros(3), v_threshold=np.ones(3)))
    nir.write(tmp_path / "g.nir", g)
    with pytest.raises(FormatError, match=r"cubalif.*'tau_syn'.*positive"):
        N.import_nir(tmp_path / "g.nir", dt=1e-4)
    with pytest.raises(evrtrl.ConfigError, match="dt"):
        N.import_nir(tmp_path / "g.nir")


@needs_nir
def test_export_of_library_model_and_egru_refused(tmp_path):
    m = Stack(LIF(3, 5, tau_mem=0.02, tau_syn=0.005, dt=1e-3, dtype=torch.float64),
              LIF(5, 2, tau_mem=0.02, tau_syn=0.005, dt=1e-3, recurrent=False, dtype=torch.float64))
    g = N.export_nir(m, tmp_path / "m.nir")
    assert {type(v).__name__ for v in g.nodes.values()} == {"Input", "Linear", "CubaLIF", "Output"}
    assert ("lif1.lif", "lif1.w_rec") in g.edges and ("lif1.w_rec", "lif1.lif") in g.edges
    back = N.import_nir(tmp_path / "m.nir", integration="exact")  # dt from metadata
    for a, b in zip(m.layers, back.layers):
        np.testing.assert_allclose(b.W.detach().numpy(), a.W.detach().numpy(), rtol=1e-12)
    x = (torch.rand(30, 2, 3, dtype=torch.float64) < 0.5).double() * 3
    assert torch.equal(evrtrl.simulate(m, x).spikes, evrtrl.simulate(back, x).spikes)
    with pytest.raises(UnsupportedError, match="gated"):
        N.export_nir(EGRU(3, 4), tmp_path / "e.nir")
    assert not (tmp_path / "e.nir").exists()


@needs_nir
def test_imported_network_trains_with_exact_rtrl(shared_data):
    m = N.import_nir(shared_data / "nir" / "braille_noDelay_noBias_subtract.nir", dt=1e-4)
    torch.manual_seed(0)
    x = (torch.rand(25, 2, 12, dtype=torch.float64) < 0.3).double()
    loss = lambda y, t: ((y - 0.1) ** 2).sum()  # noqa: E731
    ge = evrtrl.gradients(m, x, loss, method="event")
    gb = evrtrl.gradients(m, x, loss, method="bptt")
    assert set(ge) == set(gb)
    for k in ge:
        torch.testing.assert_close(ge[k], gb[k], rtol=1e-9, atol=1e-10)


@needs_nir
def test_failed_export_leaves_target_untouched(tmp_path, monkeypatch):
    m = LIF(3, 4, tau_mem=0.02, tau_syn=0.005, dt=1e-3)
    target = tmp_path / "model.nir"
    target.write_bytes(b"old content")

    def boom(*a, **k):
        raise RuntimeError("disk full halfway")

    monkeypatch.setattr(nir, "write", boom)
    with pytest.raises(RuntimeError):
        N.export_nir(m, target)
    assert target.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["model.nir"]


def test_bundle_round_trip_egru_and_lif(tmp_path):
    torch.manual_seed(0)
    e = EGRU(5, 6, dtype=torch.float64)
    net = Stack(e, LIF(6, 3, tau_mem=0.02, tau_syn=0.005, dt=1e-3, dtype=torch.float64,
                       masks={"W": torch.rand(3, 6) < 0.5, "U": torch.rand(3, 3) < 0.5}))
    rep = N.map_to_hardware(net, "loihi2")
    p = tmp_path / "b.h5"
    N.export_bundle(net, p, mapping=rep)
    b = N.read_bundle(p)
    src = N.network_from_model(net)
    for a, c in zip(src.layers, b.network.layers):
        assert a.kind == c.kind
        for k in a.weight_names():
            np.testing.assert_array_equal(np.where(a.mask(k), a.weight(k), 0), c.weight(k))
    assert b.network.layers[1].tau_syn == 0.005 and b.network.layers[1].reset == "zero"
    np.testing.assert_array_equal(b.network.layers[0].params["theta"], src.layers[0].params["theta"])
    q, s, bits, mode = b.quantized[1]["W"]
    assert bits == 8 and np.all(np.abs(b.network.layers[1].W - q * s.reshape(-1, 1)) <= s.max() / 2 + 1e-12)
    assert b.mapping["profile"] == "loihi2" and b.placement[1].shape == (3,)
    with h5py.File(p, "r") as f:  # sparse: pruned synapses are not stored
        assert f["layers/1/weights/W/data"].shape[0] == int(net.layers[1].masks["W"].sum())
    with h5py.File(p, "a") as f:
        f.attrs["version"] = 99
    with pytest.raises(FormatError, match="content hash"):  # an edit without re-sealing is corruption
        N.read_bundle(p)
    from evrtrl.h5file import seal

    seal(p)
    with pytest.raises(FormatError, match="version"):
        N.read_bundle(p)


@needs_nir
def test_cli(tmp_path, shared_data, capsys):
    import argparse
    from evrtrl.neuromorphic import cli

    ap = argparse.ArgumentParser()
    cli.register(ap.add_subparsers(dest="cmd"))
    a = ap.parse_args(["targets"])
    assert a.func(a) == 0 and "loihi2" in capsys.readouterr().out
    out = tmp_path / "b.h5"
    src = str(shared_data / "nir" / "braille_noDelay_noBias_subtract.nir")
    # NIR carries no reset mode: read as zero reset, which Xylo (subtract only) does not implement
    a = ap.parse_args(["export", src, "--dt", "1e-4", "--target", "xylo_audio2", "--format", "bundle",
                       "-o", str(tmp_path / "z.h5")])
    assert a.func(a) == 1 and "reset_mode" in capsys.readouterr().out
    a = ap.parse_args(["export", src, "--dt", "1e-4", "--reset", "subtract", "--target", "xylo_audio2",
                       "--format", "bundle", "-o", str(out)])
    assert a.func(a) == 0 and out.exists()  # the braille net (subtract reset) fits Xylo Audio 2
    assert "fits" in capsys.readouterr().out
    a = ap.parse_args(["export", str(out), "--target", "speck", "--format", "nir", "-o", str(tmp_path / "s.nir")])
    assert a.func(a) == 1  # written, but Speck has no recurrence: exit code 1
    assert "recurrence" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["braille_noDelay_noBias_subtract.nir", "braille_noDelay_bias_zero.nir",
                                  "lif_norse.nir"])
@needs_nir
def test_norse_from_nir_agrees(shared_data, name):
    norse = pytest.importorskip("norse.torch", reason="needs Norse: pip install --no-deps norse==1.1.0 (scripts/setup.sh)")
    p = shared_data / "nir" / name
    dt = 1e-4
    mod = norse.from_nir(nir.read(p), dt=dt)
    m = N.import_nir(p, dt=dt, integration="euler", dtype=torch.float32)
    torch.manual_seed(0)
    d = m.nir_provenance["input_size"]
    x = (torch.rand(200, 4, d) < 0.2).float() * (5.0 if "lif_norse" in name else 1.0)
    state, outs = None, []
    for t in range(x.shape[0]):
        o, state = mod(x[t], state)
        outs.append(o)
    zn = torch.stack(outs).detach().numpy()
    zl = evrtrl.simulate(m, x).spikes.numpy()
    c = N.compare_spikes(zn, zl)
    if "bias" in name and "noBias" not in name:
        # see docs: the recurrent Affine bias at t = 0 (nirtorch) shifts a few spikes by one step
        assert c["count_rel_diff"] < 0.01 and c["timing_within_1"] > 0.99
    else:
        assert c["timing_jaccard"] == 1.0


def test_bundle_v2_egru_codes_round_trip_and_v1_still_read(tmp_path):
    torch.manual_seed(1)
    e = EGRU(5, 6, dtype=torch.float64)
    net = Stack(e, LIF(6, 3, tau_mem=0.02, tau_syn=0.005, dt=1e-3, dtype=torch.float64))
    rep = N.map_to_hardware(net, "loihi2")
    p = tmp_path / "e.h5"
    N.export_bundle(net, p, mapping=rep)
    b = N.read_bundle(p)
    assert b.version == 3 == N.BUNDLE_VERSION
    src = N.network_from_model(net).layers[0]
    scales = {}
    for k in ("W_u", "W_r", "W_z", "U_u", "U_r", "U_z"):
        q, s, bits, mode = b.quantized[0][k]
        ref = rep.quantization[0].gate_quantized[k[-1]]
        assert bits == 8 and mode == "per_tensor" and np.abs(q).max() <= 127
        np.testing.assert_array_equal(q, ref.q[k])          # codes exactly as the mapper made them
        np.testing.assert_array_equal(s, ref.scale)
        w = np.asarray(src.params[k])
        assert np.all(np.abs(w - q * s.reshape(-1, 1)) <= s.max() / 2 + 1e-12)
        scales.setdefault(k[-1], s)
        np.testing.assert_array_equal(scales[k[-1]], s)     # W_g and U_g share the gate's scale
    with h5py.File(p, "r") as f:
        assert f["layers/0/weights/U_r/q"].attrs["gate"] == "r"
    hw = b.quantized[1]["hw"]
    assert hw["alpha_mem"] == pytest.approx(1 - hw["decay_code_mem"] / 4096)
    assert hw["v_th"] == pytest.approx(rep.quantized_network.layers[1].v_th)
    # a version-1 file (no EGRU codes, no params/hw) is still read
    with h5py.File(p, "a") as f:
        f.attrs["version"] = 1
        for k in ("W_u", "W_r", "W_z", "U_u", "U_r", "U_z"):
            del f[f"layers/0/weights/{k}/q"]
        del f["layers/1/params/hw"]
    from evrtrl.h5file import seal

    seal(p)  # edited in place: seal again
    b1 = N.read_bundle(p)
    assert b1.version == 1 and b1.quantized[0] == {} and "hw" not in b1.quantized[1]
    np.testing.assert_array_equal(b1.network.layers[0].params["W_u"], b.network.layers[0].params["W_u"])


def _heterogeneous_graph(seed=0, *, d=5, n1=9, n2=4, norse_compatible=False):
    """A trained-looking graph: recurrent CubaLIF with per-neuron everything, Affine biases,
    then a current-free nir.LIF layer (per-neuron tau, threshold, leak).

    ``norse_compatible``: Norse's from_nir ignores v_reset and r of nir.LIF and gives the
    CubaLIF synapse the neuron's v_leak, so those are 0 (r = 1) there."""
    rng = np.random.default_rng(seed)
    u = lambda lo, hi, k: rng.uniform(lo, hi, k)  # noqa: E731
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    zero_or = lambda lo, hi, k: np.zeros(k) if norse_compatible else u(lo, hi, k)  # noqa: E731
    cuba = nir.CubaLIF(tau_syn=u(2e-3, 5e-3, n1), tau_mem=u(8e-3, 2e-2, n1), r=u(0.8, 1.5, n1),
                       v_leak=zero_or(-0.1, 0.1, n1), v_threshold=u(0.8, 1.2, n1),
                       v_reset=zero_or(-0.2, 0.0, n1), w_in=u(1.0, 3.0, n1))
    lif = nir.LIF(tau=u(5e-3, 2e-2, n2), r=np.ones(n2) if norse_compatible else u(0.7, 1.3, n2),
                  v_leak=u(-0.05, 0.05, n2), v_threshold=u(0.05, 0.15, n2),
                  v_reset=np.zeros(n2) if norse_compatible else u(-0.05, 0.0, n2))
    nodes = {
        "input": nir.Input(input_type={"input": np.array([d])}),
        "fc1": nir.Affine(weight=f32(rng.normal(0.5, 3.0, (n1, d))), bias=f32(u(0.0, 0.3, n1))),
        "lif1.lif": cuba,
        "lif1.w_rec": nir.Affine(weight=f32(rng.normal(0, 0.5, (n1, n1))), bias=f32(u(-0.1, 0.1, n1))),
        "fc2": nir.Affine(weight=f32(rng.normal(0, 1.0, (n2, n1))), bias=f32(u(-0.02, 0.02, n2))),
        "lif2": lif,
        "output": nir.Output(output_type={"output": np.array([n2])}),
    }
    edges = [("input", "fc1"), ("fc1", "lif1.lif"), ("lif1.lif", "lif1.w_rec"), ("lif1.w_rec", "lif1.lif"),
             ("lif1.lif", "fc2"), ("fc2", "lif2"), ("lif2", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={})


@pytest.mark.parametrize("integration", ["euler", "exact"])
def test_heterogeneous_graph_imports_round_trips_and_trains(tmp_path, integration):
    g = _heterogeneous_graph()
    src = tmp_path / "het.nir"
    nir.write(src, g)
    m = N.import_nir(src, dt=1e-3, integration=integration)
    l0, l1 = m.layers
    assert l0.synapse and not l1.synapse and l1.state_size == 1
    np.testing.assert_array_equal(l0.v_th.numpy(), g.nodes["lif1.lif"].v_threshold)
    np.testing.assert_array_equal(l1.tau_mem.numpy(), g.nodes["lif2"].tau)
    assert bool((l0.bias != 0).all()) and l0.W.shape == (9, 5)  # bias as bias: no extra channel
    out = tmp_path / "rt.nir"
    N.export_nir(m, out)
    g2 = nir.read(out)
    assert_same_graph(nir.read(src), g2)
    na, nb = flatten_graph(nir.read(src))[0], flatten_graph(g2)[0]
    for k in ("lif1.lif", "lif2"):  # neuron parameters exactly, not just closely
        for f in ("tau", "tau_mem", "tau_syn", "v_threshold", "v_leak", "v_reset", "r", "w_in"):
            if hasattr(na[k], f):
                np.testing.assert_array_equal(np.asarray(getattr(nb[k], f)), np.asarray(getattr(na[k], f)))
    back = N.import_nir(out, dt=1e-3, integration=integration)
    x = (torch.rand(120, 2, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) < 0.3).double()
    s1, s2 = evrtrl.simulate(m, x), evrtrl.simulate(back, x)
    assert s1.layers[0].spikes.sum() > 0 and s1.spikes.sum() > 0
    assert torch.equal(s1.spikes, s2.spikes) and torch.equal(s1.layers[0].spikes, s2.layers[0].spikes)
    # trains with exact RTRL, per-neuron thresholds and biases learned too
    mt = N.import_nir(src, dt=1e-3, integration=integration, trainable=("v_th", "bias", "tau_mem"))
    assert set(mt.layers[0].unit_parameters) == {"tau_mem", "v_th", "bias"}
    loss = lambda y, t: ((y - 0.2) ** 2).sum()  # noqa: E731
    ge = evrtrl.gradients(mt, x[:40], loss, method="event")
    gd = evrtrl.gradients(mt, x[:40], loss, method="dense")
    gb = evrtrl.gradients(mt, x[:40], loss, method="bptt")
    assert float(gb["0.v_th"].norm()) > 0 and float(gb["1.bias"].norm()) > 0
    for k in gb:
        nb_ = float(gb[k].norm())
        assert float((ge[k] - gd[k]).norm()) <= 1e-12 * max(float(gd[k].norm()), 1e-300), k
        assert float((ge[k] - gb[k]).norm()) <= 1e-10 * max(nb_, 1e-300), k


def test_current_free_library_model_exports_as_nir_lif(tmp_path):
    m = LIF(3, 4, tau_mem=[0.01, 0.02, 0.015, 0.03], dt=1e-3, synapse=False, v_th=[0.5, 0.6, 0.7, 0.8],
            bias=0.1, dtype=torch.float64, generator=torch.Generator().manual_seed(0), weight_scale=20.0)
    g = N.export_nir(m, tmp_path / "f.nir")
    assert type(g.nodes["lif1.lif"]).__name__ == "LIF" and type(g.nodes["fc1"]).__name__ == "Affine"
    back = N.import_nir(tmp_path / "f.nir", integration="exact")
    assert not back.synapse
    np.testing.assert_array_equal(back.tau_mem.numpy(), m.tau_mem.numpy())
    x = (torch.rand(60, 2, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) < 0.4).double()
    s = evrtrl.simulate(m, x).spikes
    assert s.sum() > 0 and torch.equal(s, evrtrl.simulate(back, x).spikes)


@pytest.mark.slow
def test_heterogeneous_graph_agrees_with_norse_from_nir(tmp_path):
    norse = pytest.importorskip("norse.torch")
    g = _heterogeneous_graph(3, norse_compatible=True)
    # Norse's from_nir gives the recurrent Affine no bias at t = 0 (see test_norse_from_nir_agrees)
    g.nodes["lif1.w_rec"] = nir.Linear(weight=g.nodes["lif1.w_rec"].weight)
    nir.write(tmp_path / "h.nir", g)
    dt = 1e-3
    mod = norse.from_nir(nir.read(tmp_path / "h.nir"), dt=dt)
    m = N.import_nir(tmp_path / "h.nir", dt=dt, integration="euler", dtype=torch.float32)
    x = (torch.rand(300, 3, 5, generator=torch.Generator().manual_seed(4)) < 0.3).float()
    state, outs = None, []
    for t in range(x.shape[0]):
        o, state = mod(x[t], state)
        outs.append(o)
    zn = torch.stack(outs).detach().numpy()
    zl = evrtrl.simulate(m, x).spikes.numpy()
    assert zl.sum() > 50
    assert N.compare_spikes(zn, zl)["timing_jaccard"] == 1.0


def test_bundle_per_neuron_and_current_free_round_trip(tmp_path):
    from tests.core.helpers import neuron_values

    net = Stack(LIF(3, 5, dt=1e-3, trainable=("v_th",), dtype=torch.float64, **neuron_values(5, 1)),
                LIF(5, 2, dt=1e-3, synapse=False, recurrent=False, dtype=torch.float64, bias=0.25,
                    **{k: v for k, v in neuron_values(2, 2, synapse=False).items() if k != "bias"}))
    p = tmp_path / "pn.h5"
    N.export_bundle(net, p)
    b = N.read_bundle(p)
    src = N.network_from_model(net)
    for a, c in zip(src.layers, b.network.layers):
        assert (a.synapse, a.trainable) == (c.synapse, c.trainable)
        for k in a.neuron_fields:
            np.testing.assert_array_equal(c.values_of(k), a.values_of(k))
    assert b.network.layers[1].tau_syn is None and b.network.layers[1].bias == 0.25
    with h5py.File(p, "r") as f:  # per-neuron values as datasets, shared ones as attributes
        assert f["layers/0/params/v_th"].shape == (5,) and f["layers/1/params"].attrs["bias"] == 0.25
    back = N.model_from_network(b.network, dtype=torch.float64)
    x = (torch.rand(40, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) < 0.4).double()
    assert torch.equal(evrtrl.simulate(net, x).spikes, evrtrl.simulate(back, x).spikes)


def test_bundle_v2_lif_file_written_by_hand_still_reads(tmp_path):
    """A version-2 LIF layer: scalar attributes only, no bias / synapse / trainable."""
    p = tmp_path / "v2.h5"
    with h5py.File(p, "w") as f:
        f.attrs.update(format="evrtrl-bundle", version=2, n_layers=1, input_size=2, created_by="evrtrl.neuromorphic")
        g = f.create_group("layers/0")
        g.attrs.update(kind="lif", n=2, d=2)
        g.create_group("params").attrs.update(tau_mem=0.02, tau_syn=0.005, dt=1e-3, v_th=1.0, v_leak=0.0,
                                              v_reset=0.0, reset="zero", integration="exact")
        wg = g.create_group("weights/W")
        wg.attrs["shape"] = (2, 2)
        wg.create_dataset("indptr", data=np.array([0, 1, 2]))
        wg.create_dataset("indices", data=np.array([0, 1]))
        wg.create_dataset("data", data=np.array([1.5, -0.5]))
    b = N.read_bundle(p)
    L = b.network.layers[0]
    assert b.version == 2 and L.synapse and L.bias == 0.0 and L.trainable == () and L.tau_syn == 0.005
    np.testing.assert_array_equal(L.W, [[1.5, 0.0], [0.0, -0.5]])


@pytest.mark.parametrize("kw,what", [(dict(synapse=False), "current-free"),
                                     (dict(tau_syn=0.005, v_th=[1.0, 1.1, 0.9]), "per-neuron"),
                                     (dict(tau_syn=0.005, bias=0.3), "bias")])
def test_mapping_refuses_what_it_cannot_map_by_name(kw, what):
    m = LIF(4, 3, tau_mem=0.02, dt=1e-3, **kw)
    with pytest.raises(UnsupportedError, match=f"layer 0 has .*{what}"):
        N.map_to_hardware(m, "xylo_audio2")
