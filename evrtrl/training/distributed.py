r"""Data-parallel training with ``torch.distributed`` (gloo; NCCL once the loop runs on CUDA).

Each process owns a shard of every global batch, its own streams and their influence
matrices (its own RTRL engine): RTRL is exact per stream, so nothing of the engine is
shared. Before every optimizer step the gradients — the engine's exact RTRL gradient of
the recurrent parameters and the readout's — are **summed** over the processes with
``all_reduce(SUM)``; the loss on each process is the sum of its samples' losses divided by
the *global* batch size, so the summed gradient is exactly the gradient of the mean loss
over the union of the shards, i.e. what one process computes on the whole batch (up to
floating-point summation order). Every process then takes the same optimizer step from the
same state, so the weights stay identical without being broadcast.

Launch: ``torchrun --nproc_per_node=P -m evrtrl.training.cli train ...`` (or the
``evrtrl train`` entry point under torchrun); :func:`init_from_env` picks up
``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``.

One run, all ranks: rank 0 holds the run directory's lock (:mod:`evrtrl.training.rundir`)
and the setup outcome is agreed by all ranks (:func:`agree`). A rank that fails stops the
others with an error instead of leaving them waiting in a collective (a failure barrier):
the training loop calls :func:`abort` on any exception, which records the failed rank in
the process group's store; every collective of this module is started asynchronously and,
while it waits, polls that key, so the other ranks raise :class:`~evrtrl.errors.RunError`
within milliseconds even when the failed process lives on (a notebook, a driver script).
(The abandoned collective itself cannot be cancelled: gloo's worker thread waits for the
failed process until it exits or the time limit passes, which can delay the *exit* of
this process; ``evrtrl train`` therefore leaves at once with ``os._exit`` after printing
its error line.)
A process that dies closes its connections, which fails the others' collectives too; one
that hangs without failing is caught by the time limit of every collective
(``$EVRTRL_DIST_TIMEOUT_S``, default 600 s).
"""
from __future__ import annotations

import datetime
import os
import time
from typing import Any, Callable, Sequence

import torch

from evrtrl.errors import PeerFailedError, RunError

__all__ = ["rank_and_world", "init_from_env", "AllReduceOptimizer", "all_reduce_sum", "shard",
           "barrier", "agree", "abort", "collective", "spawn_train", "timeout_s"]


def timeout_s() -> float:
    """Time limit of one collective: ``$EVRTRL_DIST_TIMEOUT_S`` (default 600 s)."""
    return float(os.environ.get("EVRTRL_DIST_TIMEOUT_S", "600"))


#: store key under which a failed rank announces itself (:func:`abort`)
_FAILED_KEY = "evrtrl_failed_rank"


def _store():
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()


def _failed_rank(store) -> str | None:
    try:
        return store.get(_FAILED_KEY).decode() if store.check([_FAILED_KEY]) else None
    except RuntimeError as exc:  # the store's host (rank 0) is gone
        return f"? (the store is unreachable: {exc})"


def collective(start: Callable[[], Any], what: str) -> None:
    """Run the asynchronous collective ``start()`` and wait for it, polling for a failed rank
    (module docstring); gloo's error for a peer that failed, left or timed out is a RunError."""
    rank = rank_and_world()[0]
    try:
        work = start()
        store, deadline, pause = _store(), time.monotonic() + timeout_s(), 1e-4
        while not work.is_completed():
            failed = _failed_rank(store)
            if failed is not None:
                raise PeerFailedError(f"rank {rank}: rank {failed} of the distributed run failed (see its error); "
                               f"stopping this one too (during {what})")
            if time.monotonic() > deadline:
                raise PeerFailedError(f"rank {rank}: the other processes did not answer within {timeout_s():.0f} s "
                               f"during {what} ($EVRTRL_DIST_TIMEOUT_S); stopping")
            time.sleep(pause)
            pause = min(2 * pause, 0.01)
        work.wait()
    except RuntimeError as exc:
        if isinstance(exc, RunError):
            raise
        raise PeerFailedError(f"rank {rank}: another process of the distributed run failed or left during {what}; "
                       f"stopping this one too ({exc})") from exc


def _dist():
    import torch.distributed as dist

    return dist


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised default group, else ``(0, 1)``."""
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the default group from torchrun's environment when ``WORLD_SIZE > 1``.

    Backend: ``backend``, else ``$EVRTRL_DIST_BACKEND``, else ``gloo``. The training loop
    keeps its tensors on the CPU today, so ``gloo`` is the right default; ``nccl`` is for
    when models live on CUDA devices (the all-reduce code is device-agnostic, but the loop
    has no ``--device`` yet). Returns True when a group is (now) initialised.
    """
    dist = _dist()
    if dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = backend or os.environ.get("EVRTRL_DIST_BACKEND", "gloo")
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s()))
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def barrier() -> None:
    if rank_and_world()[1] > 1:
        collective(lambda: _dist().barrier(async_op=True), "a barrier")


def abort() -> None:
    """After an exception on this rank: announce the failure to the other ranks (their pending
    and next collectives raise RunError) and leave the process group."""
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        try:
            if rank_and_world()[1] > 1:
                _store().set(_FAILED_KEY, str(rank_and_world()[0]))
            dist.destroy_process_group()
        except RuntimeError:  # pragma: no cover - the group or its store is broken already
            pass


def agree(error: BaseException | None, what: str) -> None:
    """Every rank passes its own outcome of a step (None: success); if any rank failed, every
    rank raises: the failed ones their own error, the others a RunError naming the failed ranks."""
    rank, world = rank_and_world()
    if world > 1:
        flags = torch.zeros(world, dtype=torch.float64)
        flags[rank] = 1.0 if error is not None else 0.0
        collective(lambda: _dist().all_reduce(flags, async_op=True), what)
        failed = [r for r in range(world) if flags[r] > 0]
        if failed and error is None:
            raise PeerFailedError(f"rank {rank}: rank(s) {failed} failed during {what} (see their error); stopping too")
    if error is not None:
        raise error


def _group_size(group: Any) -> int:
    if rank_and_world()[1] == 1:
        return 1
    return _dist().get_world_size(group) if group is not None else rank_and_world()[1]


def all_reduce_sum(values: Sequence[float], device: Any = "cpu", group: Any = None) -> list[float]:
    """Sum a few floats over the processes of ``group`` (default all; float64; identity in
    a 1-process group)."""
    if _group_size(group) == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    collective(lambda: _dist().all_reduce(t, group=group, async_op=True), "the metrics all-reduce")
    return t.tolist()


def shard(indices: Sequence[int], rank: int, world: int) -> list[int]:
    """Contiguous shard ``rank`` of ``world`` of a global batch (sizes differ by <= 1)."""
    n = len(indices)
    if n < world:
        raise ValueError(f"global batch of {n} samples cannot be split over {world} processes")
    lo, hi = (n * rank) // world, (n * (rank + 1)) // world
    return list(indices[lo:hi])


class OptimizerWrapper:
    """Delegates the optimizer interface to ``self.optimizer``; subclasses define ``step``."""

    optimizer: torch.optim.Optimizer
    #: the gradients of this update were summed already (:meth:`all_reduce_gradients`)
    _reduced: bool = False

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, sd) -> None:
        self.optimizer.load_state_dict(sd)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)
        self._reduced = False


class AllReduceOptimizer(OptimizerWrapper):
    """Wraps an optimizer: ``step()`` first sums every parameter's ``.grad`` over the
    processes (one flat buffer, one ``all_reduce``), then steps the wrapped optimizer.

    A parameter whose gradient is None on every process stays None (so optimizers that
    skip such parameters behave as in a 1-process run); None on some processes only
    counts as zero there. ``group``: the processes to sum over (default all).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, group: Any = None) -> None:
        self.optimizer, self.group = optimizer, group

    def _params(self) -> list[torch.nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    @torch.no_grad()
    def step(self, closure=None):
        self.all_reduce_gradients()
        self._reduced = False
        return self.optimizer.step(closure) if closure is not None else self.optimizer.step()

    @torch.no_grad()
    def all_reduce_gradients(self) -> None:
        """Sum every parameter's ``.grad`` over the group now (one flat float64 buffer, one
        all_reduce; once until the next ``step``/``zero_grad``); the learner calls this
        before its finite check, so every process checks the same summed gradients."""
        if self._reduced:
            return
        self._reduced = True
        if _group_size(self.group) > 1:
            params = self._params()
            ref = params[0]
            flat = torch.cat(
                [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(torch.float64)
                 if ref.dtype != torch.float64 else
                 (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                 for p in params]
                + [torch.tensor([0.0 if p.grad is None else 1.0 for p in params],
                                dtype=torch.float64, device=ref.device)]
            )
            collective(lambda: _dist().all_reduce(flat, group=self.group, async_op=True),
                        "the gradient all-reduce")
            has = flat[-len(params):]
            o = 0
            for i, p in enumerate(params):
                k = p.numel()
                if has[i] > 0:
                    p.grad = flat[o:o + k].view_as(p).to(p.dtype).clone()
                o += k


def _spawn_worker(rank: int, world: int, init_method: str, cfg: dict, out: str, threads: int,
                  resume: bool, overwrite: bool) -> None:
    from evrtrl.training.loop import TrainConfig, train

    torch.set_num_threads(threads)
    dist = _dist()
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s()))
    try:
        train(TrainConfig.from_dict(cfg), out, progress=False, resume=resume, overwrite=overwrite)
    finally:
        # train() announces its own failure (abort) before raising; a rank that finished must
        # not: announcing would make peers still waiting in the final barrier raise
        # PeerFailedError (seen in CI: rank 0 done, rank 2 stopped "because rank 0 failed")
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn_train(world: int, cfg: Any, out: str | os.PathLike, *, init_method: str | None = None,
                threads: int = 1, resume: bool = False, overwrite: bool = False) -> None:
    """Train ``cfg`` into ``out`` with ``world`` local processes (gloo, loopback or a
    file store in a temporary directory; ``torch.multiprocessing.spawn``). For tests and
    single-machine runs; use torchrun for several machines (docs/training.md)."""
    import dataclasses
    import tempfile

    import torch.multiprocessing as mp

    out = os.fspath(out)
    d = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    with tempfile.TemporaryDirectory(prefix="evrtrl-dist-") as tmp:
        if init_method is None:
            init_method = "file://" + os.path.join(tmp, "store")
        mp.spawn(_spawn_worker, args=(world, init_method, d, out, threads, resume, overwrite), nprocs=world,
                 join=True)
