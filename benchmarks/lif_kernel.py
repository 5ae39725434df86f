r"""The compiled LIF step on per-neuron, trained LIF layers: event (compiled / pure torch) vs BPTT.

One LIF layer, ``n = 64``, ``d = 32`` Gaussian input channels, parameter density 0.2, batch 1,
float32, one thread, as the LIF row of ``evrtrl bench --quick``; two configurations:

* ``uniform``: scalar frozen neuron values (the ``evrtrl bench`` model);
* ``per-neuron``: heterogeneous values per neuron (seeded), all six of ``tau_mem``,
  ``tau_syn``, ``v_th``, ``v_leak``, ``v_reset``, ``bias`` trained (one exact RTRL column each).

A third, ``current-free per-neuron``: the same with ``synapse=False`` (no ``tau_syn``).
For each: the event engine on the compiled path; the compiled engine kernel with the layer's
pure Python step (``pure cell``: how every LIF configuration but the uniform frozen one ran
before ``models/lif_kernel.cpp`` covered it); the event engine on the pure-torch path; BPTT. All in one process, interleaved in ``--rounds`` rounds (each round runs every
(configuration, engine) once), so that a load change on a shared machine hits all of
them alike; the figure is the median over rounds. Event: wall time of ``step`` +
``accumulate`` per step, the median over windows of 32 steps after ``--warm``
(:func:`evrtrl.benchmarks.bench.windows`: each window holds one flush of deferred steps); BPTT: wall time of forward + backward over
the ``T`` steps, divided by ``T``. Torch calls per step (:func:`evrtrl.stats.torch_calls_per_step`)
are counted over the last 100 of ``T`` steps of a separate run. The Triangle width is calibrated on the uniform model
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
from evrtrl.benchmarks.bench import (D_IN, SEED, build_model, calibrate, input_sequence, loss_signal,
                                     run_window, windows)
from evrtrl.models import LIF, Triangle, random_masks
from evrtrl.stats import torch_calls_per_step

__all__ = ["per_neuron_model", "run", "main"]

N, RHO, BETA = 64, 0.2, 0.1
ENGINES = ("event-compiled", "event-pure-cell", "event-torch", "bptt")


def per_neuron_model(n: int, rho: float, width: float, d: int = D_IN, synapse: bool = True,
                     scale: float = 1.0) -> LIF:
    """The ``evrtrl bench`` LIF layer with per-neuron values around its scalars, all trained
    (``synapse=False``: the current-free LIF, input weights scaled by ``scale``)."""
    g = torch.Generator().manual_seed(SEED + 10)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)  # noqa: E731
    vals = dict(tau_mem=u(0.015, 0.025), tau_syn=u(0.008, 0.012), v_th=u(0.9, 1.1),
                v_leak=u(-0.05, 0.05), v_reset=u(-0.1, 0.0), bias=u(-0.02, 0.02))
    if not synapse:
        del vals["tau_syn"]
    masks = random_masks(LIF.weight_shapes(d, n), rho, seed=SEED + 1) if rho < 1 else None
    return LIF(d, n, dt=0.001, weight_scale=scale, masks=masks, generator=torch.Generator().manual_seed(SEED),
               synapse=synapse, trainable=tuple(vals), pseudo_derivative=Triangle(0.3, width), **vals)


def _engine(model, path: str) -> Any:
    """The event engine on ``path``: ``compiled``, ``torch`` or ``pure-cell`` (the compiled
    engine kernel with the layer's pure Python step, what every LIF but the uniform frozen
    one ran before the LIF kernel covered it)."""
    eng = evrtrl.EventRTRL(model, 1, kernel="torch" if path == "torch" else "compiled")
    if path == "pure-cell":
        eng.compiled.cells[0] = None
    return eng


def _event_ms(model, path: str, x: torch.Tensor, r: torch.Tensor, warm: int) -> tuple[float, float, str]:
    eng = _engine(model, path)
    T = x.shape[0]
    for start, end in windows(warm):
        run_window(eng, x, r, start, end, False)
    times = [run_window(eng, x, r, start, end, end == T) for start, end in windows(T, warm)]
    beta = sum(eng.stats.beta[warm:]) / max(1, len(eng.stats.beta[warm:]))
    return 1e3 * statistics.median(times), beta, path if eng.compiled is None or eng.compiled.cells[0] is None \
        else "compiled"


def _bptt_ms(model, x: torch.Tensor, r: torch.Tensor) -> float:
    lossf = lambda y, t: (y * r[t]).sum()  # noqa: E731
    t0 = time.perf_counter()
    evrtrl.gradients(model, x, lossf, method="bptt")
    return 1e3 * (time.perf_counter() - t0) / x.shape[0]


def run(T: int = 500, rounds: int = 3, warm: int = 50, width: float | None = None) -> dict[str, Any]:
    """Measure every (configuration, engine); returns the record (see the module docstring).
    ``width``: the Triangle width (default: calibrated for beta about 0.1)."""
    torch.set_num_threads(1)
    theta, width = calibrate("lif", N, RHO, BETA) if width is None else (0.0, width)
    models = {"uniform": build_model("lif", N, RHO, width, theta), "per-neuron": per_neuron_model(N, RHO, width),
              "current-free per-neuron": per_neuron_model(N, RHO, width, synapse=False, scale=6.0)}
    x = input_sequence("lif", N, RHO, T)
    r = loss_signal(N, T)
    for m in models.values():  # warm-up: builds / loads the kernels, first-call costs
        for e in ENGINES[:-1]:
            _event_ms(m, e[len("event-"):], x[:20], r[:20], 0)
        _bptt_ms(m, x[:20], r[:20])
    ms: dict[str, dict[str, list[float]]] = {c: {e: [] for e in ENGINES} for c in models}
    beta: dict[str, float] = {}
    for _ in range(rounds):
        for c, m in models.items():
            for e in ENGINES:
                if e == "bptt":
                    ms[c][e].append(_bptt_ms(m, x, r))
                    continue
                v, beta[c], ran = _event_ms(m, e[len("event-"):], x, r, warm)
                assert ran == e[len("event-"):], (e, ran)
                ms[c][e].append(v)
    calls = {}
    for c, m in models.items():
        for k in ("compiled", "pure-cell", "torch"):
            eng = _engine(m, k)
            # counted over the last 100 steps (as evrtrl bench: after the births of the first ones)
            calls[f"{c}/event-{k}"] = torch_calls_per_step(eng, x, r, warm=max(0, T - 100))
    return dict(
        n=N, d=D_IN, rho=RHO, B=1, T=T, rounds=rounds, warm=warm, width=width, threads=torch.get_num_threads(),
        dtype="float32", beta=beta, torch_calls_per_step=calls,
        ms_per_step={c: {e: statistics.median(v) for e, v in d.items()} for c, d in ms.items()},
        ms_per_step_rounds=ms, machine=platform.processor() or platform.machine(),
    )


def markdown(rec: dict[str, Any]) -> str:
    lines = ["| LIF n = 64 | beta | event compiled ms | event compiled, pure cell step ms | event torch ms | "
             "BPTT ms | compiled / BPTT | torch calls/step (compiled / pure cell / torch) |", "|" + "---|" * 8]
    for c, d in rec["ms_per_step"].items():
        tc = [rec["torch_calls_per_step"][f"{c}/event-{k}"] for k in ("compiled", "pure-cell", "torch")]
        lines.append(f"| {c} | {rec['beta'][c]:.3f} | {d['event-compiled']:.3f} | {d['event-pure-cell']:.3f} | "
                     f"{d['event-torch']:.3f} | {d['bptt']:.3f} | {d['event-compiled'] / d['bptt']:.2f} | "
                     f"{' / '.join(f'{v:.0f}' for v in tc)} |")
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
