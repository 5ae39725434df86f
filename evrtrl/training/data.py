r"""The training code's one door to data: ``--data KIND:PATH[,key=value...]``.

Every data set is seen through :class:`SequenceData`: ``len(data)`` samples, a fixed
number of steps ``T``, ``n_inputs`` channels, ``n_classes`` classes, and
``data.batch(indices, dtype) -> (x, labels)`` with ``x`` a dense ``(T, B, n_inputs)``
tensor (zeros where no event) and ``labels`` a ``(B,)`` int64 tensor. ``T`` is fixed per
data set (samples are padded with silence or cut), so that every batch, on every
process of a distributed run, has the same number of steps and hence the same number
of optimizer updates.

Sparse batches
--------------
The binned kinds (``shd``, ``nmnist``) also offer ``data.sparse_batch(indices, dtype)``:
the same batch as an :class:`evrtrl.events.SparseSequence` built straight from the
per-sample :class:`evrtrl.datasets.SparseSteps` (no dense ``(T, B, d)`` tensor).
:func:`learner_batch` is what the training loop calls: for a method whose engine reads
sparse input (``event``, :data:`evrtrl.events.SPARSE_INPUT_METHODS`) it hands the learner
the sparse batch, so the events are never densified and searched for again; for
``dense``/``dense-live``/``bptt`` and the synthetic kinds it hands the dense batch
(densified once per batch by ``collate``). The option ``sparse=0`` on a binned kind
keeps the dense batch for every method (the old path; same numbers, slower).

Kinds
-----
``synthetic:rotation[,n=256,seed=0,T=17,noise=0.0]``
    The rotation-direction task: 2-D trajectories
    :math:`x_1 = \pm\sin(t+\varphi)/(1+t)`, :math:`x_2 = \cos(t+\varphi)/(1+t)`,
    ``t = 0 .. T-1``, :math:`\varphi \sim U[0, 2\pi)`; class 0 = ``+`` (clockwise
    in the (x1, x2) plane), class 1 = ``-``. Dense, real-valued input.
``synthetic:spikes[,n=256,seed=0,T=20,d=16,classes=4,rate=0.1]``
    Random spike-pattern classification: each class has a fixed random template of
    firing probabilities (``rate`` on average, a few channels per step much higher);
    a sample is a Bernoulli draw from its class template. Sparse 0/1 input.
``shd:PATH[,dt_us=10000,duration_ms=1000,channels=700,factor=1,test=PATH,sparse=1]``
    Spiking Heidelberg Digits layout (``spikes/times`` in seconds, ``spikes/units``,
    ``labels``, optional ``extra/keys``). ``PATH`` is a directory holding ``*train*.h5``
    and ``*test*.h5``, or one ``.h5`` file: the train split; its test split is the file
    named by ``test=`` (one file is never used as both). ``factor`` merges neighbouring
    channels (``unit // factor``; SHD 700 -> 140 with ``factor=5``).
``nmnist:PATH[,dt_us=10000,duration_ms=300,size=34x34,pool=1,test=PATH,sparse=1]``
    N-MNIST ``.bin`` tree: ``PATH/Train/<class>/*.bin`` and ``PATH/Test/<class>/*.bin``,
    or ``PATH/<class>/*.bin``: the train split, whose test split is the tree named by
    ``test=``; classes are the sorted folder names.
    Channel ``(p * height + y) * width + x``, ``n_inputs = 2 * width * height``;
    ``pool=k`` pools ``k x k`` pixels into one (``x // k``, ``y // k``).

Unknown keys and out-of-range values (``n=0``, ``T=0``, ``duration_ms=0``, ``factor=0``,
...) are refused with :class:`~evrtrl.errors.ConfigError` naming the key. ``open_data(...,
whole_set=True)`` (used by ``evaluate --data``) lets a single file or tree serve the split
asked for.

Expectations of the ``datasets`` package (imported lazily, only for ``shd``/``nmnist``)
---------------------------------------------------------------------------------------
* ``datasets.SpikeH5(path)``: ``len()``, ``.keys`` (class names, may be empty),
  ``.label(i) -> int``, ``.events(i) -> structured array`` with fields ``t`` (int64 us)
  and ``unit``; fork-safe.
* ``evrtrl.datasets.read_nmnist(path) -> structured array`` with fields ``t`` (us), ``x``,
  ``y``, ``p``.
* ``evrtrl.datasets.bin_events(events, dt_us, n_channels=..., sensor_size=(w, h, 2), T=...)
  -> SparseSteps``; ``evrtrl.datasets.collate(list_of_SparseSteps, T) -> torch (T, B, d)``
  (event counts per step and channel as values) for the dense batch and
  ``evrtrl.events.SparseSequence.from_samples(list_of_SparseSteps, T)`` for the sparse one.
The step length comes from ``dt_us`` in the spec or ``--dt-us`` on the command line.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from evrtrl import datasets as ds
from evrtrl.errors import ConfigError, UnknownMethodError
from evrtrl.events import SPARSE_INPUT_METHODS, InputSequence, SparseSequence

__all__ = ["DataSpec", "parse_data_spec", "open_data", "SequenceData", "KINDS", "OPTIONS", "learner_batch"]

KINDS = ("synthetic", "shd", "nmnist")
#: the option keys of each kind (synthetic: per task)
OPTIONS = {
    "rotation": ("n", "seed", "T", "noise"),
    "spikes": ("n", "seed", "T", "d", "classes", "rate"),
    "shd": ("dt_us", "duration_ms", "channels", "factor", "test", "sparse"),
    "nmnist": ("dt_us", "duration_ms", "size", "pool", "test", "sparse"),
}
_OPT = re.compile(r",([A-Za-z_]+)=([^,]*)$")


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``KIND:PATH[,key=value...]``."""

    kind: str
    path: str
    options: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.kind + ":" + self.path + "".join(f",{k}={v}" for k, v in self.options.items())


def parse_data_spec(spec: str) -> DataSpec:
    """Parse ``KIND:PATH[,key=value...]`` (trailing ``,key=value`` items are options)."""
    if isinstance(spec, DataSpec):
        return spec
    kind, sep, rest = str(spec).partition(":")
    if not sep or not rest:
        raise ConfigError(f"--data {spec!r}: expected KIND:PATH with KIND one of {KINDS}, "
                          "e.g. synthetic:rotation or shd:/data/shd_train.h5")
    if kind not in KINDS:
        raise UnknownMethodError(f"--data {spec!r}: unknown kind {kind!r}; expected one of {KINDS}")
    opts: dict[str, str] = {}
    while True:
        m = _OPT.search(rest)
        if not m:
            break
        opts[m.group(1)] = m.group(2)
        rest = rest[: m.start()]
    if not rest:
        raise ConfigError(f"--data {spec!r}: empty PATH")
    known = OPTIONS.get(rest if kind == "synthetic" else kind)
    if known is not None:
        unknown = [k for k in opts if k not in known]
        if unknown:
            raise ConfigError(f"--data {spec!r}: unknown key(s) {unknown}; {kind}:"
                              f"{rest if kind == 'synthetic' else 'PATH'} takes {list(known)}")
    return DataSpec(kind, rest, dict(reversed(list(opts.items()))))


def _opt(spec: DataSpec, name: str, default: Any, cast=int, low: float | None = None,
         high: float | None = None) -> Any:
    """Option ``name`` cast to ``cast``, required to lie in ``[low, high]`` (when given)."""
    if name not in spec.options:
        return default
    try:
        v = cast(spec.options[name])
    except ValueError as exc:
        raise ConfigError(f"--data {spec}: option {name}={spec.options[name]!r} is not a "
                          f"valid {cast.__name__}") from exc
    if not math.isfinite(v) or (low is not None and v < low) or (high is not None and v > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"--data {spec}: option {name}={spec.options[name]} must be {bounds}")
    return v


class SequenceData:
    """Base of the adapters: ``len``, ``T``, ``n_inputs``, ``n_classes``, ``batch``."""

    T: int
    n_inputs: int
    n_classes: int
    dt_us: int | None = None

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def batch(self, indices: Sequence[int], dtype: torch.dtype = torch.float32
              ) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    #: whether :meth:`sparse_batch` is offered (binned event data with ``sparse=1``)
    sparse: bool = False

    def sparse_batch(self, indices: Sequence[int], dtype: torch.dtype = torch.float32
                     ) -> tuple[SparseSequence, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"samples": len(self), "T": self.T, "n_inputs": self.n_inputs,
                "n_classes": self.n_classes, "dt_us": self.dt_us}


def learner_batch(data: SequenceData, indices: Sequence[int], dtype: torch.dtype,
                  method: str) -> tuple[InputSequence, torch.Tensor]:
    """The batch the training loop hands the learner: ``data.sparse_batch`` where the data
    offer it and ``method``'s engine reads sparse input, else the dense ``data.batch``."""
    if data.sparse and method in SPARSE_INPUT_METHODS:
        return data.sparse_batch(indices, dtype)
    return data.batch(indices, dtype)


class TensorData(SequenceData):
    """Samples held in memory: ``x`` ``(N, T, d)`` and ``y`` ``(N,)``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n_classes: int) -> None:
        self.x, self.y = x, y.long()
        self.T, self.n_inputs, self.n_classes = x.shape[1], x.shape[2], int(n_classes)

    def __len__(self) -> int:
        return self.x.shape[0]

    def batch(self, indices, dtype=torch.float32):
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return self.x[idx].transpose(0, 1).to(dtype).contiguous(), self.y[idx]


def rotation_task(n: int, seed: int, T: int = 17, noise: float = 0.0) -> TensorData:
    """The rotation-direction task (module docstring); balanced classes."""
    g = torch.Generator().manual_seed(seed)
    phi = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    y = torch.arange(n) % 2
    y = y[torch.randperm(n, generator=g)]
    t = torch.arange(T, dtype=torch.float64)
    sign = 1.0 - 2.0 * y.double()  # class 0 -> +, 1 -> -
    arg = t[None, :] + phi[:, None]
    x = torch.stack((sign[:, None] * torch.sin(arg), torch.cos(arg)), dim=-1) / (1 + t)[None, :, None]
    if noise:
        x = x + noise * torch.randn(x.shape, generator=g, dtype=torch.float64)
    return TensorData(x, y, 2)


def spike_task(n: int, seed: int, T: int = 20, d: int = 16, classes: int = 4,
               rate: float = 0.1) -> TensorData:
    """Random spike-pattern classification (module docstring)."""
    g = torch.Generator().manual_seed(seed)
    # class templates are fixed by the data seed's template stream (shared across splits)
    gt = torch.Generator().manual_seed(1_000_003)
    templ = torch.rand(classes, T, d, generator=gt, dtype=torch.float64) * rate
    hot = torch.rand(classes, T, d, generator=gt) < 0.08
    templ = torch.where(hot, torch.full_like(templ, 0.8), templ)
    y = torch.arange(n) % classes
    y = y[torch.randperm(n, generator=g)]
    x = (torch.rand(n, T, d, generator=g, dtype=torch.float64) < templ[y]).double()
    return TensorData(x, y, classes)


class _BinnedData(SequenceData):
    """Events read and binned per sample by the ``datasets`` package."""

    def __init__(self, ds_mod, n: int, labels: list[int], n_classes: int, T: int, d: int,
                 dt_us: int, read, bin_kw: dict[str, Any], transform=None, sparse: bool = True) -> None:
        self.ds, self._n, self.labels, self.sparse = ds_mod, n, labels, sparse
        self.n_classes, self.T, self.n_inputs, self.dt_us = n_classes, T, d, dt_us
        self._read, self._bin_kw = read, bin_kw
        self._transform = transform or (lambda ev: ev)

    def __len__(self) -> int:
        return self._n

    def _steps(self, indices) -> list[Any]:
        return [self.ds.bin_events(self._transform(self._read(int(i))), self.dt_us, T=self.T,
                                   **self._bin_kw)
                for i in indices]

    def _labels(self, indices) -> torch.Tensor:
        return torch.tensor([self.labels[int(i)] for i in indices], dtype=torch.long)

    def sparse_batch(self, indices, dtype=torch.float32):
        """The batch as a :class:`~evrtrl.events.SparseSequence` ``(T, B, n_inputs)``."""
        steps = self._steps(indices)
        x = SparseSequence.from_samples(steps, self.T, dtype=dtype)
        if x.shape != (self.T, len(steps), self.n_inputs):
            raise ConfigError(f"binned samples give a sparse batch of shape {x.shape}, expected "
                              f"{(self.T, len(steps), self.n_inputs)}")
        return x, self._labels(indices)

    def batch(self, indices, dtype=torch.float32):
        steps = self._steps(indices)
        x = self.ds.collate(steps, self.T)
        if x.shape != (self.T, len(steps), self.n_inputs):
            raise ConfigError(f"evrtrl.datasets.collate returned shape {tuple(x.shape)}, expected "
                              f"{(self.T, len(steps), self.n_inputs)}")
        return x.to(dtype), self._labels(indices)


def _sparse_opt(spec: DataSpec) -> bool:
    return bool(_opt(spec, "sparse", 1, low=0, high=1))


def _single_set(spec: DataSpec, split: str, whole_set: bool) -> Path:
    """The path of ``split`` when PATH holds one set (a file, or a tree without Train/Test)."""
    if split == "train" or whole_set:
        return Path(spec.path)
    if "test" in spec.options:
        return Path(spec.options["test"])
    raise ConfigError(f"--data {spec}: {spec.path} holds one set; it would be both the train and the test "
                      "split. Give the test set with ,test=PATH, a directory holding both splits, or --no-eval")


def _split_file(path: Path, split: str, pattern: str) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory")
    hits = sorted(path.glob(f"*{split}*{pattern}"))
    if not hits:
        raise FileNotFoundError(f"{path}: no '*{split}*{pattern}' file for the {split} split")
    return hits[0]


def _open_shd(spec: DataSpec, split: str, dt_us: int, whole_set: bool) -> SequenceData:
    path = Path(spec.path)
    f = _split_file(_single_set(spec, split, whole_set) if path.is_file() else path, split, ".h5")
    factor = _opt(spec, "factor", 1, low=1)
    d = -(-_opt(spec, "channels", 700, low=1) // factor)
    T = math.ceil(_opt(spec, "duration_ms", 1000, float, low=1e-3) * 1000 / dt_us)
    h5 = ds.SpikeH5(f)
    n = len(h5)
    labels = [int(h5.label(i)) for i in range(n)]
    n_classes = len(h5.keys) or (max(labels) + 1 if labels else 0)
    return _BinnedData(ds, n, labels, n_classes, T, d, dt_us, h5.events, {"n_channels": d},
                       ds.DownsampleChannels(factor) if factor > 1 else None, _sparse_opt(spec))


def _open_nmnist(spec: DataSpec, split: str, dt_us: int, whole_set: bool) -> SequenceData:
    root = Path(spec.path)
    base = root / {"train": "Train", "test": "Test"}[split]
    if not base.is_dir():
        if (root / "Train").is_dir() or (root / "Test").is_dir():
            raise FileNotFoundError(f"{root}: has no {base.name}/ folder for the {split} split")
        base = _single_set(spec, split, whole_set)
    if not base.is_dir():
        raise FileNotFoundError(f"{root}: no such directory")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    files, labels = [], []
    for k, c in enumerate(classes):
        for fn in sorted((base / c).glob("*.bin")):
            files.append(fn)
            labels.append(k)
    if not files:
        raise FileNotFoundError(f"{base}: no <class>/*.bin files")
    w, _, h = spec.options.get("size", "34x34").partition("x")
    try:
        w, h = int(w), int(h or w)
    except ValueError:
        w = h = 0
    if w < 1 or h < 1:
        raise ConfigError(f"--data {spec}: option size={spec.options['size']!r}: expected WIDTHxHEIGHT, "
                          "positive integers (e.g. 34x34)")
    pool = ds.SpatialPool(_opt(spec, "pool", 1, low=1))
    w, h = pool.pooled_size(w, h)
    T = math.ceil(_opt(spec, "duration_ms", 300, float, low=1e-3) * 1000 / dt_us)
    return _BinnedData(ds, len(files), labels, len(classes), T, 2 * w * h, dt_us,
                       lambda i: ds.read_nmnist(files[i]), {"sensor_size": (w, h, 2)},
                       pool if pool.kx > 1 else None, _sparse_opt(spec))


def open_data(spec: str | DataSpec, split: str = "train", *, dt_us: int | None = None,
              whole_set: bool = False) -> SequenceData:
    """Open the ``split`` ("train" or "test") of the data set named by ``spec``.

    ``whole_set``: a PATH holding one set (a file, a tree without Train/Test) serves any
    split (``evaluate --data``); otherwise it is the train split only (module docstring).
    """
    spec = parse_data_spec(spec)
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    if spec.kind == "synthetic":
        seed = _opt(spec, "seed", 0) + (0 if split == "train" else 10_007)
        n = _opt(spec, "n", 256 if split == "train" else 128, low=1)
        T = _opt(spec, "T", 17 if spec.path == "rotation" else 20, low=1)
        if spec.path == "rotation":
            return rotation_task(n, seed, T=T, noise=_opt(spec, "noise", 0.0, float, low=0))
        if spec.path == "spikes":
            return spike_task(n, seed, T=T, d=_opt(spec, "d", 16, low=1),
                              classes=_opt(spec, "classes", 4, low=2), rate=_opt(spec, "rate", 0.1, float, 0, 1))
        raise UnknownMethodError(f"--data {spec}: unknown synthetic task {spec.path!r}; "
                                 "expected 'rotation' or 'spikes'")
    dt = _opt(spec, "dt_us", dt_us or 10_000, low=1)
    if spec.kind == "shd":
        return _open_shd(spec, split, dt, whole_set)
    return _open_nmnist(spec, split, dt, whole_set)
