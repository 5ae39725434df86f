"""Dataset classes: ``len(ds)``, ``ds[i] -> (events, label)``, with the real download sources.

Sources of URLs and checksums (looked up, not guessed):

* SHD ``.h5.gz``: https://zenkelab.org/datasets/ (the authors' ``md5sums.txt``
  there); the md5s below are the ones used by several public loaders that read
  that file (e.g. the compneuro.net/zenkelab SHD loaders in norse-style
  ``SpikingHeidelberg`` classes). tonic (``tonic/datasets/hsd.py``) instead
  fetches ``.h5.zip`` files from the same host; their md5s are listed as
  alternatives.
* SSC ``.h5.zip``: tonic ``tonic/datasets/hsd.py`` (zenkelab.org).
* N-MNIST: tonic ``tonic/datasets/nmnist.py`` (Mendeley Data mirror 468j46mzdv).
* N-Caltech101: tonic ``tonic/datasets/ncaltech101.py`` (``Caltech101.zip``, md5
  66201824...; the original Dropbox link; the Mendeley record cy6cvx3ryv holds
  the same archive).
* DVS Gesture (tonic's preprocessed ``.npy`` tree): tonic
  ``tonic/datasets/dvsgesture.py`` md5s; the figshare file ids 38022171 /
  38020584 are those tonic 1.x downloads.

Transfers are never attempted unless ``download=True``.
"""
from __future__ import annotations

import os
import tokenize
from pathlib import Path
from typing import Any, Callable

import numpy as np

from evrtrl.errors import ConfigError, FormatError
from .aedat import cut_segments, read_aedat31, read_gesture_labels
from .download import Resource, download, extract
from .events import camera_events
from .hdf5 import SpikeH5
from .nmnist import read_nmnist

__all__ = ["DVSGesture", "NCaltech101", "NMNIST", "SHD", "SSC"]

Transform = Callable[[np.ndarray], Any]


def _inside_root(listing: Path, path: Path, root: Path, entry: str) -> Path:
    """``path`` if its name stays inside the data ``root`` (no absolute path, no ``..`` escape), else FormatError.

    The check is lexical: symlinks a user made (a data set assembled from links) are followed as
    they are; archives cannot bring escaping links (:func:`~evrtrl.datasets.extract` refuses them).
    """
    lexical = os.path.normpath(path)
    top = os.path.normpath(root)
    if Path(entry).is_absolute() or not (lexical == top or lexical.startswith(top.rstrip(os.sep) + os.sep)):
        raise FormatError(f"{listing}: entry {entry!r} names {lexical}, outside the data root {root}; expected "
                          "files inside the data root")
    return path


class _Base:
    resources: dict[str, tuple[Resource, ...]] = {}

    def __init__(self, root: str | os.PathLike, split: str, download: bool, transform: Transform | None,
                 target_transform: Callable[[int], Any] | None) -> None:
        if split not in self.resources:
            raise ConfigError(f"{type(self).__name__}: split {split!r}; expected one of {sorted(self.resources)}")
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.target_transform = target_transform
        if download:
            self.download()

    def download(self) -> None:
        """Fetch (resumably, verified) and extract this split's files into ``root``."""
        for res in self.resources[self.split]:
            path = download(res.url, self.root / res.filename, md5=res.md5, sha256=res.sha256, progress=True)
            extract(path, self.root)

    def _apply(self, events: np.ndarray, label: int) -> tuple[Any, Any]:
        if self.transform is not None:
            events = self.transform(events)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return events, label


# ----------------------------------------------------------------- SHD / SSC
class _Heidelberg(_Base):
    n_units = 700
    filenames: dict[str, str] = {}

    def __init__(self, root, split, download, transform, target_transform):
        super().__init__(root, split, download, transform, target_transform)
        path = self.root / self.filenames[split]
        if not path.exists():
            raise FileNotFoundError(f"{path} not found; pass download=True or build an offline set "
                                    "(evrtrl data build spoken --out DIR)")
        self._h5 = SpikeH5(path, n_units=self.n_units)

    @property
    def classes(self) -> list[str]:
        """Class names (``extra/keys``)."""
        return self._h5.keys

    def __len__(self) -> int:
        return len(self._h5)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        return self._apply(*self._h5[index])


class SHD(_Heidelberg):
    """Spiking Heidelberg Digits (20 classes: German digits 0-9, English 10-19; 700 channels).

    Parameters
    ----------
    root : path-like
        Folder holding ``shd_train.h5`` / ``shd_test.h5``.
    train : bool
        Train or test split.
    download : bool
        Fetch and gunzip the split when True.
    transform, target_transform : callable, optional
        Applied to the events / the label.
    """

    filenames = {"train": "shd_train.h5", "test": "shd_test.h5"}
    resources = {
        "train": (Resource("https://zenkelab.org/datasets/shd_train.h5.gz", "shd_train.h5.gz",
                           md5="d47c9825dee33347913e8ce0f2be08b0", source="zenkelab.org md5sums.txt"),),
        "test": (Resource("https://zenkelab.org/datasets/shd_test.h5.gz", "shd_test.h5.gz",
                          md5="3062a80ec0c5719404d5b02e166543b1", source="zenkelab.org md5sums.txt"),),
    }
    zip_resources = {
        "train": Resource("https://zenkelab.org/datasets/shd_train.h5.zip", "shd_train.h5.zip",
                          md5="f3252aeb598ac776c1b526422d90eecb", source="tonic/datasets/hsd.py"),
        "test": Resource("https://zenkelab.org/datasets/shd_test.h5.zip", "shd_test.h5.zip",
                         md5="1503a5064faa34311c398fb0a1ed0a6f", source="tonic/datasets/hsd.py"),
    }

    def __init__(self, root, train: bool = True, download: bool = False, transform=None, target_transform=None):
        super().__init__(root, "train" if train else "test", download, transform, target_transform)


class SSC(_Heidelberg):
    """Spiking Speech Commands (35 classes, 700 channels); ``split`` in train/valid/test."""

    filenames = {"train": "ssc_train.h5", "valid": "ssc_valid.h5", "test": "ssc_test.h5"}
    resources = {
        s: (Resource(f"https://zenkelab.org/datasets/ssc_{s}.h5.zip", f"ssc_{s}.h5.zip", md5=m,
                     source="tonic/datasets/hsd.py"),)
        for s, m in (("train", "d102be95e7144fcc0553d1f45ba94170"), ("valid", "b4eee3516a4a90dd0c71a6ac23a8ae43"),
                     ("test", "a35ff1e9cffdd02a20eb850c17c37748"))
    }

    def __init__(self, root, split: str = "train", download: bool = False, transform=None, target_transform=None):
        super().__init__(root, split, download, transform, target_transform)


# ------------------------------------------------------------ N-MNIST family
class _BinTree(_Base):
    folders: dict[str, str] = {}
    sensor_size: tuple[int, int, int] = (0, 0, 2)

    def __init__(self, root, split, download, transform, target_transform):
        super().__init__(root, split, download, transform, target_transform)
        base = self.root / self.folders[split]
        if not base.is_dir():
            raise FileNotFoundError(f"{base} not found; pass download=True or build an offline set")
        self.classes = sorted(d.name for d in base.iterdir() if d.is_dir())
        self.files: list[Path] = []
        self.targets: list[int] = []
        for k, c in enumerate(self.classes):
            for f in sorted((base / c).glob("*.bin")):
                self.files.append(f)
                self.targets.append(k)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        return self._apply(read_nmnist(self.files[index]), self.targets[index])


class NMNIST(_BinTree):
    """N-MNIST (Orchard et al. 2015): ``root/Train/<digit>/<id>.bin`` and ``root/Test/...``.

    Labels are the index of the sorted class folders (``0``..``9``).
    """

    sensor_size = (34, 34, 2)
    folders = {"train": "Train", "test": "Test"}
    _base = "https://data.mendeley.com/public-files/datasets/468j46mzdv/files/"
    resources = {
        "train": (Resource(_base + "39c25547-014b-4137-a934-9d29fa53c7a0/file_downloaded", "train.zip",
                           md5="20959b8e626244a1b502305a9e6e2031", source="tonic/datasets/nmnist.py"),),
        "test": (Resource(_base + "05a4d654-7e03-4c15-bdfa-9bb2bcbea494/file_downloaded", "test.zip",
                          md5="69ca8762b2fe404d9b9bad1103e97832", source="tonic/datasets/nmnist.py"),),
    }

    def __init__(self, root, train: bool = True, download: bool = False, transform=None, target_transform=None,
                 first_saccade_only: bool = False):
        super().__init__(root, "train" if train else "test", download, transform, target_transform)
        self.first_saccade_only = first_saccade_only

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        ev = read_nmnist(self.files[index])
        if self.first_saccade_only:
            ev = ev[ev["t"] < 100_000]
        return self._apply(ev, self.targets[index])


class NCaltech101(_BinTree):
    """N-Caltech101: ``root/Caltech101/<class>/image_XXXX.bin`` (sensor at most 240 x 180); one split."""

    sensor_size = (240, 180, 2)
    folders = {"all": "Caltech101"}
    resources = {
        "all": (Resource("https://www.dropbox.com/sh/iuv7o3h2gv6g4vd/AAD0T79lglp-BrdbSCuH_7MFa/Caltech101.zip?dl=1",
                         "Caltech101.zip", md5="66201824eabb0239c7ab992480b50ba3",
                         source="tonic/datasets/ncaltech101.py"),),
    }

    def __init__(self, root, download: bool = False, transform=None, target_transform=None):
        super().__init__(root, "all", download, transform, target_transform)


# ---------------------------------------------------------------- DVS Gesture
class DVSGesture(_Base):
    """IBM DVS Gesture (11 classes, 128 x 128).

    Two on-disk layouts are read:

    ``layout="npy"`` (tonic's preprocessed archive)
        ``root/ibmGestureTrain/<userXX_lighting>/<label>.npy``: an ``(N, 4)``
        array with columns ``x, y, p, t`` and ``t`` in milliseconds (tonic
        multiplies by 1000); the file name is the 0-based label.
    ``layout="aedat"`` (the original IBM release)
        ``root/DvsGesture/trials_to_train.txt`` (or ``trials_to_test.txt``)
        listing ``userXX_lighting.aedat`` files (AEDAT 3.1), each with a
        ``userXX_lighting_labels.csv``; every csv row becomes one sample.

    ``layout="auto"`` picks ``npy`` when its folder exists.
    """

    classes = ["hand_clapping", "right_hand_wave", "left_hand_wave", "right_arm_clockwise",
               "right_arm_counter_clockwise", "left_arm_clockwise", "left_arm_counter_clockwise", "arm_roll",
               "air_drums", "air_guitar", "other_gestures"]
    sensor_size = (128, 128, 2)
    resources = {
        "train": (Resource("https://figshare.com/ndownloader/files/38022171", "ibmGestureTrain.tar.gz",
                           md5="3a8f0d4120a166bac7591f77409cb105", source="tonic/datasets/dvsgesture.py"),),
        "test": (Resource("https://figshare.com/ndownloader/files/38020584", "ibmGestureTest.tar.gz",
                          md5="56070e45dadaa85fff82e0fbfbc06de5", source="tonic/datasets/dvsgesture.py"),),
    }

    def __init__(self, root, train: bool = True, download: bool = False, transform=None, target_transform=None,
                 layout: str = "auto"):
        super().__init__(root, "train" if train else "test", download, transform, target_transform)
        npy_dir = self.root / ("ibmGestureTrain" if train else "ibmGestureTest")
        if layout == "auto":
            layout = "npy" if npy_dir.is_dir() else "aedat"
        if layout not in ("npy", "aedat"):
            raise ConfigError(f"DVSGesture layout {layout!r}; expected 'npy', 'aedat' or 'auto'")
        self.layout = layout
        self._items: list[tuple[Path, int]] = []  # npy: (file, label); aedat: (aedat file, segment index)
        self._labels: list[int] = []
        if layout == "npy":
            if not npy_dir.is_dir():
                raise FileNotFoundError(f"{npy_dir} not found; pass download=True")
            for d in sorted(p for p in npy_dir.iterdir() if p.is_dir()):
                for f in sorted(d.glob("*.npy"), key=lambda p: (len(p.stem), p.stem)):
                    try:
                        label = int(f.stem)
                    except ValueError:
                        raise FormatError(f"{f}: file name should be the 0-based label (e.g. 3.npy)") from None
                    if not 0 <= label < len(self.classes):
                        raise FormatError(f"{f}: label {label} from the file name; expected 0..{len(self.classes)-1}")
                    self._items.append((f, label))
                    self._labels.append(label)
        else:
            base = self.root / "DvsGesture"
            listing = base / ("trials_to_train.txt" if train else "trials_to_test.txt")
            if not listing.exists():
                raise FileNotFoundError(f"{listing} not found (original IBM DvsGesture layout)")
            try:
                names = listing.read_bytes().decode("utf-8").split()
            except UnicodeDecodeError as exc:
                raise FormatError(f"{listing}: byte offset {exc.start} is not UTF-8 text; expected one "
                                  "recording name per line") from exc
            for name in names:
                aedat = _inside_root(listing, base / name, self.root, name)
                segs = read_gesture_labels(aedat.with_name(aedat.stem + "_labels.csv"), len(self.classes))
                for i, s in enumerate(segs):
                    self._items.append((aedat, i))
                    self._labels.append(s.label)
        self._cache: tuple[Path, list] | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def targets(self) -> list[int]:
        """0-based label of every sample."""
        return list(self._labels)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        path, j = self._items[index]
        if self.layout == "npy":
            return self._apply(read_gesture_npy(path, self.sensor_size[:2]), j)
        if self._cache is None or self._cache[0] != path:  # consecutive samples share a recording
            _, ev = read_aedat31(path)
            segs = read_gesture_labels(path.with_name(path.stem + "_labels.csv"), len(self.classes))
            self._cache = (path, cut_segments(ev, segs))
        ev, label = self._cache[1][j]
        return self._apply(ev, label)


def read_gesture_npy(path: str | os.PathLike, sensor_size: tuple[int, int] = (128, 128)) -> np.ndarray:
    """Read one sample of tonic's preprocessed DVS Gesture: ``(N, 4)`` columns x, y, p, t[ms].

    The ``.npy`` header is parsed with ``numpy.lib.format`` (never unpickled) and
    checked against the file size before any data is read. Range checks before
    every conversion: all values finite; x, y, p whole numbers with
    ``0 <= x < width``, ``0 <= y < height``, ``p in {0, 1}``; ``0 <= t`` and
    ``t * 1000`` below 2**63 (int64 microseconds).

    Raises
    ------
    FormatError
        Naming the file and the column (``x``, ``y``, ``p``, ``t``) or header field.
    """
    path = Path(path)
    fmt = np.lib.format
    with open(path, "rb") as fh:
        try:
            version = fmt.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(fh)
            else:
                raise FormatError(f"{path}: .npy format version {version}; expected 1.0 or 2.0")
        except (ValueError, TypeError, SyntaxError, tokenize.TokenError, RecursionError) as exc:
            if isinstance(exc, FormatError):
                raise
            raise FormatError(f"{path}: not a readable .npy header ({exc}); expected an (N, 4) numeric array") from exc
        if dtype.hasobject or dtype.kind not in "iuf" or len(shape) != 2 or shape[1] != 4:
            raise FormatError(f"{path}: header declares shape {shape} of dtype {dtype} (fields 'shape', 'descr'); "
                              "expected (N, 4) numbers with columns x, y, p, t[ms]")
        nbytes = int(shape[0]) * 4 * dtype.itemsize
        body = fh.read(nbytes + 1)
    if len(body) != nbytes:
        raise FormatError(f"{path}: header declares {shape[0]} rows ({nbytes} bytes) but the file holds "
                          f"{len(body)} data bytes (truncated or padded); expected exactly {nbytes}")
    arr = np.frombuffer(body, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    cols = {}
    width, height = sensor_size
    for j, (name, hi) in enumerate((("x", width), ("y", height), ("p", 2))):
        c = arr[:, j]
        if c.size and (not np.all(np.isfinite(c)) or not np.all(c == np.floor(c)) or c.min() < 0 or c.max() >= hi):
            raise FormatError(f"{path}: column {name!r} spans [{c.min()!r}, {c.max()!r}]; expected whole numbers "
                              f"0 <= {name} < {hi}")
        cols[name] = c.astype(np.int64)
    t = arr[:, 3].astype(np.float64)
    if t.size and not (np.all(np.isfinite(t)) and t.min() >= 0 and t.max() * 1000 < 2.0**63):
        raise FormatError(f"{path}: column 't' spans [{t.min()!r}, {t.max()!r}] ms; expected finite times "
                          "0 <= t < 2**63 / 1000 ms (int64 microseconds)")
    if dtype.kind in "iu":  # exact integer path
        t_us = arr[:, 3].astype(np.int64) * 1000
    else:
        t_us = np.rint(t * 1000).astype(np.int64)
    return camera_events(t_us, cols["x"], cols["y"], cols["p"])
