r"""The sparse data path against the dense one, per epoch of an N-MNIST-layout folder.

Replays the training loop's data path (:mod:`evrtrl.training.data`, binned kinds): each
batch of ``B`` samples is read and binned (:func:`evrtrl.datasets.bin_events`, common to
both paths), then assembled either densely (``collate`` to ``(T, B, d)`` and ``.to(dtype)``,
the path of ``sparse=0`` and of dense RTRL/BPTT) or sparsely
(:meth:`evrtrl.events.SparseSequence.from_samples`, the event engine's path), and the event
engine learns on it (:class:`evrtrl.OnlineLearner`, one update per batch). Reports, per
epoch and as the median over ``--repeat`` interleaved repetitions, the assembly time, the
learner time and the whole (read + bin + assemble + learn), and checks that both paths
give the same losses::

    python -m evrtrl.benchmarks.sparse_path --data DIR [--hidden 16] [--batch 4] [--repeat 5]

``DIR``: e.g. ``evrtrl data build saccades --out DIR --per-class 2 --test-per-class 1``.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

import evrtrl
from evrtrl import datasets as ds
from evrtrl.events import SparseSequence
from evrtrl.models import EGRU

__all__ = ["main", "epoch"]


def _files(root: Path) -> list[Path]:
    base = root / "Train" if (root / "Train").is_dir() else root
    return sorted(base.glob("*/*.bin"))


def epoch(files: list[Path], sparse: bool, *, hidden: int, batch: int, T: int, dt_us: int,
          dtype: torch.dtype, seed: int = 0) -> dict[str, float]:
    """One epoch over ``files``; seconds spent per part and the summed loss."""
    torch.manual_seed(seed)
    model = EGRU(2 * 34 * 34, hidden, theta_init=0.05).to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = lambda y, t: ((y - 0.3) ** 2).sum()  # noqa: E731
    out = {"bin_s": 0.0, "assemble_s": 0.0, "learn_s": 0.0, "loss": 0.0}
    t_all = time.perf_counter()
    for lo in range(0, len(files), batch):
        t0 = time.perf_counter()
        steps = [ds.bin_events(ds.read_nmnist(f), dt_us, T=T, sensor_size=(34, 34, 2))
                 for f in files[lo:lo + batch]]
        t1 = time.perf_counter()
        x = SparseSequence.from_samples(steps, T, dtype=dtype) if sparse else \
            ds.collate(steps, T).to(dtype)
        t2 = time.perf_counter()
        learner = evrtrl.OnlineLearner(model, opt, loss_fn, k=T, method="event")
        out["loss"] += sum(learner.run(x))
        t3 = time.perf_counter()
        out["bin_s"] += t1 - t0
        out["assemble_s"] += t2 - t1
        out["learn_s"] += t3 - t2
    out["epoch_s"] = time.perf_counter() - t_all
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="N-MNIST-layout folder")
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--duration-ms", type=float, default=300.0)
    ap.add_argument("--dt-us", type=int, default=10_000)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", help="also write the result as JSON here")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    files = _files(Path(a.data))
    T = math.ceil(a.duration_ms * 1000 / a.dt_us)
    kw = dict(hidden=a.hidden, batch=a.batch, T=T, dt_us=a.dt_us, dtype=getattr(torch, a.dtype))
    runs: dict[str, list[dict[str, float]]] = {"dense": [], "sparse": []}
    for _ in range(a.repeat):  # interleaved: both paths see the same machine load
        for name in ("dense", "sparse"):
            runs[name].append(epoch(files, name == "sparse", **kw))
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    res = {"samples": len(files), "T": T, "d": 2 * 34 * 34, **vars(a),
           "same_loss": runs["dense"][0]["loss"] == runs["sparse"][0]["loss"], "median": med,
           "saved_per_epoch_s": {k: med["dense"][k] - med["sparse"][k]
                                 for k in ("assemble_s", "learn_s", "epoch_s")}}
    print(json.dumps(res, indent=2))
    if a.out:
        from evrtrl.atomic import atomic_write_text
        atomic_write_text(a.out, json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
