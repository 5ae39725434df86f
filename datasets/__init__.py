"""evrtrl.datasets: event-stream readers, binning, downloads and offline data set builders.

Readers are plain functions returning time-sorted structured arrays
(:data:`CAMERA_DTYPE` / :data:`AUDIO_DTYPE`); transforms are small frozen
dataclasses; :func:`bin_events` turns events into :class:`SparseSteps`.
Importing this package does not import torch.
"""
from __future__ import annotations

if __name__ != "evrtrl.datasets":  # the folder is installed as evrtrl.datasets; a bare import would be a second copy
    raise ImportError(f"import evrtrl.datasets, not {__name__}: this folder is installed as evrtrl.datasets "
                      "(pip install -e . from the repository root)")

from .aedat import (AedatHeader, GestureSegment, cut_segments, read_aedat2, read_aedat2_header, read_aedat31,
                    read_gesture_labels)
from .binning import (MAX_STEPS, CropTime, DownsampleChannels, MergePolarity, SparseSteps, SpatialPool, ToSparseSteps,
                      bin_events, camera_channels, collate)
from .catalog import NMNIST, SHD, SSC, DVSGesture, NCaltech101, read_gesture_npy
from .download import ChecksumError, DownloadError, Resource, download, extract
from .events import (AUDIO_DTYPE, CAMERA_DTYPE, as_events, audio_events, camera_events, from_tonic,
                     stable_time_sort, to_tonic_dtype)
from .hdf5 import SpikeH5, read_shd, write_shd
from .nmnist import read_nmnist, write_nmnist

__all__ = [
    "AUDIO_DTYPE", "CAMERA_DTYPE", "MAX_STEPS", "AedatHeader", "ChecksumError", "CropTime", "DVSGesture", "DownloadError",
    "DownsampleChannels", "GestureSegment", "MergePolarity", "NCaltech101", "NMNIST", "Resource", "SHD", "SSC",
    "SparseSteps", "SpatialPool", "SpikeH5", "ToSparseSteps", "as_events", "audio_events", "bin_events",
    "camera_channels", "camera_events", "collate", "cut_segments", "download", "extract", "from_tonic",
    "read_aedat2", "read_aedat2_header", "read_aedat31", "read_gesture_labels", "read_gesture_npy", "read_nmnist",
    "read_shd", "stable_time_sort", "to_tonic_dtype", "write_nmnist", "write_shd",
]
