r"""Per-sequence active sets at B > 1: how much coupling work the padded product does.

Runs the event engine on the benchmark's EGRU layer (``rho = 0.2``, per-sequence
``beta ~ 0.1``) with ``B`` independent input streams and reports, averaged over the
steps after warm-up: the per-sequence active fraction (mean of ``|K_b| / n``), the padded
fraction the engine computes with (``max_b |K_b| / n``) and the fraction a single union
set would need (``|U_b K_b| / n``), with the time per step::

    python -m evrtrl.benchmarks.batch [--n 64] [--batch 16] [--steps 200]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from evrtrl.benchmarks import bench

__all__ = ["main", "active_fractions"]


def active_fractions(n: int, B: int, steps: int, warm: int) -> dict[str, float]:
    import evrtrl
    theta, width = bench.calibrate("egru", n, 0.2, 0.1)
    model = bench.build_model("egru", n, 0.2, width, theta)
    x = bench.input_sequence("egru", n, 0.2, steps, B=B)
    r = bench.loss_signal(n, steps, B=B)
    eng = evrtrl.make_engine(model, B, "event")
    padded, union, times = [], [], []
    w, st, first = model.weights(), model.initial_state(B), True
    with torch.no_grad():
        for t in range(steps):
            t0 = time.perf_counter()
            eng.step(x[t])
            eng.accumulate(r[t])
            times.append(time.perf_counter() - t0)
            new, aux = model.step(w, st, x[t])
            lj = model.local_jacobian(w, st, x[t], new, aux, first)
            act = (lj.gain != 0).any(-1) | (lj.gain_direct["theta"] != 0)
            padded.append(float(act.sum(1).max()) / n)
            union.append(float(act.any(0).sum()) / n)
            st, first = new, False
    mean = lambda v: sum(v[warm:]) / len(v[warm:])  # noqa: E731
    return {"beta_per_sequence": mean(eng.stats.beta), "padded": mean(padded),
            "union": mean(union), "ms_per_step": 1e3 * statistics.median(times[warm:])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evrtrl.benchmarks.batch", description=__doc__)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    f = active_fractions(a.n, a.batch, a.steps, a.steps // 3)
    print(f"EGRU n={a.n} B={a.batch}: per-sequence beta {f['beta_per_sequence']:.3f}, "
          f"padded max_b|K_b|/n {f['padded']:.3f} (the coupling work done), union "
          f"|U K_b|/n {f['union']:.3f} (one shared set); {f['ms_per_step']:.2f} ms/step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
