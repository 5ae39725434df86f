"""NIR import refuses inconsistent graphs with a FormatError naming file, node and field (issue 12).

Each test builds a small valid graph with the ``nir`` package, breaks one thing, writes it with
``nir.write`` and imports it with :func:`import_nir`.
"""
import re

import nir
import numpy as np
import pytest

from evrtrl import neuromorphic as N
from evrtrl.errors import FormatError

D, H, M = 3, 4, 2  # input size, hidden layer (recurrent CubaLIF), output layer (LIF)


def graph_parts(rng=None):
    rng = rng or np.random.default_rng(0)
    nodes = {
        "input": nir.Input(input_type={"input": np.array([D])}),
        "fc1": nir.Affine(weight=rng.normal(size=(H, D)), bias=rng.normal(size=H)),
        "lif1": nir.CubaLIF(tau_syn=np.full(H, 5e-3), tau_mem=np.full(H, 1e-2), r=np.ones(H),
                            v_leak=np.zeros(H), v_threshold=np.ones(H), v_reset=np.zeros(H),
                            w_in=np.full(H, 50.0)),
        "w_rec": nir.Linear(weight=rng.normal(size=(H, H))),
        "fc2": nir.Linear(weight=rng.normal(size=(M, H))),
        "lif2": nir.LIF(tau=np.full(M, 2e-2), r=np.ones(M), v_leak=np.zeros(M), v_threshold=np.ones(M),
                        v_reset=np.zeros(M)),
        "output": nir.Output(output_type={"output": np.array([M])}),
    }
    edges = [("input", "fc1"), ("fc1", "lif1"), ("lif1", "w_rec"), ("w_rec", "lif1"), ("lif1", "fc2"),
             ("fc2", "lif2"), ("lif2", "output")]
    return nodes, edges


def write(tmp_path, nodes, edges, name="g.nir"):
    p = tmp_path / name
    # type_check=False: nir's own type inference would refuse some of these graphs at construction;
    # files written by other tools (or edited) need not have passed it, and read_graph falls back to it
    nir.write(p, nir.NIRGraph(nodes=nodes, edges=edges, metadata={}, type_check=False))
    return p


def refused(path, *words):
    """import_nir(path) raises FormatError whose message names the file and every word given."""
    with pytest.raises(FormatError) as ei:
        N.import_nir(path, dt=1e-4)
    msg = str(ei.value)
    for w in (str(path), *words):
        assert re.search(re.escape(w), msg), (w, msg)
    return msg


def test_the_valid_graph_imports(tmp_path):
    m = N.import_nir(write(tmp_path, *graph_parts()), dt=1e-4)
    assert m.nir_provenance["input_size"] == D


def test_input_shape_disagreeing_with_first_weight(tmp_path):
    nodes, edges = graph_parts()
    nodes["input"] = nir.Input(input_type={"input": np.array([D + 2])})
    refused(write(tmp_path, nodes, edges), "'input'", "input_type", f"({D},)", f"({D + 2},)")


def test_output_shape_disagreeing_with_last_layer(tmp_path):
    nodes, edges = graph_parts()
    nodes["output"] = nir.Output(output_type={"output": np.array([M + 1])})
    refused(write(tmp_path, nodes, edges), "'output'", "output_type", f"({M},)", f"({M + 1},)")


@pytest.mark.parametrize("node,field,bad", [
    ("fc1", "weight", np.nan), ("w_rec", "weight", np.inf), ("fc2", "weight", -np.inf),
    ("fc1", "bias", np.nan), ("lif1", "tau_mem", np.nan), ("lif1", "tau_syn", np.inf),
    ("lif2", "tau", np.nan), ("lif1", "v_threshold", np.inf), ("lif2", "v_reset", np.nan),
])
def test_non_finite_values(tmp_path, node, field, bad):
    nodes, edges = graph_parts()
    a = np.array(getattr(nodes[node], field), dtype=np.float64)
    a.flat[1] = bad
    setattr(nodes[node], field, a)
    refused(write(tmp_path, nodes, edges), repr(node), repr(field), "NaN or infinity")


def test_cycle_of_weight_nodes_without_neuron(tmp_path):
    nodes, edges = graph_parts()
    nodes["wa"] = nir.Linear(weight=np.eye(H))
    nodes["wb"] = nir.Affine(weight=np.eye(H), bias=np.zeros(H))
    edges += [("wa", "wb"), ("wb", "wa")]
    msg = refused(write(tmp_path, nodes, edges), "'wa'", "'wb'", "cycle", "neuron")
    assert "edges" in msg


@pytest.mark.parametrize("node", ["lif1", "lif2"])
def test_threshold_not_above_reset(tmp_path, node):
    nodes, edges = graph_parts()
    n = H if node == "lif1" else M
    vr = np.zeros(n)
    vr[1] = 1.0  # == v_threshold for neuron 1 only
    nodes[node].v_reset = vr
    refused(write(tmp_path, nodes, edges), repr(node), "'v_threshold'", "'v_reset'", "neuron 1")


@pytest.mark.parametrize("node,field,bad", [("lif1", "tau_syn", 0.0), ("lif1", "tau_mem", -1e-3),
                                            ("lif2", "tau", 0.0)])
def test_non_positive_time_constant(tmp_path, node, field, bad):
    nodes, edges = graph_parts()
    a = np.array(getattr(nodes[node], field), dtype=np.float64)
    a[0] = bad
    setattr(nodes[node], field, a)
    refused(write(tmp_path, nodes, edges), repr(node), repr(field), "positive")


def test_edge_naming_a_missing_node(tmp_path):
    nodes, edges = graph_parts()
    edges += [("lif2", "ghost")]
    refused(write(tmp_path, nodes, edges), "'ghost'", "edges", "does not exist")
