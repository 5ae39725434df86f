"""HDF5 files the library did not write are read in a time-limited child first (datasets/h5guard.py)."""
from __future__ import annotations

import sys
import time

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from evrtrl.datasets import SpikeH5, h5guard  # noqa: E402
from evrtrl.datasets.h5guard import HDF5GuardError, probe_hdf5  # noqa: E402
from evrtrl.errors import FormatError  # noqa: E402


@pytest.fixture()
def h5file(tmp_path):
    p = tmp_path / "f.h5"
    with h5py.File(p, "w") as f:
        f["a"] = np.arange(100)
        f["g/b"] = np.ones((3, 4))
        f["g/b"].attrs["unit"] = "s"
        f["g/soft"] = h5py.SoftLink("/a")
    return p


def test_probe_reports_links_and_reads_everything(h5file):
    rep = probe_hdf5(h5file)
    assert rep["opened"] and rep["soft_links"] == ["g/soft"] and rep["external_links"] == [] and rep["errors"] == []


def test_probe_of_a_non_hdf5_file_defers_to_the_reader(tmp_path):
    p = tmp_path / "x.h5"
    p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    rep = probe_hdf5(p)
    assert rep["opened"] is False
    with pytest.raises(FormatError, match="x.h5"):
        len(SpikeH5(p))


def _fake_walker(tmp_path, body: str):
    script = tmp_path / "walker.py"
    script.write_text("import os, sys, time\n" + body + "\n")
    return script


def test_a_looping_libhdf5_becomes_a_format_error_in_time(tmp_path, h5file, monkeypatch):
    """Stand-in for a libhdf5 infinite loop: the child never answers; the caller gets HDF5GuardError."""
    monkeypatch.setattr(h5guard, "_WALKER", _fake_walker(tmp_path, "while True: pass"))
    t0 = time.perf_counter()
    with pytest.raises(HDF5GuardError, match=r"did not finish reading the file within 2 s") as err:
        probe_hdf5(h5file, timeout_s=2)
    assert time.perf_counter() - t0 < 10 and isinstance(err.value, FormatError)


def test_a_crashing_libhdf5_becomes_a_format_error(tmp_path, h5file, monkeypatch):
    monkeypatch.setattr(h5guard, "_WALKER", _fake_walker(tmp_path, "os.abort()"))
    with pytest.raises(HDF5GuardError, match="crashed.*SIGABRT"):
        probe_hdf5(h5file)


def test_shd_reader_goes_through_the_guard(tmp_path, h5file, monkeypatch):
    monkeypatch.setattr(h5guard, "_WALKER", _fake_walker(tmp_path, "while True: pass"))
    with pytest.raises(HDF5GuardError):
        len(SpikeH5(h5file, probe_timeout_s=1))


def test_nir_reader_goes_through_the_guard(tmp_path, shared_data, monkeypatch):
    pytest.importorskip("nir")
    from evrtrl.neuromorphic.nir_io import read_graph

    path = shared_data / "nir" / "lif_norse.nir"
    assert read_graph(path) is not None
    monkeypatch.setattr(h5guard, "_WALKER", _fake_walker(tmp_path, "while True: pass"))
    with pytest.raises(HDF5GuardError):
        read_graph(path, probe_timeout_s=1)


def test_walker_runs_without_evrtrl_or_torch(h5file):
    """The child must start fast: it imports h5py and numpy only."""
    import subprocess

    code = ("import runpy, sys; sys.argv = ['h5walk', %r]; "
            "import h5py, numpy; before = set(sys.modules)\n"
            "try:\n    runpy.run_path(%r, run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, any(m.startswith('evrtrl') for m in sys.modules))"
            % (str(h5file), str(h5guard._WALKER)))
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False False"


def _checkpoint_like(path):
    """A small HDF5 file with attributes, as the fuzzing seed that found the loop below (deterministic bytes)."""
    import json

    with h5py.File(path, "w") as f:
        f.attrs["config"] = json.dumps({"hidden": 64, "lr": 1e-3, "cell": "egru"})
        f.attrs["step"] = 1234
        f.attrs["format"] = "evrtrl-checkpoint-1"
        for name in ("W", "U", "b"):
            g = f.create_group(f"params/{name}")
            g.attrs["shape"] = np.array([8, 8])
            g.attrs["dtype"] = "float64"
            g.create_dataset("value", data=np.random.default_rng(0).normal(size=(8, 8)))
        f.create_group("optim").attrs["betas"] = np.array([0.9, 0.999])
    return path


@pytest.mark.slow  # waits out a 5 s loop, then a 3 s probe limit
def test_a_real_libhdf5_loop_is_refused(tmp_path):
    """Byte 2201 set to 2 (found by fuzzing, 3 of 300 mutants) makes libhdf5 2.0 loop forever on a root
    attribute read. Without the guard the reader would spin until killed; with it: FormatError."""
    import subprocess

    p = _checkpoint_like(tmp_path / "loop.h5")
    data = bytearray(p.read_bytes())
    if len(data) != 13856 or data[2201] != 0:
        pytest.skip(f"h5py {h5py.version.version} lays this file out differently; the found offset does not apply")
    data[2201] = 2
    p.write_bytes(bytes(data))
    raw = [sys.executable, "-I", "-c", "import h5py, sys; f = h5py.File(sys.argv[1]); [f.attrs[k] for k in f.attrs]",
           str(p)]
    try:
        subprocess.run(raw, capture_output=True, timeout=5)
        pytest.skip(f"libhdf5 {h5py.version.hdf5_version} does not loop on this file")
    except subprocess.TimeoutExpired:
        pass  # the unguarded read spins: the precondition of this test
    t0 = time.perf_counter()
    with pytest.raises(HDF5GuardError, match="loop.h5.*did not finish"):
        len(SpikeH5(p, probe_timeout_s=3))
    assert time.perf_counter() - t0 < 15


def test_corrupt_nir_file_gives_format_error_with_cause(tmp_path, shared_data):
    """One byte of a real NIR graph (symbol table entry cache type): h5py raises RuntimeError, which used to leak."""
    pytest.importorskip("nir")
    from evrtrl.neuromorphic.nir_io import read_graph

    data = bytearray((shared_data / "nir" / "lif_norse.nir").read_bytes())
    data[10400] = 0xFF
    p = tmp_path / "bad.nir"
    p.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="bad.nir") as err:
        read_graph(p)
    assert isinstance(err.value.__cause__, RuntimeError)


@pytest.mark.slow  # waits out a 5 s loop, then a 3 s probe limit
def test_a_real_libhdf5_loop_in_a_nir_graph_is_refused(tmp_path, shared_data):
    """Zeroing bytes 2272 and 2280 of the NIR paper's lif_norse.nir (found by the fuzzer, seed 0 mutant 39)
    makes libhdf5 loop: a plain nir.read never returns. read_graph refuses it within its time limit."""
    pytest.importorskip("nir")
    import subprocess

    from evrtrl.neuromorphic.nir_io import read_graph

    data = bytearray((shared_data / "nir" / "lif_norse.nir").read_bytes())
    data[2272] = data[2280] = 0
    p = tmp_path / "loop.nir"
    p.write_bytes(bytes(data))
    try:
        subprocess.run([sys.executable, "-I", "-c", "import nir, sys; nir.read(sys.argv[1])", str(p)],
                       capture_output=True, timeout=5)
        pytest.skip(f"libhdf5 {h5py.version.hdf5_version} does not loop on this file")
    except subprocess.TimeoutExpired:
        pass  # unguarded, the read spins
    with pytest.raises(HDF5GuardError, match="loop.nir.*did not finish"):
        read_graph(p, probe_timeout_s=3)
