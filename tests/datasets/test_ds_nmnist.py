import numpy as np
import pytest

from evrtrl import datasets

from evrtrl.datasets.events import camera_events
from evrtrl.datasets.nmnist import OVERFLOW_INCREMENT_US, read_nmnist, write_nmnist
from evrtrl.errors import FormatError


def _rec(x, y, p, t):
    return bytes([x, y, (p << 7) | ((t >> 16) & 0x7F), (t >> 8) & 0xFF, t & 0xFF])


def test_real_sample(shared_data):
    ev = datasets.read_nmnist(shared_data / "nmnist" / "sample_nmnist.bin")
    assert ev.size == 4325
    assert ev["x"].min() >= 0 and ev["x"].max() <= 33 and ev["y"].min() >= 0 and ev["y"].max() <= 33
    assert (ev["p"] == 1).sum() == 2145 and (ev["p"] == 0).sum() == 2180
    assert ev["t"].min() == 654 and ev["t"].max() == 311175
    assert np.all(np.diff(ev["t"]) >= 0)
    assert (ev["t"] < 100_000).sum() == 1369


def test_hand_crafted_records_and_overflow(tmp_path):
    # overflow marker (y == 240) adds 2**13 us to itself and every later record (tonic/eventvision)
    data = (_rec(1, 2, 1, 100) + _rec(3, 4, 0, 0x7FFFFF) + _rec(0, 240, 0, 0) + _rec(5, 6, 1, 50)
            + _rec(0, 240, 0, 0) + _rec(7, 8, 0, 60))
    f = tmp_path / "crafted.bin"
    f.write_bytes(data)
    ev = read_nmnist(f)
    assert ev["x"].tolist() == [1, 5, 7, 3]  # sorted by time
    assert ev["t"].tolist() == [100, 50 + 8192, 60 + 2 * 8192, 0x7FFFFF]
    assert ev["y"].tolist() == [2, 6, 8, 4] and ev["p"].tolist() == [1, 1, 0, 0]
    assert OVERFLOW_INCREMENT_US == 8192


def test_truncated_file_names_offset(tmp_path):
    f = tmp_path / "trunc.bin"
    f.write_bytes(_rec(1, 1, 1, 1) + b"\x01\x02")
    with pytest.raises(FormatError, match=r"trunc\.bin.*byte offset 5"):
        read_nmnist(f)


def test_write_read_roundtrip_with_overflows(tmp_path):
    rng = np.random.default_rng(0)
    n = 500
    t = np.sort(rng.integers(0, 3 * 2**23, n))
    ev = camera_events(t, rng.integers(0, 34, n), rng.integers(0, 34, n), rng.integers(0, 2, n))
    f = tmp_path / "rt.bin"
    write_nmnist(f, ev)
    raw = np.fromfile(f, np.uint8).reshape(-1, 5)
    assert (raw[:, 1] == 240).sum() > 0  # markers were needed
    back = read_nmnist(f)
    np.testing.assert_array_equal(back, ev)


def test_write_rejects_reserved_y(tmp_path):
    with pytest.raises(FormatError, match="y < 240"):
        write_nmnist(tmp_path / "bad.bin", camera_events([0], [0], [240], [1]))
