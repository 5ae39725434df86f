r"""Which influence layout is faster: row-major ``(B, n m, P)`` or transposed ``(B, P, n m)``.

Runs the event engine on the benchmark's EGRU and LIF layers (``rho = 0.2``, ``beta ~ 0.1``,
B = 1, float32, 1 thread) in both layouts and prints the median ms per step of
``step + accumulate`` and their ratio. The crossover sets
:data:`evrtrl.influence.COLS_FROM_ENTRIES` (influence entries ``n m p_live`` per sequence) (docs/benchmarks.md records the measurement)::

    python -m evrtrl.benchmarks.layout [--n 32 64 128 256] [--steps 200]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from evrtrl.benchmarks import bench

__all__ = ["time_layout", "main"]


def time_layout(cell: str, n: int, layout: str, theta: float, width: float, steps: int,
                rho: float = 0.2) -> float:
    """Median ms per step of the event engine in ``layout`` (after ``steps // 3`` warm-up)."""
    from evrtrl.event_engine import EventRTRL
    model = bench.build_model(cell, n, rho, width, theta)
    x = bench.input_sequence(cell, n, rho, steps)
    r = bench.loss_signal(n, steps)
    eng = EventRTRL(model, 1, layout=layout)
    times = []
    for t in range(steps):
        t0 = time.perf_counter()
        eng.step(x[t])
        eng.accumulate(r[t])
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times[steps // 3:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evrtrl.benchmarks.layout", description=__doc__)
    p.add_argument("--n", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--cells", nargs="+", default=["egru", "lif"])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print("| cell | n | rows ms/step | cols ms/step | rows/cols |\n|---|---|---|---|---|")
    for cell in a.cells:
        for n in a.n:
            theta, width = bench.calibrate(cell, n, 0.2, 0.1)
            # interleave the two layouts (twice) so that machine load hits both alike
            ms = {"rows": [], "cols": []}
            for _ in range(2):
                for lay in ("rows", "cols"):
                    ms[lay].append(time_layout(cell, n, lay, theta, width, a.steps))
            r, c = min(ms["rows"]), min(ms["cols"])
            print(f"| {cell} | {n} | {r:.3f} | {c:.3f} | {r / c:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
