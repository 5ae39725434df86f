import struct

import numpy as np
import pytest

from evrtrl.datasets import DVSGesture, camera_events, cut_segments, read_aedat2, read_aedat2_header, read_aedat31
from evrtrl.datasets import read_gesture_labels
from evrtrl.datasets.aedat import write_aedat31
from evrtrl.errors import FormatError


def test_real_aedat2_header(shared_data):
    h = read_aedat2_header(shared_data / "aedat" / "sample_aedat2_header_davis346red.aedat")
    assert h.version == "2.0" and h.data_start == 599
    assert h.chip == "eu.seebetter.ini.chips.davis.Davis346red"
    assert h.fields["Creation time"] == "System.currentTimeMillis() 1695355587880"
    assert len(h.lines) == 12
    _, ev = read_aedat2(shared_data / "aedat" / "sample_aedat2_header_davis346red.aedat")
    assert ev.size == 0


def test_aedat2_events_after_real_header(shared_data, tmp_path):
    header = (shared_data / "aedat" / "sample_aedat2_header_davis346red.aedat").read_bytes()
    # hand-encoded DAVIS addresses: y<<22 | x<<12 | p<<11; plus one APS and one IMU record to be skipped
    recs = [((10 << 22) | (345 << 12) | (1 << 11), 100), ((259 << 22) | (0 << 12), 50),
            ((1 << 31) | (3 << 22), 60), ((5 << 22) | (1 << 10), 70), ((7 << 22) | (8 << 12), 50)]
    body = b"".join(struct.pack(">Ii", a, t) for a, t in recs)
    f = tmp_path / "davis.aedat"
    f.write_bytes(header + body)
    h, ev = read_aedat2(f)
    assert h.data_start == 599
    assert ev["t"].tolist() == [50, 50, 100] and ev["x"].tolist() == [0, 8, 345]
    assert ev["y"].tolist() == [259, 7, 10] and ev["p"].tolist() == [0, 0, 1]
    _, flipped = read_aedat2(f, flip_x=True)
    assert flipped["x"].tolist() == [345, 337, 0]
    f.write_bytes(header + body + b"\x00\x01\x02")
    with pytest.raises(FormatError, match=r"davis\.aedat.*byte offset 639"):
        read_aedat2(f)


def test_aedat2_bad_header(tmp_path):
    f = tmp_path / "x.aedat"
    f.write_bytes(b"hello world")
    with pytest.raises(FormatError, match="byte offset 0"):
        read_aedat2_header(f)
    f.write_bytes(b"#!AER-DAT3.1\r\n#!END-HEADER\r\n")
    with pytest.raises(FormatError, match="expected 2"):
        read_aedat2_header(f)


def _packet(etype, size, cap, number, overflow=0):
    return struct.pack("<hhiiiiii", etype, 1, size, 4, overflow, cap, number, number)


def test_aedat31_hand_crafted_packets(tmp_path):
    head = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n"
    ev1 = struct.pack("<Ii", (3 << 17) | (4 << 2) | (1 << 1) | 1, 20) + struct.pack("<Ii", (5 << 17) | (6 << 2) | 0, 10)
    special = _packet(0, 8, 1, 1) + struct.pack("<Ii", 0xFFFF, 5)  # type 0 packet: skipped
    ev2 = struct.pack("<Ii", (127 << 17) | (127 << 2) | 1, 7)
    data = head + _packet(1, 8, 2, 2) + ev1 + special + _packet(1, 8, 1, 1, overflow=1) + ev2
    f = tmp_path / "user01_fluorescent.aedat"
    f.write_bytes(data)
    h, ev = read_aedat31(f)
    assert h.version == "3.1" and h.chip == "DVS128"
    assert ev["t"].tolist() == [20, (1 << 31) | 7]  # the invalid event (bit 0 = 0) is dropped
    assert ev["x"].tolist() == [3, 127] and ev["y"].tolist() == [4, 127] and ev["p"].tolist() == [1, 0]
    f.write_bytes(data[:-3])
    with pytest.raises(FormatError, match=r"packet at byte offset \d+ declares 1 events.*truncated"):
        read_aedat31(f)
    f.write_bytes(data + b"\x01\x00")
    with pytest.raises(FormatError, match="packet header at byte offset"):
        read_aedat31(f)
    f.write_bytes(b"#!AER-DAT3.1\r\n#Format: RAW\r\n")
    with pytest.raises(FormatError, match="END-HEADER"):
        read_aedat31(f)


def test_gesture_labels_csv(tmp_path):
    f = tmp_path / "user01_fluorescent_labels.csv"
    f.write_text("class,startTime_usec,endTime_usec\n1,100,200\n11,200,400\n")
    segs = read_gesture_labels(f)
    assert [(s.label, s.start_us, s.end_us) for s in segs] == [(0, 100, 200), (10, 200, 400)]
    f.write_text("class,startTime_usec,endTime_usec\n1,100,200\n3,500,500\n")
    with pytest.raises(FormatError, match=r"labels\.csv: line 3 has start 500 >= end 500"):
        read_gesture_labels(f)
    f.write_text("class,startTime_usec,endTime_usec\n12,100,200\n")
    with pytest.raises(FormatError, match="line 2 has class 12"):
        read_gesture_labels(f)
    f.write_text("cls,a,b\n1,2,3\n")
    with pytest.raises(FormatError, match="line 1"):
        read_gesture_labels(f)


def test_dvsgesture_aedat_layout(tmp_path):
    base = tmp_path / "DvsGesture"
    base.mkdir()
    rng = np.random.default_rng(0)
    t = np.sort(rng.integers(0, 3 * 2**31 // 2**20, 3000)) * 2**10  # spans an eventTSOverflow change
    ev = camera_events(t, rng.integers(0, 128, t.size), rng.integers(0, 128, t.size), rng.integers(0, 2, t.size))
    write_aedat31(base / "user02_led.aedat", ev, packet_size=256)
    _, back = read_aedat31(base / "user02_led.aedat")
    np.testing.assert_array_equal(back, ev)
    cut = [int(t[500]), int(t[1000]), int(t[2000]), int(t[2999]) + 1]
    (base / "user02_led_labels.csv").write_text(
        f"class,startTime_usec,endTime_usec\n2,{cut[0]},{cut[1]}\n5,{cut[2]},{cut[3]}\n")
    (base / "trials_to_train.txt").write_text("user02_led.aedat\n")
    ds = DVSGesture(tmp_path, train=True)
    assert ds.layout == "aedat" and len(ds) == 2 and ds.targets == [1, 4]
    s0, y0 = ds[0]
    assert y0 == 1 and s0["t"][0] == 0 and s0.size == np.sum((t >= cut[0]) & (t < cut[1]))
    expect = cut_segments(ev, read_gesture_labels(base / "user02_led_labels.csv"))
    np.testing.assert_array_equal(ds[1][0], expect[1][0])


def test_dvsgesture_tonic_npy_layout(tmp_path):
    d = tmp_path / "ibmGestureTest" / "user24_led"
    d.mkdir(parents=True)
    arr = np.array([[1, 2, 1, 5.0], [3, 4, 0, 2.0]])  # x, y, p, t[ms]
    np.save(d / "7.npy", arr)
    np.save(d / "10.npy", arr[:1])
    ds = DVSGesture(tmp_path, train=False)
    assert ds.layout == "npy" and ds.targets == [7, 10]
    ev, y = ds[0]
    assert y == 7 and ev["t"].tolist() == [2000, 5000] and ev["x"].tolist() == [3, 1]
    np.save(d / "11.npy", arr)
    with pytest.raises(FormatError, match="label 11"):
        DVSGesture(tmp_path, train=False)
