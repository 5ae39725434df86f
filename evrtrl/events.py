"""Per-step sparse input: the index + value form the event engine reads directly.

A step of ``B`` input streams with ``d`` channels is either a dense ``(B, d)`` tensor or a
:class:`SparseStep`: the flat positions ``b * d + channel`` of the non-zero entries, their
values, and the channels active in any sequence (host-side, ascending), which is what the
engine needs to give newborn input weights their columns without searching ``x`` again.
A :class:`SparseSequence` holds ``T`` steps in one CSR-like record (``indptr`` by step) and
is built from per-sample CSR arrays, e.g. :class:`evrtrl.datasets.SparseSteps`
(:meth:`SparseSequence.from_samples`), without a dense ``(T, B, d)`` tensor.

Every entry point that takes a sequence ``x`` (:func:`evrtrl.run_engine`,
:func:`evrtrl.gradients`, :func:`evrtrl.simulate`, :class:`evrtrl.OnlineLearner`) takes a
:class:`SparseSequence` as well as a dense tensor (:data:`InputSequence`;
:func:`check_input` validates either). The engines named in
:data:`SPARSE_INPUT_METHODS` (the event engine) read each :class:`SparseStep` as it is:
the non-zeros are never searched for again. The others (dense RTRL, BPTT, the plain
forward pass of :func:`~evrtrl.simulate`) need a dense ``x_t``: :func:`step_input` hands
them one ``(B, d)`` step at a time (:meth:`SparseSequence.dense_step`), never the whole
``(T, B, d)`` tensor.

The network's own events need no queue object: the outputs ``y_t`` of a layer are the
sources of its recurrent projections at ``t + 1`` and of the input projections of the layer
above at ``t``; the engine reads them from the state.
"""
from __future__ import annotations

from typing import Any, Literal, NamedTuple, Sequence, Union, overload

import numpy as np
import torch

from evrtrl.errors import NonFiniteError, ShapeError
from evrtrl.network import check_sequence, layers_of

__all__ = ["SparseStep", "SparseSequence", "InputSequence", "SPARSE_INPUT_METHODS",
           "check_input", "step_input"]

#: engine names (``Engine.name``) whose ``step`` reads a :class:`SparseStep` directly
SPARSE_INPUT_METHODS = frozenset({"event"})


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
        self._active: tuple[np.ndarray, np.ndarray] | None = None  # per-step channels, CSR

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.T, self.B, self.d)

    def __len__(self) -> int:
        return self.T

    def __getitem__(self, t: int) -> SparseStep:
        if self._active is None:  # the channels active per step, found once for all steps
            step = np.repeat(np.arange(self.T), np.diff(self.indptr))
            key = np.unique(step * self.d + self.index.cpu().numpy() % self.d)
            self._active = (np.searchsorted(key, np.arange(self.T + 1) * self.d), key % self.d)
        ptr, ch = self._active
        a, b = int(self.indptr[t]), int(self.indptr[t + 1])
        return SparseStep(self.index[a:b], self.values[a:b], ch[ptr[t]:ptr[t + 1]], self.B, self.d)

    def dense_step(self, t: int) -> torch.Tensor:
        """The ``(B, d)`` tensor of step ``t`` (a fresh tensor: engines may keep it)."""
        a, b = int(self.indptr[t]), int(self.indptr[t + 1])
        x = self.values.new_zeros(self.B * self.d)
        x[self.index[a:b]] = self.values[a:b]
        return x.view(self.B, self.d)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the values (must match the model's parameters)."""
        return self.values.dtype

    def check(self, d: int, dtype: torch.dtype) -> None:
        """Raise a specific error unless this is a finite ``(T >= 1, B >= 1, d)`` sequence of
        ``dtype`` with in-range positions, ascending and unique within each step."""
        if self.d != d:
            raise ShapeError(f"SparseSequence has d = {self.d} input channels, the model expects {d}")
        if self.T < 1 or self.B < 1:
            raise ShapeError(f"SparseSequence must have T >= 1 steps and B >= 1 sequences, "
                             f"got {self.shape}")
        if self.values.dtype != dtype:
            raise ShapeError(f"SparseSequence values have dtype {self.values.dtype}, the model's "
                             f"parameters are {dtype}; build it with dtype={dtype} or convert the model")
        if int(self.indptr[0]) != 0 or np.any(np.diff(self.indptr) < 0):
            raise ShapeError("SparseSequence.indptr must start at 0 and be non-decreasing")
        if self.index.numel():
            lo, hi = int(self.index.min()), int(self.index.max())
            if lo < 0 or hi >= self.B * self.d:
                raise ShapeError(f"SparseSequence.index spans [{lo}, {hi}]; expected flat positions "
                                 f"b * d + channel in [0, {self.B * self.d})")
            step = np.repeat(np.arange(self.T), np.diff(self.indptr))
            key = step * (self.B * self.d) + self.index.cpu().numpy()
            if np.any(np.diff(key) <= 0):
                t = int(step[1:][np.diff(key) <= 0][0])
                raise ShapeError(f"SparseSequence step {t}: positions must be ascending and unique")
        if not bool(torch.isfinite(self.values).all()):
            k = int((~torch.isfinite(self.values)).nonzero()[0])
            t = int(np.searchsorted(self.indptr, k, side="right")) - 1
            pos = int(self.index[k])
            raise NonFiniteError(f"x holds NaN or inf, first at index (t, b, channel) = "
                                 f"{(t, pos // self.d, pos % self.d)}")

    def to_dense(self) -> torch.Tensor:
        x = self.values.new_zeros(self.T, self.B * self.d)
        steps = torch.from_numpy(np.repeat(np.arange(self.T), np.diff(self.indptr)))
        x[steps.to(self.index.device), self.index] = self.values
        return x.view(self.T, self.B, self.d)

    @classmethod
    def from_dense(cls, x: torch.Tensor) -> "SparseSequence":
        """The non-zero entries of a dense ``(T, B, d)`` tensor (same dtype and device)."""
        if x.dim() != 3:
            raise ShapeError(f"SparseSequence.from_dense needs x of shape (T, B, d), got {tuple(x.shape)}")
        T, B, d = x.shape
        flat = x.reshape(T, B * d)
        step, index = flat.nonzero(as_tuple=True)
        indptr = np.zeros(T + 1, dtype=np.int64)
        np.cumsum(torch.bincount(step, minlength=T).cpu().numpy(), out=indptr[1:])
        return cls(indptr, index, flat[step, index], T, B, d)

    @classmethod
    def from_samples(cls, samples: Sequence[Any], T: int | None = None,
                     dtype: torch.dtype = torch.float32,
                     device: torch.device | str | None = None) -> "SparseSequence":
        """Batch per-sample CSR records (attributes ``indptr``, ``channels``, ``counts``,
        ``n_channels``; e.g. :class:`evrtrl.datasets.SparseSteps`) without densifying.

        Each sample is step-major with ascending channels within a step (as
        :class:`~evrtrl.datasets.SparseSteps` are). Shorter samples end early (no events),
        longer ones are cut at ``T`` (default: the longest sample).
        """
        if not samples:
            raise ShapeError("SparseSequence.from_samples needs at least one sample")
        d = int(samples[0].n_channels)
        for i, s in enumerate(samples):
            if int(s.n_channels) != d:
                raise ShapeError(f"sample {i} has n_channels={s.n_channels}; expected {d} like sample 0")
        T = max(len(s.indptr) - 1 for s in samples) if T is None else int(T)
        B = len(samples)
        # each sample is step-major with ascending channels, so a stable sort by step
        # alone orders the entries by (step, b, channel), i.e. by flat position per step
        ends = [int(s.indptr[min(T, len(s.indptr) - 1)]) for s in samples]
        step = np.concatenate([np.repeat(np.arange(min(T, len(s.indptr) - 1)),
                                         np.diff(s.indptr[:T + 1])) for s in samples])
        flat = np.concatenate([b * d + np.asarray(s.channels[:e]) for b, (s, e) in
                               enumerate(zip(samples, ends))])
        val = np.concatenate([np.asarray(s.counts[:e]) for s, e in zip(samples, ends)])
        order = np.argsort(step, kind="stable")
        indptr = np.zeros(T + 1, dtype=np.int64)
        np.cumsum(np.bincount(step, minlength=T), out=indptr[1:])
        return cls(indptr, torch.as_tensor(flat[order], dtype=torch.long, device=device),
                   torch.as_tensor(val[order], dtype=dtype, device=device), T, B, d)


#: what every sequence entry point takes as ``x``: a dense ``(T, B, d)`` tensor or a
#: :class:`SparseSequence` of the same shape
InputSequence = Union[torch.Tensor, SparseSequence]


def check_input(model: Any, x: InputSequence) -> None:
    """:func:`evrtrl.network.check_sequence` for a dense ``x``; :meth:`SparseSequence.check`
    (against the model's input size and dtype) for a sparse one."""
    if isinstance(x, SparseSequence):
        layer = layers_of(model)[0].layer
        x.check(layer.input_size, layer.dtype)
    else:
        check_sequence(model, x)


@overload
def step_input(x: InputSequence, t: int, sparse: Literal[False]) -> torch.Tensor: ...


@overload
def step_input(x: InputSequence, t: int, sparse: bool) -> torch.Tensor | SparseStep: ...


def step_input(x: InputSequence, t: int, sparse: bool) -> torch.Tensor | SparseStep:
    """Step ``t`` of ``x`` for an engine: the :class:`SparseStep` itself where the engine
    reads sparse input (``sparse``) and ``x`` is sparse, else a dense ``(B, d)`` tensor
    (a sparse ``x`` is densified this one step only)."""
    if isinstance(x, SparseSequence):
        return x[t] if sparse else x.dense_step(t)
    return x[t]
