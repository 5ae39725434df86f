"""Per-step sparse input: the index + value form the event engine reads directly.

A step of ``B`` input streams with ``d`` channels is either a dense ``(B, d)`` tensor or a
:class:`SparseStep`: the flat positions ``b * d + channel`` of the non-zero entries, their
values, and the channels active in any sequence (host-side, ascending), which is what the
engine needs to give newborn input weights their columns without searching ``x`` again.
A :class:`SparseSequence` holds ``T`` steps in one CSR-like record (``indptr`` by step) and
is built from per-sample CSR arrays, e.g. :class:`evrtrl.datasets.SparseSteps`
(:meth:`SparseSequence.from_samples`), without a dense ``(T, B, d)`` tensor.

The network's own events need no queue object: the outputs ``y_t`` of a layer are the
sources of its recurrent projections at ``t + 1`` and of the input projections of the layer
above at ``t``; the engine reads them from the state.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np
import torch

from evrtrl.errors import ShapeError

__all__ = ["SparseStep", "SparseSequence"]


class SparseStep(NamedTuple):
    """One step of ``batch`` streams: ``values`` at flat positions ``index = b * d + channel``.

    ``channels`` (numpy int64, ascending, unique) lists the channels non-zero in any sequence.
    """

    index: torch.Tensor
    values: torch.Tensor
    channels: np.ndarray
    batch: int
    d: int

    def to_dense(self) -> torch.Tensor:
        """The ``(batch, d)`` tensor of this step."""
        x = self.values.new_zeros(self.batch * self.d)
        x[self.index] = self.values
        return x.view(self.batch, self.d)


class SparseSequence:
    """``T`` steps of ``B`` streams in CSR form: step ``t`` owns entries ``indptr[t]:indptr[t+1]``.

    ``index`` holds flat positions ``b * d + channel`` (ascending within a step), ``values``
    their values. ``seq[t]`` is a :class:`SparseStep`; ``seq.to_dense()`` the ``(T, B, d)``
    tensor (for the engines that need it).
    """

    def __init__(self, indptr: np.ndarray, index: torch.Tensor, values: torch.Tensor,
                 T: int, B: int, d: int) -> None:
        if indptr.shape != (T + 1,) or index.shape != values.shape or index.dim() != 1 \
                or int(indptr[-1]) != index.numel():
            raise ShapeError(f"SparseSequence: indptr {indptr.shape} must be ({T + 1},) ending at "
                             f"len(index) = len(values); got index {tuple(index.shape)}, "
                             f"values {tuple(values.shape)}")
        self.indptr, self.index, self.values = indptr, index, values
        self.T, self.B, self.d = T, B, d
        self._channels = (index % d).cpu().numpy()

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.T, self.B, self.d)

    def __len__(self) -> int:
        return self.T

    def __getitem__(self, t: int) -> SparseStep:
        a, b = int(self.indptr[t]), int(self.indptr[t + 1])
        return SparseStep(self.index[a:b], self.values[a:b], np.unique(self._channels[a:b]),
                          self.B, self.d)

    def to_dense(self) -> torch.Tensor:
        x = self.values.new_zeros(self.T, self.B * self.d)
        steps = torch.from_numpy(np.repeat(np.arange(self.T), np.diff(self.indptr)))
        x[steps.to(self.index.device), self.index] = self.values
        return x.view(self.T, self.B, self.d)

    @classmethod
    def from_samples(cls, samples: Sequence[Any], T: int | None = None,
                     dtype: torch.dtype = torch.float32,
                     device: torch.device | str | None = None) -> "SparseSequence":
        """Batch per-sample CSR records (attributes ``indptr``, ``channels``, ``counts``,
        ``n_channels``; e.g. :class:`evrtrl.datasets.SparseSteps`) without densifying.

        Shorter samples end early (no events), longer ones are cut at ``T`` (default: the
        longest sample).
        """
        if not samples:
            raise ShapeError("SparseSequence.from_samples needs at least one sample")
        d = int(samples[0].n_channels)
        for i, s in enumerate(samples):
            if int(s.n_channels) != d:
                raise ShapeError(f"sample {i} has n_channels={s.n_channels}; expected {d} like sample 0")
        T = max(len(s.indptr) - 1 for s in samples) if T is None else int(T)
        B = len(samples)
        steps, flat, vals = [], [], []
        for b, s in enumerate(samples):
            k = np.repeat(np.arange(len(s.indptr) - 1), np.diff(s.indptr))
            keep = k < T
            steps.append(k[keep])
            flat.append(b * d + np.asarray(s.channels)[keep])
            vals.append(np.asarray(s.counts)[keep])
        step, flat_, val = (np.concatenate(a) for a in (steps, flat, vals))
        order = np.lexsort((flat_, step))
        indptr = np.zeros(T + 1, dtype=np.int64)
        np.cumsum(np.bincount(step, minlength=T)[:T], out=indptr[1:])
        return cls(indptr, torch.as_tensor(flat_[order], dtype=torch.long, device=device),
                   torch.as_tensor(val[order], dtype=dtype, device=device), T, B, d)
