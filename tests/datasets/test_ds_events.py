import numpy as np
import pytest

from evrtrl.datasets.events import (AUDIO_DTYPE, CAMERA_DTYPE, as_events, audio_events, camera_events, from_tonic,
                             to_tonic_dtype)
from evrtrl.errors import FormatError, ShapeError


def test_camera_events_stable_sort_keeps_file_order_on_ties():
    ev = camera_events([5, 1, 5, 1], [0, 1, 2, 3], 0, [1, 0, 0, 1])
    assert ev.dtype == CAMERA_DTYPE
    assert ev["t"].tolist() == [1, 1, 5, 5]
    assert ev["x"].tolist() == [1, 3, 0, 2]  # ties keep input order


def test_audio_events_dtype_and_shape_error():
    ev = audio_events(np.array([3, 2]), np.array([7, 8]))
    assert ev.dtype == AUDIO_DTYPE and ev["unit"].tolist() == [8, 7]
    with pytest.raises(ShapeError):
        audio_events([1, 2], [1, 2, 3])


def test_tonic_roundtrip_camera_and_audio():
    tonic_cam = np.zeros(3, dtype=[("x", int), ("y", int), ("t", int), ("p", int)])
    tonic_cam["t"] = [30, 10, 20]
    tonic_cam["x"] = [1, 2, 3]
    tonic_cam["p"] = [1, 0, 1]
    ev, label = from_tonic((tonic_cam, 4))
    assert label == 4 and ev["t"].tolist() == [10, 20, 30] and ev["x"].tolist() == [2, 3, 1]
    back = to_tonic_dtype(ev)
    assert back.dtype.names == ("x", "y", "t", "p") and back["p"].tolist() == [False, True, True]
    # tonic's SHD layout: t (float us), x = channel, p = 1
    tonic_audio = np.zeros(2, dtype=[("t", float), ("x", int), ("p", int)])
    tonic_audio["t"], tonic_audio["x"] = [1.6, 0.2], [5, 6]
    a = as_events(tonic_audio)
    assert a.dtype == AUDIO_DTYPE and a["t"].tolist() == [0, 2] and a["unit"].tolist() == [6, 5]
    assert to_tonic_dtype(a)["x"].tolist() == [6, 5]


def test_as_events_rejects_unstructured():
    with pytest.raises(FormatError, match="structured"):
        as_events(np.zeros((3, 4)))
    with pytest.raises(FormatError, match="fields"):
        as_events(np.zeros(2, dtype=[("a", int)]))
