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
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch

__all__ = ["rank_and_world", "init_from_env", "AllReduceOptimizer", "all_reduce_sum", "shard",
           "barrier", "spawn_train"]


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
    dist.init_process_group(backend=backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def barrier() -> None:
    if rank_and_world()[1] > 1:
        _dist().barrier()


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
    _dist().all_reduce(t, group=group)
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
        self.reduce()
        return self.optimizer.step(closure) if closure is not None else self.optimizer.step()

    @torch.no_grad()
    def reduce(self) -> None:
        """Sum every ``.grad`` over the group (one flat float64 buffer, one all_reduce)."""
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
            _dist().all_reduce(flat, group=self.group)
            has = flat[-len(params):]
            o = 0
            for i, p in enumerate(params):
                k = p.numel()
                if has[i] > 0:
                    p.grad = flat[o:o + k].view_as(p).to(p.dtype).clone()
                o += k


def _spawn_worker(rank: int, world: int, init_method: str, cfg: dict, out: str, threads: int) -> None:
    from evrtrl.training.loop import TrainConfig, train

    torch.set_num_threads(threads)
    dist = _dist()
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        train(TrainConfig.from_dict(cfg), out, progress=False)
    finally:
        dist.destroy_process_group()


def spawn_train(world: int, cfg: Any, out: str | os.PathLike, *, init_method: str | None = None,
                threads: int = 1) -> None:
    """Train ``cfg`` into ``out`` with ``world`` local processes (gloo, loopback or a
    file store; ``torch.multiprocessing.spawn``). For tests and single-machine runs;
    use torchrun for several machines (docs/training.md)."""
    import dataclasses

    import torch.multiprocessing as mp

    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    if init_method is None:
        store = os.path.join(out, ".dist_store")
        if os.path.exists(store):
            os.unlink(store)
        init_method = "file://" + os.path.abspath(store)
    d = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    mp.spawn(_spawn_worker, args=(world, init_method, d, out, threads), nprocs=world, join=True)
