"""HDF5 files the library did not write are read in a time-limited child first (evrtrl/h5file.py,
probe_file: the same forked walk that guards the library's own files)."""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from evrtrl import h5file as h5f  # noqa: E402
from evrtrl.datasets import SpikeH5  # noqa: E402
from evrtrl.errors import FormatError  # noqa: E402
from evrtrl.h5file import HDF5GuardError, probe_file, refuse_links  # noqa: E402


@pytest.fixture()
def h5file(tmp_path):
    p = tmp_path / "f.h5"
    with h5py.File(p, "w") as f:
        f["a"] = np.arange(100)
        f["g/b"] = np.ones((3, 4))
        f["g/b"].attrs["unit"] = "s"
        f["g/soft"] = h5py.SoftLink("/a")
    return p


def test_probe_reads_everything_and_soft_links_pass(h5file, monkeypatch):
    """The child walks every dataset (counted through the block reader); a soft link inside the
    file is allowed for a foreign file, refused for the library's own."""
    probe_file(h5file)  # finishes: no error
    read = []
    real = h5f._read_dataset
    monkeypatch.setattr(h5f, "_read_dataset", lambda ds, cap: read.append(ds.name) or real(ds, cap))
    with h5py.File(h5file, "r") as f:
        h5f._walk(f, 1 << 28)  # in this process, to see what the child reads
        refuse_links(f, h5file, soft=False)
        with pytest.raises(FormatError, match="'/g/soft' is a soft link"):
            refuse_links(f, h5file)
    assert sorted(read) == ["/a", "/g/b"]


def test_external_links_are_refused_for_foreign_files(tmp_path, h5file):
    p = tmp_path / "ext.h5"
    with h5py.File(p, "w") as f:
        f["spikes/times"] = np.zeros(1)
        f["elsewhere"] = h5py.ExternalLink(str(h5file), "/a")
    with pytest.raises(FormatError, match="'/elsewhere' is an external link"):
        len(SpikeH5(p))


def test_probe_of_a_non_hdf5_file_defers_to_the_reader(tmp_path):
    p = tmp_path / "x.h5"
    p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    probe_file(p)  # the child cannot open it: no verdict, the reader's own open reports it
    with pytest.raises(FormatError, match="x.h5"):
        len(SpikeH5(p))


def _loop(f, cap):
    while True:
        pass


def _abort(f, cap):
    os.abort()


def test_a_looping_libhdf5_becomes_a_format_error_in_time(h5file, monkeypatch):
    """Stand-in for a libhdf5 infinite loop: the child never answers; the caller gets HDF5GuardError."""
    monkeypatch.setattr(h5f, "_walk", _loop)
    t0 = time.perf_counter()
    with pytest.raises(HDF5GuardError, match=r"did not finish parsing the file within 2 s") as err:
        probe_file(h5file, timeout_s=2)
    assert time.perf_counter() - t0 < 10 and isinstance(err.value, FormatError)


def test_a_crashing_libhdf5_becomes_a_format_error(h5file, monkeypatch):
    monkeypatch.setattr(h5f, "_walk", _abort)
    with pytest.raises(HDF5GuardError, match="crashed.*SIGABRT"):
        probe_file(h5file)


def test_shd_reader_goes_through_the_guard(h5file, monkeypatch):
    monkeypatch.setattr(h5f, "_walk", _loop)
    with pytest.raises(HDF5GuardError):
        len(SpikeH5(h5file, probe_timeout_s=1))


def test_nir_reader_goes_through_the_guard(shared_data, monkeypatch):
    pytest.importorskip("nir")
    from evrtrl.neuromorphic.nir_io import read_graph

    path = shared_data / "nir" / "lif_norse.nir"
    assert read_graph(path) is not None
    monkeypatch.setattr(h5f, "_walk", _loop)
    with pytest.raises(HDF5GuardError):
        read_graph(path, probe_timeout_s=1)


def test_probe_reads_a_crafted_huge_dataset_in_bounded_blocks(tmp_path):
    """A dataset that declares far more bytes than the file holds (chunked, unwritten) is read
    in blocks only up to the cap: the probe finishes quickly instead of allocating it."""
    p = tmp_path / "big.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("huge", shape=(2**20, 1024), dtype="f8", chunks=(1, 1024))
    t0 = time.perf_counter()
    probe_file(p)
    assert time.perf_counter() - t0 < 30


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
