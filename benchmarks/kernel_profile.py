r"""Phase profile of the compiled event step and interleaved A/B timing of kernel builds.

Runs the event engine on the benchmark's EGRU layer (``rho = 0.2``, ``beta ~ 0.1``, B = 1,
float32, 1 thread; the ``evrtrl bench --quick`` configuration) with the compiled engine
kernel built several ways at once: each ``--variant NAME=FLAGS[@SOURCE]`` is a build of
``evrtrl/kernels/engine_kernel.cpp`` (or of SOURCE, e.g. an older commit's copy) with extra
compiler flags, comma-separated (``-DEVRTRL_PROFILE`` is always added: the kernel then
times its phases; a source without the timers gives no phases). With deferred steps (the
default) almost all work is one ``chunk_update`` per window: its precomputation is booked
as "diag" and its panel work (immediate, coupling, emission, gradient) as "coupling"; a
single step's ``layer_update`` books each phase apart. All variants step the same model on the
same input in lockstep, one timing window each in turn, so machine load hits them alike. Prints per
variant the ms per step of ``step + accumulate`` (wall and thread CPU time; the median over
windows of 32 steps, :func:`evrtrl.benchmarks.bench.windows`), the share of each phase
(lazy transforms, ``T^{-1} phi``, coupling, immediate table, emission, gradient
accumulation, and the rest: the cell step and Python), the step's ``floor_ms`` (as
``evrtrl bench``: matmul rate and stream bandwidth measured in this run) and the largest
relative difference of the gradients against the first variant::

    python -m evrtrl.benchmarks.kernel_profile [--n 256] [--steps 200] \
        [--variant new= --variant old=@/tmp/engine_kernel_old.cpp --variant x=-DFLAG] [--layout rows]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from evrtrl.benchmarks import bench

__all__ = ["main", "build_variant"]


def build_variant(name: str, flags: list[str], source: str | None = None):
    """The engine kernel (``source``, default this tree's) built with ``-DEVRTRL_PROFILE`` and ``flags``."""
    from torch.utils import cpp_extension

    from evrtrl.kernels.build import CFLAGS, cache_dir
    from evrtrl.kernels.step import ENGINE_SOURCE
    mod_name = f"evrtrl_engine_profile_{name}"
    build = cache_dir() / mod_name
    build.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(name=mod_name, sources=[source or str(ENGINE_SOURCE)],
                              extra_cflags=CFLAGS + ["-DEVRTRL_PROFILE"] + flags,
                              build_directory=str(build), verbose=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evrtrl.benchmarks.kernel_profile", description=__doc__)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--cell", default="egru", choices=["egru", "lif"])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--layout", default="rows", choices=["rows", "cols"])
    p.add_argument("--variant", action="append", default=[],
                   help="NAME=FLAGS[@SOURCE] (comma-separated compiler flags; SOURCE: another "
                        "engine_kernel.cpp, e.g. an older commit's); default: one build, no flags")
    p.add_argument("--theta", type=float, default=None, help="skip calibration (with --width)")
    p.add_argument("--width", type=float, default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    os.environ["EVRTRL_KERNEL"] = "compiled"
    from evrtrl.event_engine import EventRTRL
    variants = [v.split("=", 1) for v in (a.variant or ["base="])]
    mods = {}
    for name, spec in variants:
        flags, _, source = spec.partition("@")
        mods[name] = build_variant(name, flags.replace(",", " ").split(), source or None)
    if a.theta is None:
        theta, width = bench.calibrate(a.cell, a.n, 0.2, 0.1)
    else:
        theta, width = a.theta, a.width
    print(f"load: {os.getloadavg()}; theta {theta}, width {width:.5f}", flush=True)
    model = bench.build_model(a.cell, a.n, 0.2, width, theta)
    x = bench.input_sequence(a.cell, a.n, 0.2, a.steps)
    r = bench.loss_signal(a.n, a.steps)
    engs = {}
    for name, mod in mods.items():
        eng = EventRTRL(model, 1, layout=a.layout, kernel="compiled")
        eng.compiled.mod = mod
        engs[name] = eng
    times: dict[str, list[float]] = {name: [] for name in engs}
    cpu: dict[str, list[float]] = {name: [] for name in engs}
    phases: dict[str, dict[str, float]] = {name: {} for name in engs}
    warm = a.steps // 3
    for start, end in bench.windows(warm):  # untimed warm-up
        for eng in engs.values():
            bench.run_window(eng, x, r, start, end, False)
    # lockstep by timing window (bench.windows: each holds one flush of the deferred steps)
    for start, end in bench.windows(a.steps, warm):
        for name, eng in engs.items():
            prof_of = getattr(mods[name], "profile", dict)  # kernels before the timers: none
            prof_of()
            t0, c0 = time.perf_counter(), time.thread_time()
            bench.run_window(eng, x, r, start, end, end == a.steps)
            dt, dc = time.perf_counter() - t0, time.thread_time() - c0
            prof = prof_of()
            times[name].append(dt / (end - start))
            cpu[name].append(dc / (end - start))
            prof["rest"] = dt - sum(prof.values())
            for k, v in prof.items():
                phases[name][k] = phases[name].get(k, 0.0) + v
    mm, bw = bench.matmul_gmacs(), bench.stream_gbs()
    eng0 = next(iter(engs.values()))
    s = eng0.stats
    beta = sum(s.beta[warm:]) / len(s.beta[warm:])
    rec = dict(n=a.n, state_size=model.state_size, rho_A=bench.rho_A(model), beta=beta,
               p_live=model.live_parameter_count)
    floor = bench.floor_ms(rec, mm, bw)
    print(f"matmul {mm:.1f} GMAC/s, stream {bw:.1f} GB/s, beta {beta:.3f}, "
          f"M {a.n * model.state_size * rec['p_live'] * 4 / 1e6:.1f} MB, floor_ms {floor:.3f}, "
          f"load {os.getloadavg()}")
    g0 = torch.cat([g.flatten() for g in eng0.grad])
    for name, eng in engs.items():
        med = 1e3 * statistics.median(times[name])
        tot = sum(phases[name].values())
        share = ", ".join(f"{k} {100 * v / tot:.0f}%" for k, v in phases[name].items()
                          if len(phases[name]) > 1)
        g = torch.cat([gg.flatten() for gg in eng.grad])
        diff = float((g - g0).abs().max() / g0.abs().max())
        print(f"{name:12s} {med:8.3f} ms/step = {med / floor:5.2f}x floor "
              f"(cpu {1e3 * statistics.median(cpu[name]):.3f} ms) | {share} | "
              f"grad rel diff {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
