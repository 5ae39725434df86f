import h5py
import numpy as np
import pytest
import torch

from evrtrl.datasets import SHD, SpikeH5, audio_events, read_shd, write_shd
from evrtrl.errors import FormatError


def _write_raw(path, times, units, labels, keys=("a", "b")):
    with h5py.File(path, "w") as f:
        t = f.create_dataset("spikes/times", (len(times),), dtype=h5py.vlen_dtype(np.float16))
        u = f.create_dataset("spikes/units", (len(units),), dtype=h5py.vlen_dtype(np.uint16))
        for i, (a, b) in enumerate(zip(times, units)):
            t[i], u[i] = np.asarray(a, np.float16), np.asarray(b, np.uint16)
        f.create_dataset("labels", data=np.asarray(labels, np.uint16))
        f.create_dataset("extra/keys", data=np.array([k.encode() for k in keys]))


def test_reference_layout_float_seconds_to_us(tmp_path):
    p = tmp_path / "shd_train.h5"
    _write_raw(p, [[0.5, 0.25, 0.25], [1.0]], [[3, 1, 2], [699]], [1, 0])
    ev, label = read_shd(p, 0)
    assert label == 1
    assert ev["t"].tolist() == [250000, 250000, 500000]
    assert ev["unit"].tolist() == [1, 2, 3]  # stable: equal times keep file order
    ds = SHD(tmp_path, train=True)
    assert len(ds) == 2 and ds.classes == ["a", "b"] and ds[1][0]["unit"].tolist() == [699]


def test_label_out_of_range_and_ragged_mismatch(tmp_path):
    p = tmp_path / "bad.h5"
    _write_raw(p, [[0.1], [0.2, 0.3]], [[1], [2]], [0, 5])
    r = SpikeH5(p)
    assert r.label(0) == 0
    with pytest.raises(FormatError, match=r"bad\.h5.*labels\[1\] = 5"):
        r.label(1)
    with pytest.raises(FormatError, match=r"sample 1 has 2 spike times but 1 units"):
        r.events(1)


def test_not_hdf5_and_missing_dataset(tmp_path):
    p = tmp_path / "junk.h5"
    p.write_bytes(b"not an hdf5 file")
    with pytest.raises(FormatError, match="junk.h5"):
        len(SpikeH5(p))
    q = tmp_path / "nolabels.h5"
    with h5py.File(q, "w") as f:
        f.create_dataset("spikes/times", data=np.zeros(1))
    with pytest.raises(FormatError, match="labels"):
        len(SpikeH5(q))


def test_write_read_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    samples = [audio_events(np.sort(rng.integers(0, 1_000_000, 50)), rng.integers(0, 700, 50)) for _ in range(4)]
    write_shd(tmp_path / "x.h5", samples, [0, 1, 2, 1], ["zero", "one", "two"], speakers=[0, 0, 1, 1])
    r = SpikeH5(tmp_path / "x.h5", n_units=700)
    for i, s in enumerate(samples):
        ev, _ = r[i]
        np.testing.assert_array_equal(ev["unit"], s["unit"])
        assert np.abs(ev["t"] - s["t"]).max() <= 1  # float32 seconds: <= 1 us rounding
    with pytest.raises(FormatError, match="label of sample 0 is 7"):
        write_shd(tmp_path / "y.h5", samples[:1], [7], ["a"])


def test_lazy_open_works_with_dataloader_workers(tmp_path):
    samples = [audio_events(np.arange(i + 1) * 1000, np.arange(i + 1)) for i in range(6)]
    write_shd(tmp_path / "shd_test.h5", samples, [i % 2 for i in range(6)], ["a", "b"])
    ds = SHD(tmp_path, train=False, transform=lambda ev: torch.tensor(len(ev)))
    assert len(ds) == 6 and ds._h5._file is not None  # opened in the parent; workers must reopen
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    n, lab = [], []
    for x, y in loader:
        n += x.tolist()
        lab += y.tolist()
    assert n == [1, 2, 3, 4, 5, 6] and lab == [0, 1, 0, 1, 0, 1]
