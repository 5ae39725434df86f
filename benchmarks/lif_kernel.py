r"""The compiled LIF step on per-neuron, trained LIF layers: event (compiled / pure torch) vs BPTT.

One LIF layer, ``n = 64``, ``d = 32`` Gaussian input channels, parameter density 0.2, batch 1,
float32, one thread, as the LIF row of ``evrtrl bench --quick``; two configurations:

* ``uniform``: scalar frozen neuron values (the ``evrtrl bench`` model);
* ``per-neuron``: heterogeneous values per neuron (seeded), all six of ``tau_mem``,
  ``tau_syn``, ``v_th``, ``v_leak``, ``v_reset``, ``bias`` trained (one exact RTRL column each).

For each: the event engine on the compiled path, the event engine on the pure-torch path,
and BPTT. All in one process, interleaved in ``--rounds`` rounds (each round runs every
(configuration, engine) once), so that a load change on a shared machine hits all of
them alike; the figure is the median over rounds. Event: median wall time of ``step`` +
``accumulate`` over the steps after ``--warm``; BPTT: wall time of forward + backward over
the ``T`` steps, divided by ``T``. The Triangle width is calibrated on the uniform model
for beta about 0.1 (:func:`evrtrl.benchmarks.bench.calibrate`) and used for both.

Usage::

    python -m evrtrl.benchmarks.lif_kernel [--T 500] [--rounds 3] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

import torch

import evrtrl
from evrtrl.atomic import atomic_write_text
from evrtrl.benchmarks.bench import D_IN, SEED, build_model, calibrate, input_sequence, loss_signal
from evrtrl.models import LIF, Triangle, random_masks
from evrtrl.models.lif import NEURON_PARAMETERS
from evrtrl.stats import torch_calls_per_step

__all__ = ["per_neuron_model", "run", "main"]

N, RHO, BETA = 64, 0.2, 0.1
ENGINES = ("event-compiled", "event-torch", "bptt")


def per_neuron_model(n: int, rho: float, width: float, d: int = D_IN) -> LIF:
    """The ``evrtrl bench`` LIF layer with per-neuron values around its scalars, all trained."""
    g = torch.Generator().manual_seed(SEED + 10)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)  # noqa: E731
    vals = dict(tau_mem=u(0.015, 0.025), tau_syn=u(0.008, 0.012), v_th=u(0.9, 1.1),
                v_leak=u(-0.05, 0.05), v_reset=u(-0.1, 0.0), bias=u(-0.02, 0.02))
    masks = random_masks(LIF.weight_shapes(d, n), rho, seed=SEED + 1) if rho < 1 else None
    return LIF(d, n, dt=0.001, weight_scale=1.0, masks=masks, generator=torch.Generator().manual_seed(SEED),
               trainable=NEURON_PARAMETERS, pseudo_derivative=Triangle(0.3, width), **vals)


def _event_ms(model, kernel: str, x: torch.Tensor, r: torch.Tensor, warm: int) -> tuple[float, float, str]:
    eng = evrtrl.EventRTRL(model, 1, kernel=kernel)
    times = []
    for t in range(x.shape[0]):
        t0 = time.perf_counter()
        eng.step(x[t])
        eng.accumulate(r[t])
        times.append(time.perf_counter() - t0)
    beta = sum(eng.stats.beta[warm:]) / max(1, len(eng.stats.beta[warm:]))
    return 1e3 * statistics.median(times[warm:]), beta, eng.kernel


def _bptt_ms(model, x: torch.Tensor, r: torch.Tensor) -> float:
    lossf = lambda y, t: (y * r[t]).sum()  # noqa: E731
    t0 = time.perf_counter()
    evrtrl.gradients(model, x, lossf, method="bptt")
    return 1e3 * (time.perf_counter() - t0) / x.shape[0]


def run(T: int = 500, rounds: int = 3, warm: int = 50) -> dict[str, Any]:
    """Measure every (configuration, engine); returns the record (see the module docstring)."""
    torch.set_num_threads(1)
    theta, width = calibrate("lif", N, RHO, BETA)
    models = {"uniform": build_model("lif", N, RHO, width, theta), "per-neuron": per_neuron_model(N, RHO, width)}
    x = input_sequence("lif", N, RHO, T)
    r = loss_signal(N, T)
    for m in models.values():  # warm-up: builds / loads the kernels, first-call costs
        _event_ms(m, "compiled", x[:20], r[:20], 0)
        _event_ms(m, "torch", x[:20], r[:20], 0)
        _bptt_ms(m, x[:20], r[:20])
    ms: dict[str, dict[str, list[float]]] = {c: {e: [] for e in ENGINES} for c in models}
    beta: dict[str, float] = {}
    for _ in range(rounds):
        for c, m in models.items():
            for e in ENGINES:
                if e == "bptt":
                    ms[c][e].append(_bptt_ms(m, x, r))
                    continue
                v, beta[c], ran = _event_ms(m, e.split("-")[1], x, r, warm)
                assert ran == e.split("-")[1], (e, ran)
                ms[c][e].append(v)
    calls = {}
    for c, m in models.items():
        for k in ("compiled", "torch"):
            eng = evrtrl.EventRTRL(m, 1, kernel=k)
            calls[f"{c}/event-{k}"] = torch_calls_per_step(eng, x[:100], r[:100], warm=10)
    return dict(
        n=N, d=D_IN, rho=RHO, B=1, T=T, rounds=rounds, warm=warm, width=width, threads=torch.get_num_threads(),
        dtype="float32", beta=beta, torch_calls_per_step=calls,
        ms_per_step={c: {e: statistics.median(v) for e, v in d.items()} for c, d in ms.items()},
        ms_per_step_rounds=ms, machine=platform.processor() or platform.machine(),
    )


def markdown(rec: dict[str, Any]) -> str:
    lines = ["| LIF n = 64 | beta | event compiled ms | event torch ms | BPTT ms | compiled / BPTT | "
             "torch / compiled | torch calls/step (torch / compiled) |", "|" + "---|" * 8]
    for c, d in rec["ms_per_step"].items():
        ec, et, bp = d["event-compiled"], d["event-torch"], d["bptt"]
        tc = rec["torch_calls_per_step"]
        lines.append(f"| {c} | {rec['beta'][c]:.3f} | {ec:.3f} | {et:.3f} | {bp:.3f} | {ec / bp:.2f} | "
                     f"{et / ec:.1f}x | {tc[f'{c}/event-torch']:.0f} / {tc[f'{c}/event-compiled']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=500, help="steps per measured run (default 500)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds, median reported (default 3)")
    ap.add_argument("--json", metavar="PATH", help="write the record as JSON")
    a = ap.parse_args(argv)
    load0 = os.getloadavg()
    rec = run(a.T, a.rounds)
    rec["loadavg_start_end"] = [load0, os.getloadavg()]
    print(markdown(rec))
    print(f"load average (1/5/15 min) at start {load0}, at end {rec['loadavg_start_end'][1]}")
    if a.json:
        atomic_write_text(a.json, json.dumps(rec, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
