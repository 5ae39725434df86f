"""One error contract for every reader, and range checks after every conversion (docs/reliability.md).

Each test builds the bad file itself; each fails on the readers before issue 12 (which returned
plausible events or leaked KeyError / ValueError / UnicodeDecodeError / AttributeError).
"""
from __future__ import annotations

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from evrtrl import datasets as ds  # noqa: E402
from evrtrl.datasets import SpikeH5, read_aedat2, read_aedat31, read_gesture_labels, read_gesture_npy  # noqa: E402
from evrtrl.datasets.aedat import write_aedat2, write_aedat31  # noqa: E402
from evrtrl.errors import ConfigError, FormatError  # noqa: E402


def _shd(path, times, units, labels, units_dtype=np.int64, times_dtype=np.float64, labels_dtype=np.int64,
         keys=4):
    with h5py.File(path, "w") as f:
        t = f.create_dataset("spikes/times", (len(times),), dtype=h5py.vlen_dtype(times_dtype))
        u = f.create_dataset("spikes/units", (len(units),), dtype=h5py.vlen_dtype(units_dtype))
        for i, (a, b) in enumerate(zip(times, units)):
            t[i], u[i] = np.asarray(a, times_dtype), np.asarray(b, units_dtype)
        f.create_dataset("labels", data=np.asarray(labels, labels_dtype))
        if keys:
            f.create_dataset("extra/keys", data=np.array([f"k{i}".encode() for i in range(keys)]))
    return path


# ------------------------------------------------------------------------------------------ SHD
def test_shd_time_overflowing_int64_microseconds(tmp_path):
    p = _shd(tmp_path / "t.h5", [[0.5, 1e13]], [[1, 2]], [0])
    with pytest.raises(FormatError, match=r"t\.h5.*'spikes/times'.*int64 microseconds"):
        SpikeH5(p).events(0)


def test_shd_nan_time(tmp_path):
    p = _shd(tmp_path / "t.h5", [[0.5, np.nan]], [[1, 2]], [0])
    with pytest.raises(FormatError, match="'spikes/times'"):
        SpikeH5(p).events(0)


def test_shd_unit_wrapping_int32_is_refused(tmp_path):
    p = _shd(tmp_path / "u.h5", [[0.1, 0.2]], [[1, 2**32 + 5]], [0])
    with pytest.raises(FormatError, match=r"'spikes/units'.*4294967301"):
        SpikeH5(p).events(0)  # no n_units: must still fit int32, not wrap to 5


def test_shd_unit_beyond_declared_channels(tmp_path):
    p = _shd(tmp_path / "u.h5", [[0.1, 0.2]], [[1, 700]], [0])
    assert SpikeH5(p).events(0)["unit"].tolist() == [1, 700]
    with pytest.raises(FormatError, match=r"'spikes/units'.*unit < 700"):
        SpikeH5(p, n_units=700).events(0)


def test_shd_float_units_and_labels_that_would_truncate(tmp_path):
    p = _shd(tmp_path / "f.h5", [[0.1, 0.2]], [[1.0, 3.7]], [2.5], units_dtype=np.float32,
             labels_dtype=np.float32)
    r = SpikeH5(p)
    with pytest.raises(FormatError, match="'spikes/units'.*non-integer"):
        r.events(0)
    with pytest.raises(FormatError, match=r"'labels'.*not a whole number"):
        r.label(0)
    q = _shd(tmp_path / "ok.h5", [[0.1]], [[3.0]], [2.0], units_dtype=np.float32, labels_dtype=np.float32)
    ev, lab = SpikeH5(q)[0]
    assert ev["unit"].tolist() == [3] and lab == 2


def test_shd_group_where_a_dataset_belongs_names_the_field(tmp_path):
    p = tmp_path / "g.h5"
    with h5py.File(p, "w") as f:
        f.create_group("spikes/times")
        f.create_dataset("spikes/units", data=np.zeros(1))
        f.create_dataset("labels", data=np.zeros(1, int))
    with pytest.raises(FormatError, match="'spikes/times'.*Group"):
        len(SpikeH5(p))


def test_shd_external_link_is_refused(tmp_path):
    other = _shd(tmp_path / "other.h5", [[0.1]], [[1]], [0])
    p = tmp_path / "ext.h5"
    with h5py.File(p, "w") as f:
        f["spikes/times"] = h5py.ExternalLink(str(other), "/spikes/times")
        f["spikes/units"] = h5py.ExternalLink(str(other), "/spikes/units")
        f.create_dataset("labels", data=np.zeros(1, int))
    with pytest.raises(FormatError, match="external link"):
        len(SpikeH5(p))


def test_shd_unreadable_dataset_keeps_h5py_error_as_cause(tmp_path):
    p = _shd(tmp_path / "s.h5", [[0.1]], [[1]], [0])
    with h5py.File(p, "a") as f:  # class names that are not text
        del f["extra/keys"]
        f.create_dataset("extra/keys", data=np.array([b"\xff\xfe"]))
    with pytest.raises(FormatError, match="'extra/keys'") as err:
        SpikeH5(p).keys
    assert isinstance(err.value.__cause__, UnicodeDecodeError)


def test_shd_is_probed_once_per_file_version(tmp_path, monkeypatch):
    from evrtrl.datasets import hdf5 as mod

    calls = []
    real = mod.probe_file
    monkeypatch.setattr(mod, "probe_file", lambda *a, **k: calls.append(a) or real(*a, **k))
    p = _shd(tmp_path / "s.h5", [[0.1], [0.2]], [[1], [2]], [0, 1])
    r = SpikeH5(p)
    r[0], r[1], r.close(), r[0]
    assert len(calls) == 1
    import pickle

    r2 = pickle.loads(pickle.dumps(r))  # a DataLoader worker: no second probe
    r2[1]
    assert len(calls) == 1


# ------------------------------------------------------------------------------ gesture .npy
def _npy(path, rows, dtype=np.float64):
    np.save(path, np.asarray(rows, dtype=dtype))
    return path


@pytest.mark.parametrize("row,column", [
    ([1, 2, 1, np.nan], "'t'"),          # NaN time: was INT64_MIN
    ([70000, 2, 1, 5.0], "'x'"),         # was 70000 -> 4464 (int16 wrap)
    ([1, 2, 7, 5.0], "'p'"),             # polarity 7
    ([1.5, 2, 1, 5.0], "'x'"),           # would truncate
    ([1, 2, 1, -3.0], "'t'"),
    ([1, 2, 1, 1e17], "'t'"),            # overflows int64 microseconds
])
def test_gesture_npy_range_checks(tmp_path, row, column):
    p = _npy(tmp_path / "3.npy", [[0, 0, 0, 0.5], row])
    with pytest.raises(FormatError, match=rf"3\.npy: column {column}"):
        read_gesture_npy(p)


def test_gesture_npy_good_and_integer_times(tmp_path):
    ev = read_gesture_npy(_npy(tmp_path / "1.npy", [[3, 4, 1, 2.5], [127, 127, 0, 1.0]]))
    assert ev["t"].tolist() == [1000, 2500] and ev["x"].tolist() == [127, 3]
    ev = read_gesture_npy(_npy(tmp_path / "2.npy", [[3, 4, 1, 2]], dtype=np.int32))
    assert ev["t"].tolist() == [2000]


def test_gesture_npy_object_truncated_and_garbage(tmp_path):
    obj = tmp_path / "o.npy"
    np.save(obj, np.array([[{"a": 1}] * 4], dtype=object), allow_pickle=True)
    with pytest.raises(FormatError, match="o.npy"):
        read_gesture_npy(obj)
    good = _npy(tmp_path / "g.npy", [[1, 2, 1, 3.0]] * 10)
    cut = tmp_path / "c.npy"
    cut.write_bytes(good.read_bytes()[:-7])
    with pytest.raises(FormatError, match="truncated"):
        read_gesture_npy(cut)
    bad = tmp_path / "b.npy"
    bad.write_bytes(good.read_bytes()[:10] + b"{'descr': '<f8', 'shape': ((((" + b" " * 80 + b"\n")
    with pytest.raises(FormatError, match="b.npy") as err:
        read_gesture_npy(bad)
    assert err.value.__cause__ is not None


# ------------------------------------------------------------------------------- gesture csv
def test_gesture_csv_not_text_and_odd_integers(tmp_path):
    f = tmp_path / "u_labels.csv"
    f.write_bytes(b"class,startTime_usec,endTime_usec\n1,\xff\xfe,200\n")
    with pytest.raises(FormatError, match="byte offset 36 is not UTF-8") as err:
        read_gesture_labels(f)
    assert isinstance(err.value.__cause__, UnicodeDecodeError)
    for bad, field in (("1,1_000,2000", "startTime_usec"), ("1,0,99999999999999999999", "endTime_usec"),
                       ("1,-5,10", "startTime_usec"), ("2.0,0,10", "class")):
        f.write_text(f"class,startTime_usec,endTime_usec\n{bad}\n")
        with pytest.raises(FormatError, match=field):
            read_gesture_labels(f)


# ---------------------------------------------------------------------------------- AEDAT
def test_aedat2_timestamps_past_2_31_stay_positive_and_in_order(tmp_path):
    t = [10, 2**31 - 1, 2**31 + 5, 2**32 - 1]
    ev = ds.camera_events(t, [1, 2, 3, 4], [5, 6, 7, 8], [1, 0, 1, 0])
    write_aedat2(tmp_path / "a.aedat", ev)
    _, back = read_aedat2(tmp_path / "a.aedat")
    assert back["t"].tolist() == t and back["x"].tolist() == [1, 2, 3, 4]


def test_aedat2_32_bit_wrap_is_unfolded(tmp_path):
    t = [2**32 - 10, 2**32 + 3, 2**32 + 2**20]  # written as 2**32-10, 3, 2**20
    ev = ds.camera_events(t, [1, 2, 3], 0, 1)
    write_aedat2(tmp_path / "w.aedat", ev)
    _, back = read_aedat2(tmp_path / "w.aedat")
    assert back["t"].tolist() == t and back["x"].tolist() == [1, 2, 3]


def test_aedat31_negative_overflow_field(tmp_path):
    ev = ds.camera_events([5, 6], [1, 2], [3, 4], [1, 0])
    p = tmp_path / "g.aedat"
    write_aedat31(p, ev)
    data = bytearray(p.read_bytes())
    start = data.index(b"#!END-HEADER\r\n") + len(b"#!END-HEADER\r\n")
    data[start + 12:start + 16] = (-3).to_bytes(4, "little", signed=True)  # eventTSOverflow
    p.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="eventTSOverflow=-3"):
        read_aedat31(p)


def test_corrupt_overflow_field_cannot_ask_bin_events_for_petabytes(tmp_path):
    """One AEDAT 3.1 overflow field set to 2**30 puts an event at 2**61 us: 2.3e15 steps of 1 ms."""
    ev = ds.camera_events([5, 6], [1, 2], [3, 4], [1, 0])
    p = tmp_path / "g.aedat"
    write_aedat31(p, ev)
    data = bytearray(p.read_bytes())
    start = data.index(b"#!END-HEADER\r\n") + len(b"#!END-HEADER\r\n")
    data[start + 12:start + 16] = (2**30).to_bytes(4, "little")
    p.write_bytes(bytes(data))
    _, big = read_aedat31(p)
    assert big["t"].min() >= 2**61
    with pytest.raises(ConfigError, match=r"max_steps = 16777216.*Pass max_steps="):
        ds.bin_events(big, 1000, sensor_size=(128, 128, 2))
    with pytest.raises(ConfigError, match="needs T = 7 steps.*max_steps = 6"):
        ds.bin_events(ev, 1, sensor_size=(128, 128, 2), max_steps=6)
    assert ds.bin_events(ev, 1, sensor_size=(128, 128, 2), max_steps=7).T == 7


# ----------------------------------------------------------------------------- listings
def test_gesture_listing_may_not_leave_the_data_root(tmp_path):
    root = tmp_path / "root"
    (root / "DvsGesture").mkdir(parents=True)
    outside = tmp_path / "secret.aedat"
    write_aedat31(outside, ds.camera_events([5], [1], [3], [1]))
    (tmp_path / "secret_labels.csv").write_text("class,startTime_usec,endTime_usec\n1,0,10\n")
    (root / "DvsGesture" / "trials_to_train.txt").write_text("../../secret.aedat\n")
    with pytest.raises(FormatError, match="outside the data root"):
        ds.DVSGesture(root, train=True, layout="aedat")
    (root / "DvsGesture" / "trials_to_train.txt").write_text(f"{outside}\n")
    with pytest.raises(FormatError, match="outside the data root"):
        ds.DVSGesture(root, train=True, layout="aedat")


def test_symlinks_a_user_made_are_followed(tmp_path):
    """A subset assembled from links is the user's choice (archives cannot bring escaping links)."""
    root = tmp_path / "root"
    (root / "Train" / "0").mkdir(parents=True)
    ds.write_nmnist(tmp_path / "elsewhere.bin", ds.camera_events([1], [1], [1], [1]))
    (root / "Train" / "0" / "a.bin").symlink_to(tmp_path / "elsewhere.bin")
    assert len(ds.NMNIST(root, train=True)) == 1


# ---------------------------------------------------------------------- event constructors
def test_event_constructors_refuse_values_that_would_wrap_or_truncate():
    with pytest.raises(FormatError, match="'x'.*int16"):
        ds.camera_events([1], [70000], [0], [1])
    with pytest.raises(FormatError, match="'p'"):
        ds.camera_events([1], [1], [0], [300])
    with pytest.raises(FormatError, match="'unit'.*int32"):
        ds.audio_events([1], [2**32 + 5])
    with pytest.raises(FormatError, match="'t'"):
        ds.audio_events(np.array([1.5]), [1])
    tonic = np.zeros(2, dtype=[("t", float), ("x", int), ("p", int)])
    tonic["t"] = [np.nan, 3.0]
    with pytest.raises(FormatError, match="'t'"):
        ds.from_tonic(tonic)  # was INT64_MIN
    tonic["t"] = [2.4, 3.0]
    assert ds.from_tonic(tonic)["t"].tolist() == [2, 3]
