r"""``evrtrl bench``: event-driven vs dense RTRL vs forward-mode RTRL vs BPTT.

Measures, for EGRU and LIF single layers (``d = 32`` input channels, batch 1, float32):
wall time per step, counted multiply-adds per step, influence-matrix bytes and the peak
memory growth of one run, for the engines

* ``event``      -- :class:`evrtrl.EventRTRL` (the product),
* ``dense``      -- textbook dense RTRL, a column for every parameter entry,
* ``dense-live`` -- dense RTRL with the pruned columns dropped,
* ``func``       -- forward-mode dense RTRL on ``torch.func`` (:mod:`evrtrl.benchmarks.funcrtrl`),
* ``bptt``       -- autograd through the same step function.

Method
------
Every configuration runs in a fresh Python subprocess (``python -m evrtrl.benchmarks.bench
_child``), so that peak memory is that configuration's alone. *Peak memory* is the growth of
the resident set: ``ru_maxrss`` at the end of the run minus the current RSS right before the
engine is created (after the model and the input are built); it contains the influence
matrix, all temporaries of the run and, for BPTT, the autograd graph. *Time per step* of the
RTRL engines is ``step(x_t)`` + ``accumulate(dL/dy_t)`` (forward + influence update +
gradient) per step, the median over windows of 32 steps after the warm-up steps
(:func:`windows`: the compiled event path runs up to 32 steps' influence updates together,
so each window holds one such flush; the last window finishes the queued ones); for BPTT it is the wall
time of forward + backward over the whole sequence divided by ``T`` (median of repeats for
``T <= 1000``, after a short warm-up run). The dense engines (and ``func``) do the same work
at every step whatever the activity, so at large ``n`` they run only a few steps and their
per-step cost is extrapolated to ``T`` (``steps_run < T`` in the record, ``extrapolated``).

Activity is steered per configuration: the input is Gaussian noise on all ``d`` channels;
the EGRU threshold ``theta`` and the Triangle width are set by bisection on a forward run so
that the fraction of units in the active set (``beta``) is the requested one; the record
holds the ``beta`` the engine itself measured.

Usage::

    python -m evrtrl.benchmarks.bench [--quick] [--only TOKEN ...] [--json PATH] [--plot DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from evrtrl.cli_contract import Parser, positive_int
from evrtrl.cli_contract import run as run_cli
from evrtrl.event_engine import DEFER_STEPS
from evrtrl.extras import require

D_IN = 32
SEED = 0
#: the event engine's path when --kernel is not given ($EVRTRL_KERNEL, else auto)
KERNEL_CHOICES = ("auto", "torch", "compiled")
#: steps counted with a TorchFunctionMode after the timed ones (torch_calls_per_step)
COUNTED_STEPS = 100

__all__ = ["main", "register", "build_model", "run_config", "analytic_event_macs", "select"]


# --------------------------------------------------------------------------- models
def build_model(cell: str, n: int, rho: float, width: float, theta: float = 0.3,
                dtype: torch.dtype = torch.float32, d: int = D_IN):
    """EGRU or LIF layer with parameter density ``rho`` and a Triangle of ``width``."""
    from evrtrl.models import EGRU, LIF, Triangle, random_masks
    g = torch.Generator().manual_seed(SEED)
    if cell == "egru":
        masks = random_masks(EGRU.weight_shapes(d, n), rho, seed=SEED + 1) if rho < 1 else None
        return EGRU(d, n, masks=masks, theta_init=theta, generator=g, dtype=dtype,
                    pseudo_derivative=Triangle(0.7, width))
    masks = random_masks(LIF.weight_shapes(d, n), rho, seed=SEED + 1) if rho < 1 else None
    return LIF(d, n, tau_mem=0.02, tau_syn=0.01, dt=0.001, v_th=1.0, weight_scale=1.0,
               masks=masks, generator=g, dtype=dtype, pseudo_derivative=Triangle(0.3, width))


def input_sequence(cell: str, n: int, rho: float, T: int, B: int = 1, d: int = D_IN,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Gaussian input on all channels, scaled so the drive per unit is independent of n, rho."""
    g = torch.Generator().manual_seed(SEED + 2)
    scale = math.sqrt(1.125 * n / (d * rho)) if cell == "egru" else 1.0 / math.sqrt(rho)
    return (torch.randn(T, B, d, generator=g) * scale).to(dtype)


def loss_signal(n: int, T: int, B: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``dL_t/dy_t`` of the linear loss ``sum_t r_t . y_t`` (fixed random ``r_t``)."""
    g = torch.Generator().manual_seed(SEED + 3)
    return torch.randn(T, B, n, generator=g).to(dtype)


@torch.no_grad()
def _active_fraction(model, x: torch.Tensor, warm: int) -> float:
    """Mean fraction of units with a non-zero output derivative (the engine's active set)."""
    w = model.weights()
    st = model.initial_state(x.shape[1])
    first, act = True, []
    for t in range(x.shape[0]):
        new, aux = model.step(w, st, x[t])
        lj = model.local_jacobian(w, st, x[t], new, aux, first)
        a = (lj.gain != 0).any(-1)
        for gd in lj.gain_direct.values():
            a |= gd != 0
        if t >= warm:
            act.append(float(a.float().mean()))
        st, first = new, False
    return sum(act) / len(act)


def calibrate(cell: str, n: int, rho: float, beta: float, steps: int = 200) -> tuple[float, float]:
    """``(theta, width)`` giving an active fraction close to ``beta`` (bisection on log width)."""
    x = input_sequence(cell, n, rho, steps)
    thetas = [0.3, 0.4, 0.5, 0.6, 0.7] if cell == "egru" else [0.0]
    best = None
    for theta in thetas:
        lo, hi = math.log(1e-4), math.log(50.0)
        f = lambda lw: _active_fraction(build_model(cell, n, rho, math.exp(lw), theta), x, 50)  # noqa: E731
        if beta >= 0.999:
            return theta, 50.0
        if f(lo) > beta:  # the spiking units alone exceed beta: raise the threshold
            best = best or (theta, math.exp(lo))
            continue
        for _ in range(14):
            mid = 0.5 * (lo + hi)
            if f(mid) < beta:
                lo = mid
            else:
                hi = mid
        return theta, math.exp(0.5 * (lo + hi))
    return best


def rho_A(model) -> float:
    """Structural density of the coupled Jacobian ``A = sum_g phi_g * U_g`` (recurrent)."""
    masks = model.masks
    union = None
    for p in model.projections:
        if p.source == "recurrent":
            union = masks[p.name] if union is None else union | masks[p.name]
    return float(union.float().mean()) if union is not None else 0.0


# --------------------------------------------------------------------------- analytic
@torch.no_grad()
def analytic_event_macs(model, x: torch.Tensor, columns: str = "born") -> list[int]:
    r"""Per-step multiply-adds of the event engine's algorithm, from the run's events alone.

    ``columns``: the columns the coupling, emission, gradient and materialisation work on,
    ``"born"`` (the pure-torch path: the born prefix) or ``"live"`` (the compiled path: every
    live column from the first step, its columns being grouped by unit; docs/engine.md).

    With :math:`k_t = \max_b |K_{t,b}|` the padded active-set size, :math:`P_t` the born
    columns at the end of step t, :math:`E_t` the born weight entries (times ``m``, per-unit
    parameters included), ``G`` local-factor groups (projections and per-unit parameters),
    ``R`` recurrent projections, ``nd = len(diag_structure)``, ``c = m - min(gain_structure)``
    and ``U_d`` parameters with a direct output gain:

    .. math::

        \mathrm{MAC}_t = B\big[\underbrace{\mathrm{diag}_t}_{\text{leak/reset}}
            + \underbrace{n G\, nd}_{T^{-1}\phi}
            + \underbrace{n m k_{t-1} (R + P_{t-1})}_{\text{coupling } A[:, K] N[K]}
            + \underbrace{E_t}_{\text{immediate}}
            + \underbrace{k_t (c P_t + U_d + P_t) + [k_t > 0]\, n m^2}_{\text{emission + gradient}}\big],

    where ``diag_t`` is the lazy-transform count (:func:`evrtrl.event_engine.diag_pass_macs`:
    ``n nd`` plus ``nd P`` per materialised unit). Single layer.
    """
    from evrtrl.event_engine import diag_pass_macs
    B = x.shape[1]
    n, m = model.hidden_size, model.state_size
    nd = len(model.diag_structure)
    masks = model.masks
    R = sum(1 for p in model.projections if p.source == "recurrent")
    U = len(model.unit_parameters)
    G = len(model.projections) + U
    c = m - min(model.gain_structure)
    born = {p.name: torch.zeros(masks[p.name].shape[1], dtype=torch.bool) for p in model.projections}
    P = U * n
    E = U * n * m
    live = U * n + sum(int(masks[p.name].sum()) for p in model.projections)
    width = (lambda p: live) if columns == "live" else (lambda p: p)  # noqa: E731
    w = model.weights()
    st = model.initial_state(B)
    k_prev = 0
    first = True
    out = []
    diag_state = None
    for t in range(x.shape[0]):
        new, aux = model.step(w, st, x[t])
        lj = model.local_jacobian(w, st, x[t], new, aux, first)
        P_prev = P
        diag, diag_state = (0, None) if first else diag_pass_macs(model, lj, width(P_prev), diag_state)
        macs = diag + B * n * G * nd
        if k_prev:
            macs += B * n * m * k_prev * (R + width(P_prev))
        # births: sources with their first event (input channels of x_t, own y_{t-1})
        fired_in = (x[t] != 0).any(0)
        fired_rec = (st.y != 0).any(0) if not first else torch.zeros(n, dtype=torch.bool)
        for p in model.projections:
            fired = fired_in if p.source == "input" else fired_rec
            newb = fired & ~born[p.name]
            nb = int(masks[p.name][:, newb].sum())
            P += nb
            E += nb * m
            born[p.name] |= fired
        macs += B * E
        a = (lj.gain != 0).any(-1)
        for gd in lj.gain_direct.values():
            a |= gd != 0
        k = int(a.sum(1).max())
        macs += B * (k * (c * width(P) + len(lj.gain_direct) + width(P)) + (n * m * m if k else 0))
        out.append(macs)
        st, first, k_prev = new, False, k
    return out


# --------------------------------------------------------------------------- one run
def windows(steps: int, warm: int = 0) -> list[tuple[int, int]]:
    """The timing windows ``[(start, end)]`` of a run of ``steps`` steps after ``warm`` untimed
    ones (run them first: ``windows(warm, 0)``): ``DEFER_STEPS`` steps each, the last one
    shorter. The event engine's compiled path runs up to that many steps' influence updates
    together, so every full window holds exactly one such flush: time per step = a window's
    time / its steps, never one step's (a median of single steps would miss the flushes)."""
    bounds = list(range(warm, steps, DEFER_STEPS)) + [steps]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def run_window(eng: Any, x: Any, r: torch.Tensor, start: int, end: int, last: bool) -> float:
    """Seconds per step of ``step`` + ``accumulate`` over steps ``start..end-1`` of ``eng``;
    ``last``: finish the queued updates inside the window (``settle``)."""
    t0 = time.perf_counter()
    for t in range(start, end):
        eng.step(x[t])
        eng.accumulate(r[t])
    if last:
        getattr(eng, "settle", lambda: None)()
    return (time.perf_counter() - t0) / (end - start)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in this process; returns its record."""
    import evrtrl
    torch.set_num_threads(int(cfg.get("threads", torch.get_num_threads())))
    if cfg.get("kernel"):
        os.environ["EVRTRL_KERNEL"] = cfg["kernel"]
    cell, n, rho, T = cfg["cell"], cfg["n"], cfg["rho"], int(cfg["T"])
    engine = cfg["engine"]
    steps = int(cfg.get("steps", T))
    warm = int(cfg.get("warm", 0))
    from evrtrl.stats import CallCounter, torch_calls_per_step
    model = build_model(cell, n, rho, cfg["width"], cfg.get("theta", 0.3))
    counted = int(cfg.get("counted", COUNTED_STEPS))
    x = input_sequence(cell, n, rho, max(steps, 1) + counted)
    r = loss_signal(n, max(steps, 1) + counted)
    rec = dict(engine=engine, cell=cell, n=n, rho=rho, beta_target=cfg.get("beta_target"),
               T=T, steps_run=steps, extrapolated=steps < T, theta=cfg.get("theta"),
               width=cfg["width"], p_live=model.live_parameter_count, rho_A=rho_A(model),
               state_size=model.state_size, threads=torch.get_num_threads(),
               kernel="torch")
    if engine == "bptt":
        lossf = lambda y, t: (y * r[t]).sum()  # noqa: E731
        evrtrl.gradients(model, x[: min(steps, 20)], lossf, method="bptt")  # warm-up
        rss0 = _rss_bytes()
        times = []
        for _ in range(int(cfg.get("repeats", 1))):
            t0 = time.perf_counter()
            g = evrtrl.gradients(model, x[:steps], lossf, method="bptt")
            times.append(time.perf_counter() - t0)
        s = g.stats
        short = x[: min(steps, counted)]
        with CallCounter() as c:
            evrtrl.gradients(model, short, lossf, method="bptt")
        rec.update(ms_per_step=1e3 * statistics.median(times) / steps,
                   torch_calls_per_step=c.calls / short.shape[0],
                   macs_per_step=s.total_macs / s.steps, influence_bytes=0,
                   beta=_active_fraction(model, x[: min(steps, 300)], 0),
                   peak_bytes=max(0, _maxrss_bytes() - rss0))
        return rec
    rss0 = _rss_bytes()
    if engine == "func":
        from evrtrl.benchmarks.funcrtrl import FuncRTRL
        eng = FuncRTRL(model, 1, chunk=int(cfg.get("chunk", 128)))
    else:
        eng = evrtrl.make_engine(model, 1, engine)
    # which implementation of the step ran: "compiled" (evrtrl.kernels) or "torch"
    rec["kernel"] = getattr(eng, "kernel", "torch")
    for start, end in windows(warm):  # the untimed warm-up steps
        run_window(eng, x, r, start, end, False)
    times = [run_window(eng, x, r, start, end, end == steps) for start, end in windows(steps, warm)]
    s = eng.stats
    # torch calls of the steps after the timed ones (counting slows them down)
    calls = torch_calls_per_step(eng, x[steps: steps + counted], r[steps: steps + counted])
    per_step = s.macs_per_step[:steps]
    rec.update(
        ms_per_step=1e3 * statistics.median(times),
        macs_per_step=sum(per_step[warm:]) / max(1, len(per_step[warm:])),
        torch_calls_per_step=calls,
        beta=(sum(s.beta[warm:steps]) / max(1, len(s.beta[warm:steps]))) if engine == "event"
        else _active_fraction(model, x[: min(steps, 300)], min(warm, steps // 2)),
        influence_bytes=s.influence_bytes, peak_bytes=max(0, _maxrss_bytes() - rss0),
        macs_by_kind={k: v / s.steps for k, v in s.macs.items()},
        gamma_final=s.gamma[steps - 1] if s.gamma else 1.0,
    )
    if engine == "event" and cfg.get("analytic", False):
        ana = analytic_event_macs(model, x[:steps], "live" if rec.get("kernel") == "compiled" else "born")
        rec["analytic_macs_per_step"] = sum(ana[warm:]) / max(1, len(ana[warm:]))
        # the design estimate: n p_live + nnz(A[:, K]) p_live (structural nnz)
        m = model.state_size
        nnz_rows = 2 if cell == "lif" else 1  # phi^U has 2 non-zero components for LIF
        rec["design_macs_per_step"] = (n * rec["p_live"] * (0 if cfg.get("lazy_note") else 1)
                                       + rec["rho_A"] * n * nnz_rows * rec["beta"] * n
                                       * rec["p_live"])
        rec["state_size"] = m
    return rec


def measure(cfg: dict[str, Any], timeout: float = 900) -> dict[str, Any] | None:
    """Run ``cfg`` in a fresh subprocess (own peak memory); None on failure or timeout."""
    try:
        out = subprocess.run([sys.executable, "-m", "evrtrl.benchmarks.bench", "_child", json.dumps(cfg)],
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  timeout: {cfg}", file=sys.stderr)
        return None
    if out.returncode != 0:
        print(f"  failed: {cfg}\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def stream_gbs(mbytes: int = 256, repeats: int = 7) -> float:
    """Memory bandwidth of a large float32 copy, GB/s of bytes read + written (median)."""
    a = torch.ones(mbytes * 2 ** 20 // 4)
    b = torch.empty_like(a)
    b.copy_(a)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        b.copy_(a)
        ts.append(time.perf_counter() - t0)
    return 2 * a.numel() * 4 / statistics.median(ts) / 1e9


def floor_ms(rec: dict[str, Any], mm_gmacs: float, bw_gbs: float) -> float:
    r"""Arithmetic/memory floor of one exact event step of ``rec``'s configuration, in ms.

    ``max(necessary MACs / matmul rate, 2 bytes(M) / stream bandwidth)`` with the necessary
    multiply-adds of the coupling :math:`\rho_A \cdot n m \cdot |K| \cdot p_{live}`
    (:math:`|K| = \beta n`, the measured beta) and ``bytes(M) = n m p_live`` float32 words
    (read and written once). Both rates are measured in the same run.
    """
    nm = rec["n"] * rec["state_size"]
    macs = rec["rho_A"] * nm * rec["beta"] * rec["n"] * rec["p_live"]
    mbytes = nm * rec["p_live"] * 4
    return 1e3 * max(macs / (mm_gmacs * 1e9), 2 * mbytes / (bw_gbs * 1e9))


def matmul_gmacs(size: int = 1024, repeats: int = 7) -> float:
    """Dense float32 matmul throughput of this machine, GMAC/s (median of repeats)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return size ** 3 / statistics.median(ts) / 1e9


# --------------------------------------------------------------------------- the plan
def plan(quick: bool, core: bool = False) -> list[dict[str, Any]]:
    """The configurations, grouped by sweep (``sweep`` names the figure they feed).

    ``core``: event vs dense RTRL for EGRU at n in {64, 128, 256}, beta about 0.1 and 1,
    no parameter sparsity (the activity saving alone).
    """
    cfgs: list[dict[str, Any]] = []

    def add(sweep, cell, n, rho, beta, T, engines):
        for e in engines:
            c = dict(sweep=sweep, cell=cell, n=n, rho=rho, beta_target=beta, T=T, engine=e)
            if e == "event":
                c["steps"] = T if sweep == "memory" else min(T, 300 if not quick else 200)
                c["warm"] = min(100, c["steps"] // 3)
                c["analytic"] = n <= 256 and c["steps"] <= 300
            elif e == "bptt":
                c["steps"] = T
                c["repeats"] = 3 if T <= 1000 else 1
            else:
                big = n * n * (n if e == "dense" else rho * n) > 2e6
                c["steps"] = 3 if big or e == "func" else 6
                c["warm"] = 1
                c["counted"] = 1
            cfgs.append(c)

    if core:
        for n in (64, 128, 256):
            for b in (0.1, 1.0):
                add("core", "egru", n, 1.0, b, 1000, ["event", "dense"])
        return cfgs
    if quick:
        add("headline", "egru", 256, 0.2, 0.1, 1000, ["event", "dense", "dense-live", "bptt"])
        add("headline", "egru", 128, 0.5, 0.1, 1000, ["event", "dense", "dense-live", "func", "bptt"])
        add("headline", "lif", 128, 0.5, 0.1, 1000, ["event", "dense", "dense-live", "func", "bptt"])
        for b in (0.02, 0.05, 0.2, 0.5):
            add("beta", "egru", 128, 0.5, b, 1000, ["event"])
        for n in (16, 64, 128, 256):
            add("n", "egru", n, 0.2, 0.1, 1000, ["event", "bptt"] + (["dense-live"] if 64 <= n <= 128 else []))
        add("n", "lif", 64, 0.2, 0.1, 1000, ["event", "bptt"])
        for rho in (1.0, 0.2, 0.1):
            add("rho", "egru", 128, rho, 0.1, 1000, ["event", "dense-live"])
        for T in (100, 1000, 3000):
            add("memory", "egru", 128, 0.5, 0.1, T, ["event", "bptt"])
        return cfgs
    for cell in ("egru", "lif"):
        for b in (0.02, 0.05, 0.1, 0.2, 0.5, 1.0):
            add("beta", cell, 256, 0.2, b, 1000, ["event"] + (["dense-live"] if b in (0.02, 0.1, 0.5) else []))
        add("beta", cell, 256, 0.2, 0.1, 1000, ["dense", "bptt"])
        for n in (64, 128, 512):
            eng = ["event", "bptt"] + (["dense", "dense-live", "func"] if n <= 128 else ["dense-live"])
            add("n", cell, n, 0.2, 0.1, 1000, eng)
        for rho in (1.0, 0.5, 0.1):
            add("rho", cell, 256, rho, 0.1, 1000, ["event", "dense-live", "bptt"])
        add("rho", cell, 128, 0.5, 0.1, 1000, ["event", "dense", "dense-live", "func", "bptt"])
        for T in (100, 1000, 10000):
            add("memory", cell, 256, 0.2, 0.1, T, ["event", "bptt"])
    return cfgs


def select(cfgs: list[dict[str, Any]], only: list[str] | None) -> list[dict[str, Any]]:
    """The configurations of ``cfgs`` that ``only`` names (``--only``; all when empty).

    Tokens ``n<int>`` (e.g. ``n256``) pick sizes, ``egru``/``lif`` cells, engine names
    (``event``, ``bptt``, ``dense``, ...) engines, any other token a sweep (``headline``,
    ``n``, ``beta``, ...); a configuration is kept when it matches one token of every kind given.
    """
    if not only:
        return cfgs
    kinds: dict[str, set] = {}
    engines = {"event", "dense", "dense-live", "func", "bptt"}
    for tok in only:
        if tok[:1] == "n" and tok[1:].isdigit():
            kinds.setdefault("n", set()).add(int(tok[1:]))
        elif tok in ("egru", "lif"):
            kinds.setdefault("cell", set()).add(tok)
        elif tok in engines:
            kinds.setdefault("engine", set()).add(tok)
        else:
            kinds.setdefault("sweep", set()).add(tok)
    return [c for c in cfgs if all(c[k] in v for k, v in kinds.items())]


# --------------------------------------------------------------------------- report
def _find(recs, **kw):
    out = [r for r in recs if all(r.get(k) == v for k, v in kw.items())]
    return out[0] if out else None


def _r2(xs, ys) -> float:
    n = len(xs)
    if n < 3:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((a - mx) ** 2 for a in xs)
    sxy = sum((a - mx) * (b - my) for a, b in zip(xs, ys))
    syy = sum((b - my) ** 2 for b in ys)
    return (sxy * sxy) / (sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def targets(recs: list[dict], mm_gmacs: float) -> list[tuple[str, str, str]]:
    """(target, measured, met?) rows."""
    rows = []

    def ratio(cell, n, rho, other, beta=0.1):
        ev = _find(recs, engine="event", cell=cell, n=n, rho=rho, beta_target=beta, T=1000)
        ot = _find(recs, engine=other, cell=cell, n=n, rho=rho, beta_target=beta, T=1000)
        return (ot["ms_per_step"] / ev["ms_per_step"], ev, ot) if ev and ot else (None, ev, ot)

    for n, rho, goal in ((256, 0.2, 50), (128, 0.5, 10)):
        q, ev, _ = ratio("egru", n, rho, "dense")
        if q is not None:
            rows.append((f"EGRU n={n} rho={rho} beta~0.1: event >= {goal}x faster than dense",
                         f"{q:.0f}x (beta={ev['beta']:.3f})", "met" if q >= goal else "MISSED"))
    for r in recs:
        if r["engine"] != "event" or r["T"] != 1000 or r["sweep"] == "memory":
            continue
        dl = _find(recs, engine="dense-live", cell=r["cell"], n=r["n"], rho=r["rho"],
                   beta_target=r["beta_target"], T=1000)
        if dl:
            theo = 1.0 / max(r["rho_A"] * r["beta"], 1e-9)
            q = dl["ms_per_step"] / r["ms_per_step"]
            rows.append((f"{r['cell'].upper()} n={r['n']} rho={r['rho']} beta={r['beta']:.3f}: "
                         f"event/dense-live >= 0.5/(rho_A beta) = {0.5 * theo:.1f}",
                         f"{q:.1f}x", "met" if q >= 0.5 * theo else "MISSED"))
        fn = _find(recs, engine="func", cell=r["cell"], n=r["n"], rho=r["rho"],
                   beta_target=r["beta_target"], T=1000)
        if fn:
            q = fn["ms_per_step"] / r["ms_per_step"]
            rows.append((f"{r['cell'].upper()} n={r['n']} rho={r['rho']}: event faster than torch.func",
                         f"{q:.0f}x", "met" if q > 1 else "MISSED"))
    # issue 9: event per step against BPTT (same run), and against the floor at n = 256
    for cell, n, goal in (("egru", 16, 1.0), ("egru", 64, 1.0), ("lif", 64, 1.0),
                          ("egru", 128, 2.0), ("egru", 256, None)):
        ev = _find(recs, engine="event", cell=cell, n=n, rho=0.2, beta_target=0.1, T=1000)
        bp = _find(recs, engine="bptt", cell=cell, n=n, rho=0.2, beta_target=0.1, T=1000)
        if ev and bp:
            q = ev["ms_per_step"] / bp["ms_per_step"]
            rows.append((f"{cell.upper()} n={n} rho=0.2 beta~0.1: event/BPTT per step"
                         + (f" <= {goal:.1f}" if goal else " (reported)"),
                         f"event {ev['ms_per_step']:.3f} ms vs BPTT {bp['ms_per_step']:.3f} ms "
                         f"= {q:.2f}x; {ev.get('torch_calls_per_step', float('nan')):.0f} torch "
                         "calls/step", "reported" if goal is None else
                         ("met" if q <= goal else "MISSED")))
    ev = _find(recs, engine="event", cell="egru", n=256, rho=0.2, beta_target=0.1, T=1000)
    if ev and "floor_ms" in ev:
        q = ev["ms_per_step"] / ev["floor_ms"]
        rows.append(("EGRU n=256 rho=0.2 beta~0.1: event step <= 2x floor_ms",
                     f"{ev['ms_per_step']:.2f} ms vs floor {ev['floor_ms']:.2f} ms = {q:.1f}x",
                     "met" if q <= 2 else "MISSED"))
    for r in recs:
        if r["engine"] == "event" and "analytic_macs_per_step" in r:
            q = r["macs_per_step"] / r["analytic_macs_per_step"]
            rows.append((f"{r['cell'].upper()} n={r['n']} rho={r['rho']} beta={r['beta']:.3f}: "
                         "counted MACs within 10% of the analytic count",
                         f"counted/analytic = {q:.3f}; counted/DESIGN-nnz estimate = "
                         f"{r['macs_per_step'] / r['design_macs_per_step']:.2f}",
                         "met" if abs(q - 1) <= 0.1 else "MISSED"))
            break
    for cell in ("egru", "lif"):
        pts = [r for r in recs if r["engine"] == "event" and r["cell"] == cell
               and r["sweep"] == "beta"]
        if len({p["n"] for p in pts}) == 1 and len(pts) >= 3:
            r2 = _r2([p["macs_per_step"] for p in pts], [p["ms_per_step"] for p in pts])
            rows.append((f"{cell.upper()} beta sweep: time linear in counted MACs (R^2 > 0.95)",
                         f"R^2 = {r2:.3f} over {len(pts)} points", "met" if r2 > 0.95 else "MISSED"))
    for r in recs:
        if r["engine"] == "event":
            expect = r["n"] * r["state_size"] * r["p_live"] * 4
            if r["influence_bytes"] != expect:
                rows.append((f"influence bytes == n m p_live itemsize ({r['cell']} n={r['n']})",
                             f"{r['influence_bytes']} vs {expect}", "MISSED"))
                break
    else:
        rows.append(("influence bytes == n * m * p_live * 4 (m state components per unit)",
                     "all event records", "met"))
    for cell in ("egru", "lif"):
        mem = sorted((r for r in recs if r["sweep"] == "memory" and r["cell"] == cell),
                     key=lambda r: r["T"])
        evs = [r for r in mem if r["engine"] == "event"]
        bps = [r for r in mem if r["engine"] == "bptt"]
        if len(evs) >= 2:
            a, b = evs[0]["peak_bytes"], evs[-1]["peak_bytes"]
            rows.append((f"{cell.upper()} event peak memory flat in T (within 5%)",
                         f"{a / 1e6:.1f} MB at T={evs[0]['T']} -> {b / 1e6:.1f} MB at T={evs[-1]['T']}",
                         "met" if abs(b - a) <= 0.05 * max(a, 1) else "MISSED"))
        if len(bps) >= 2:
            rows.append((f"{cell.upper()} BPTT peak memory grows with T",
                         " -> ".join(f"{r['peak_bytes'] / 1e6:.1f} MB (T={r['T']})" for r in bps),
                         "met" if bps[-1]["peak_bytes"] > 2 * max(bps[0]["peak_bytes"], 1) else "MISSED"))
    if ev:
        thr = ev["macs_per_step"] / ev["ms_per_step"] / 1e6
        rows.append(("event useful throughput >= 25% of dense matmul (EGRU n=256 rho=0.2 beta~0.1)",
                     f"{thr:.2f} GMAC/s vs matmul {mm_gmacs:.1f} GMAC/s = {100 * thr / mm_gmacs:.0f}%",
                     "met" if thr >= 0.25 * mm_gmacs else "MISSED"))
    return rows


def markdown(recs: list[dict], mm: float, bw: float = float("nan")) -> str:
    kernels = sorted({r["kernel"] for r in recs if r["engine"] == "event"}) or ["-"]
    lines = [f"Dense float32 matmul throughput in this run: {mm:.1f} GMAC/s, stream copy "
             f"{bw:.1f} GB/s ({torch.get_num_threads()} thread(s), event kernel "
             f"{'/'.join(kernels)}).", "",
             "| sweep | cell | n | rho | beta (measured) | T | engine | ms/step | floor ms | "
             "torch calls/step | MMAC/step | influence MB | peak MB | steps run |",
             "|" + "---|" * 14]
    for r in recs:
        lines.append(
            f"| {r['sweep']} | {r['cell']} | {r['n']} | {r['rho']} | {r['beta']:.3f} | {r['T']} | "
            f"{r['engine']} | {r['ms_per_step']:.3f} | {r.get('floor_ms', float('nan')):.3f} | "
            f"{r.get('torch_calls_per_step', float('nan')):.0f} | {r['macs_per_step'] / 1e6:.2f} | "
            f"{r['influence_bytes'] / 1e6:.1f} | {r['peak_bytes'] / 1e6:.1f} | "
            f"{r['steps_run']}{' (extrap.)' if r['extrapolated'] else ''} |")
    lines += ["", "| target | measured | status |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in targets(recs, mm)]
    return "\n".join(lines)


def plot(recs: list[dict], outdir: str) -> list[str]:
    require("matplotlib", "evrtrl bench --plot").use("Agg")
    plt = require("matplotlib.pyplot", "evrtrl bench --plot")
    os.makedirs(outdir, exist_ok=True)
    files = []
    style = {"event": "o-", "dense": "s--", "dense-live": "^--", "func": "d:", "bptt": "x-."}

    def fig(sweep, key, fname, xlabel, logx=True, fixed=None):
        sel = [r for r in recs if r["sweep"] == sweep or (fixed and fixed(r))]
        if not sel:
            return
        f, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
        for ax, cell in zip(axes, ("egru", "lif")):
            for eng, st in style.items():
                pts = sorted(((r[key], r["ms_per_step"]) for r in sel
                              if r["cell"] == cell and r["engine"] == eng), key=lambda p: p[0])
                if pts:
                    ax.plot(*zip(*pts), st, label=eng)
            ax.set_xscale("log" if logx else "linear")
            ax.set_yscale("log")
            ax.set_title(cell.upper())
            ax.set_xlabel(xlabel)
            ax.set_ylabel("ms per step")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        f.tight_layout()
        path = os.path.join(outdir, fname)
        f.savefig(path, dpi=110)
        plt.close(f)
        files.append(path)

    fig("beta", "beta", "time_vs_beta.png", "measured beta (active fraction)")
    fig("n", "n", "time_vs_n.png", "n (units)",
        fixed=lambda r: r["sweep"] in ("beta", "headline") and r["rho"] == 0.2
        and r["beta_target"] == 0.1 and r["T"] == 1000)
    fig("rho", "rho", "time_vs_rho.png", "rho (parameter density)",
        fixed=lambda r: r["sweep"] == "beta" and r["beta_target"] == 0.1)
    mem = [r for r in recs if r["sweep"] == "memory"]
    if mem:
        f, ax = plt.subplots(figsize=(6, 4))
        for cell, c in (("egru", "C0"), ("lif", "C1")):
            for eng, st in (("event", "o-"), ("bptt", "x--")):
                pts = sorted((r["T"], r["peak_bytes"] / 1e6) for r in mem
                             if r["cell"] == cell and r["engine"] == eng)
                if pts:
                    ax.plot(*zip(*pts), st, color=c, label=f"{cell} {eng}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("T (steps)")
        ax.set_ylabel("peak memory growth (MB)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        f.tight_layout()
        path = os.path.join(outdir, "memory_vs_T.png")
        f.savefig(path, dpi=110)
        plt.close(f)
        files.append(path)
    return files


# --------------------------------------------------------------------------- CLI
def run(args: argparse.Namespace) -> int:
    if getattr(args, "fuzz", False):  # the file-reader fuzzer, not a speed benchmark
        from evrtrl.benchmarks.fuzz import run as run_fuzz

        return run_fuzz(args, prefix="fuzz-")
    t_start = time.time()
    cfgs = select(plan(args.quick, getattr(args, "core", False)), getattr(args, "only", None))
    cal: dict[tuple, tuple[float, float]] = {}
    recs = []
    torch.set_num_threads(args.threads)
    kernel = getattr(args, "kernel", None)
    if kernel != "torch":  # build (or load) the compiled kernels once, before any timing
        import evrtrl
        with torch.no_grad():
            for cell in ("egru", "lif"):
                evrtrl.EventRTRL(build_model(cell, 8, 1.0, 0.5), 1, kernel=kernel)
    # the stream copy runs after the configurations only: its 512 MB stay in this process's
    # RSS and would enter every child's ru_maxrss (it survives fork + exec)
    mm = matmul_gmacs()
    print(f"dense matmul: {mm:.1f} GMAC/s", flush=True)
    for c in cfgs:
        key = (c["cell"], c["n"], c["rho"], c["beta_target"])
        if key not in cal:
            cal[key] = calibrate(*key)
        c["theta"], c["width"] = cal[key]
        c["threads"] = args.threads
        if kernel:
            c["kernel"] = kernel
        rec = measure(c)
        if rec is None:
            continue
        rec["sweep"] = c["sweep"]
        recs.append(rec)
        print(f"{c['sweep']:8s} {rec['cell']:4s} n={rec['n']:4d} rho={rec['rho']:<4} "
              f"beta={rec['beta']:.3f} T={rec['T']:<6d} {rec['engine']:10s} "
              f"{rec['ms_per_step']:9.3f} ms/step {rec['macs_per_step'] / 1e6:10.2f} MMAC/step "
              f"peak {rec['peak_bytes'] / 1e6:8.1f} MB  [{time.time() - t_start:.0f}s]", flush=True)
    mm = max(mm, matmul_gmacs())
    # after the configurations: its 512 MB would otherwise enter every child's ru_maxrss
    # (which survives fork + exec) and spoil the peak-memory column
    bw = stream_gbs()
    print(f"dense matmul: {mm:.1f} GMAC/s; stream copy: {bw:.1f} GB/s", flush=True)
    for rec in recs:
        rec["floor_ms"] = floor_ms(rec, mm, bw)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"matmul_gmacs": mm, "stream_gbs": bw, "threads": args.threads,
                       "kernel": sorted({r["kernel"] for r in recs if r["engine"] == "event"}),
                       "records": recs}, f, indent=1)
    if args.plot:
        for p in plot(recs, args.plot):
            print("wrote", p)
    print()
    print(markdown(recs, mm, bw))
    print(f"\ntotal {time.time() - t_start:.0f}s")
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` command to an argparse subparsers object."""
    p = subparsers.add_parser("bench", help="benchmark event-driven vs dense RTRL vs BPTT",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="headline configurations only (< 10 min)")
    p.add_argument("--core", action="store_true",
                   help="only event vs dense for EGRU at n = 64, 128, 256 and beta ~0.1 and 1")
    p.add_argument("--only", nargs="+", metavar="TOKEN",
                   help="run only the configurations these tokens name: n<int> (size), egru/lif, "
                        "engine names, sweep names (e.g. --only n256 n event bptt: the n = 256 "
                        "row of the n sweep)")
    p.add_argument("--json", metavar="PATH", help="write one record per configuration")
    p.add_argument("--plot", metavar="DIR", help="write PNG figures into DIR")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads for every engine and the matmul reference (default 1: "
                        "on a shared 2-core machine 2 threads oversubscribe, see docs)")
    p.add_argument("--kernel", choices=KERNEL_CHOICES, default=None,
                   help="the event engine's path: compiled CPU kernels, pure torch, or auto "
                        "(default: $EVRTRL_KERNEL, else auto); each record's 'kernel' says which ran")
    p.add_argument("--fuzz", action="store_true",
                   help="instead: run the seeded mutation fuzzer over every file reader (evrtrl.benchmarks.fuzz)")
    from evrtrl.benchmarks.fuzz import add_arguments

    add_arguments(p, prefix="fuzz-")
    p.set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_child"]:
        print(json.dumps(run_config(json.loads(argv[1]))))
        return 0
    parser = Parser(prog="evrtrl")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    if not argv or argv[0] != "bench":
        argv = ["bench"] + argv
    return run_cli(parser, argv)  # the CLI error contract


if __name__ == "__main__":
    sys.exit(main())
