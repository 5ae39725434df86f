r"""Learning online on one long event stream with exact event-driven RTRL.

An EGRU with a linear readout follows a stationary event stream step by step and updates
its weights after **every** step (``k = 1``), with the exact RTRL gradient of the event
engine. The stream: a hidden two-state Markov chain :math:`z_t` (switching with
probability ``p_switch`` per step) drives two Poisson event channels (rates swapped between
the states); at every step the network must report :math:`z_t` (cross-entropy), which it
can only do by integrating events over time.

Step size: plain SGD with the decaying schedule of the RTRL convergence analysis (Lam,
Sirignano & Spiliopoulos, arXiv 2501.08040, which studies RTRL with a decreasing
learning rate),

.. math:: \alpha_t = \frac{\alpha_0}{(1 + t / t_0)^{r}}, \qquad \tfrac12 < r \le 1,

so that :math:`\sum_t \alpha_t = \infty` and :math:`\sum_t \alpha_t^2 < \infty` (the
Robbins--Monro conditions; ``r`` outside ``(1/2, 1]`` is refused).

Memory. The stream is generated and fed in chunks (``OnlineLearner.run(x, carry=True)``
keeps the network state and the influence matrix), losses are folded into window means
and the engine's per-step statistics into running sums, so nothing grows with T. The
script measures it with the allocators themselves, not RSS, after a full garbage
collection: glibc ``mallinfo2`` (bytes in use in every malloc arena plus mmapped
blocks) for the C heap, which holds PyTorch's CPU tensor storage (its default CPU
allocator is ``posix_memalign``/``free``, without a cache) and every Python object
larger than 512 bytes; ``sys.getallocatedblocks()`` for the small Python objects that
pymalloc serves from its own mmapped arenas (each block is at most 512 bytes, so 512 x
the block count bounds their bytes); and a census of the live tensors reachable from
Python (bytes of distinct storages). ``--tracemalloc`` adds the exact bytes of every
Python allocation (it doubles the time per step). Growth from ``T = steps/10`` to
``T = steps`` is reported for each.

Offline reference: the same architecture trained by BPTT with Adam on independent
segments of the same process until the loss stops improving, then run over the very
same stream; the script compares the online loss with that model's loss over the last
10 % of the steps.

Usage::

    python examples/long_stream.py                  # 100,000 steps, 3 seeds, figure
    python examples/long_stream.py --quick          # seconds: 1,000 steps, 1 seed
    python examples/long_stream.py --steps 20000 --seeds 0 --plot out.png
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import sys
import time
import tracemalloc
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

import evrtrl
from evrtrl.models import EGRU, Readout, Triangle


# --------------------------------------------------------------------------- the stream
@dataclass
class EventStream:
    """A stationary stream of two-channel events driven by a two-state Markov chain."""

    seed: int
    p_switch: float = 0.02
    rate_hi: float = 0.3
    rate_lo: float = 0.05

    def __post_init__(self) -> None:
        self.g = torch.Generator().manual_seed(10_000 + self.seed)
        self.z = int(torch.randint(0, 2, (1,), generator=self.g))  # stationary start

    def chunk(self, T: int, B: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``T`` steps: events ``(T, B, 2)`` (0/1) and labels ``(T, B)``.

        ``B > 1`` draws independent streams (for offline training); the stream state is
        only carried for ``B = 1``.
        """
        flips = torch.rand(T, B, generator=self.g) < self.p_switch
        z0 = torch.full((B,), self.z) if B == 1 else torch.randint(0, 2, (B,), generator=self.g)
        z = (z0[None] + torch.cumsum(flips.long(), 0)) % 2  # (T, B)
        rates = torch.tensor([[self.rate_hi, self.rate_lo], [self.rate_lo, self.rate_hi]])[z]
        x = (torch.rand(T, B, 2, generator=self.g) < rates).float()
        if B == 1:
            self.z = int(z[-1, 0])
        return x, z


def make_model(seed: int, hidden: int, theta_init: float = 0.05,
               width: float = 0.3) -> tuple[EGRU, Readout]:
    g = torch.Generator().manual_seed(seed)
    model = EGRU(2, hidden, pseudo_derivative=Triangle(0.7, width), theta_init=theta_init,
                 generator=g)
    torch.manual_seed(seed)
    return model, Readout(hidden, 2)


class DecayingSGD(torch.optim.SGD):
    """SGD with :math:`\\alpha_t = \\alpha_0 / (1 + t/t_0)^r` (module docstring)."""

    def __init__(self, params, alpha0: float, t0: float, r: float) -> None:
        if not (0.5 < r <= 1.0):
            raise evrtrl.ConfigError(f"decay exponent r must be in (1/2, 1] (sum alpha = inf, "
                                     f"sum alpha^2 < inf), got {r}")
        super().__init__(params, lr=alpha0)
        self.alpha0, self.t0, self.r, self.t = alpha0, t0, r, 0

    def step(self, closure=None):  # noqa: D102
        lr = self.alpha0 / (1.0 + self.t / self.t0) ** self.r
        for group in self.param_groups:
            group["lr"] = lr
        self.t += 1
        return super().step(closure)


# --------------------------------------------------------------------------- memory
class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _libc_in_use():
    """Bytes in use on the C heap (glibc mallinfo2: uordblks + hblkhd), or None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        f = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    f.restype = _MallInfo2
    return lambda: (lambda m: m.uordblks + m.hblkhd)(f())


def tensor_bytes() -> int:
    """Bytes of the distinct storages of every tensor reachable from Python."""
    seen, total = set(), 0
    with warnings.catch_warnings():  # isinstance() on some torch module objects warns
        warnings.simplefilter("ignore")
        objs = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    for obj in objs:
        s = obj.untyped_storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            total += s.nbytes()
    return total


def memory_snapshot(libc) -> dict[str, int]:
    """Allocator counters after a full garbage collection (module docstring)."""
    gc.collect()
    snap = {"python_blocks": sys.getallocatedblocks(), "tensors": tensor_bytes()}
    if tracemalloc.is_tracing():
        snap["python_traced"] = tracemalloc.get_traced_memory()[0]
    if libc is not None:
        snap["c_heap"] = libc()
    return snap


def bptt_bytes_per_step(model, readout, stream_seed: int, T: int = 200) -> float:
    """Bytes autograd saves per step for BPTT through this model (saved-tensor hooks)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    x, z = EventStream(stream_seed + 777).chunk(T)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        w, s = model.weights(), model.initial_state(1)
        loss = 0.0
        for t in range(T):
            s, _ = model.step(w, s, x[t])
            loss = loss + torch.nn.functional.cross_entropy(readout(s.y), z[t])
    del loss
    return total[0] / T


# --------------------------------------------------------------------------- training
def train_offline(seed: int, args, iters: int, seg: int, batch: int) -> tuple[EGRU, Readout]:
    """BPTT with Adam on independent segments of the process, to convergence."""
    model, readout = make_model(seed, args.hidden, args.theta_init, args.width)
    params = list(model.parameters()) + list(readout.parameters())
    opt = torch.optim.Adam(params, lr=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    data = EventStream(seed + 5000)
    for _ in range(iters):
        x, z = data.chunk(seg, batch)
        w, s = model.weights(), model.initial_state(batch)
        loss = 0.0
        for t in range(seg):
            s, _ = model.step(w, s, x[t])
            loss = loss + torch.nn.functional.cross_entropy(readout(s.y), z[t])
        opt.zero_grad()
        (loss / seg).backward()
        opt.step()
        sched.step()
    return model, readout


@torch.no_grad()
def stream_losses(model, readout, seed: int, steps: int, chunk: int, window: int) -> list[float]:
    """Window means of the per-step loss of a fixed model over the stream ``seed``."""
    stream, out = EventStream(seed), []
    w, s = model.weights(), model.initial_state(1)
    acc, n = 0.0, 0
    for lo in range(0, steps, chunk):
        x, z = stream.chunk(min(chunk, steps - lo))
        for t in range(x.shape[0]):
            s, _ = model.step(w, s, x[t])
            acc += float(torch.nn.functional.cross_entropy(readout(s.y), z[t]))
            n += 1
            if n == window:
                out.append(acc / n)
                acc, n = 0.0, 0
    return out


def run_online(seed: int, args, libc) -> dict:
    """Online RTRL (event engine, k = 1) over ``args.steps`` steps of stream ``seed``."""
    model, readout = make_model(seed, args.hidden, args.theta_init, args.width)
    params = list(model.parameters()) + list(readout.parameters())
    opt = DecayingSGD(params, args.alpha0, args.t0, args.r)
    labels = [None]

    def loss_fn(y, t):
        return torch.nn.functional.cross_entropy(readout(y), labels[0][t - learner._t])

    learner = evrtrl.OnlineLearner(model, opt, loss_fn, k=1, method="event",
                                   extra_parameters=readout.parameters())
    stream = EventStream(seed)
    windows, acc, n = [], 0.0, 0
    beta_sum, alpha_sum, steps_seen = 0.0, 0.0, 0
    mem = {}
    t_start = time.perf_counter()
    if args.tracemalloc:
        tracemalloc.start()
    for lo in range(0, args.steps, args.chunk):
        x, z = stream.chunk(min(args.chunk, args.steps - lo))
        labels[0] = z
        for v in learner.run(x, carry=lo > 0):
            acc += v
            n += 1
            if n == args.window:
                windows.append(acc / n)
                acc, n = 0.0, 0
        st = learner.engine.stats  # fold the per-step statistics into running sums
        beta_sum += sum(st.beta)
        alpha_sum += sum(st.alpha)
        steps_seen += len(st.beta)
        for lst in (st.alpha, st.beta, st.gamma, st.macs_per_step):
            lst.clear()
        done = lo + x.shape[0]
        for mark in (args.steps // 10, args.steps):
            if done == mark:
                mem[mark] = memory_snapshot(libc)
        if args.progress:
            print(f"\r  seed {seed}: step {done:,}/{args.steps:,}", end="", file=sys.stderr)
    tracemalloc.stop()
    if args.progress:
        print(file=sys.stderr)
    lo_mark, hi_mark = args.steps // 10, args.steps
    growth = {k: mem[hi_mark][k] - mem[lo_mark][k] for k in mem[hi_mark]}
    return {
        "windows": windows, "wall_s": time.perf_counter() - t_start,
        "influence_bytes": learner.engine.stats.influence_bytes,
        "alpha": alpha_sum / steps_seen, "beta": beta_sum / steps_seen,
        "memory": {str(k): v for k, v in mem.items()}, "growth": growth,
        "bptt_bytes_per_step": bptt_bytes_per_step(model, readout, seed),
        "updates": learner.updates,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100_000, help="length of the stream")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--theta-init", type=float, default=0.05, help="EGRU initial threshold")
    p.add_argument("--width", type=float, default=0.3, help="triangle pseudo-derivative width")
    p.add_argument("--alpha0", type=float, default=0.1, help="initial SGD step size")
    p.add_argument("--t0", type=float, default=5000.0, help="decay time scale (steps)")
    p.add_argument("--r", type=float, default=0.6, help="decay exponent, in (1/2, 1]")
    p.add_argument("--chunk", type=int, default=1000, help="steps per OnlineLearner.run call")
    p.add_argument("--window", type=int, default=1000, help="steps per plotted loss mean")
    p.add_argument("--offline-iters", type=int, default=400)
    p.add_argument("--plot", default=None, help="write the figure here (PNG)")
    p.add_argument("--json", default=None, help="write the measured numbers here")
    p.add_argument("--tracemalloc", action="store_true",
                   help="also trace every Python allocation in bytes (about 2x slower)")
    p.add_argument("--quick", action="store_true",
                   help="seconds: at most 1,000 steps, one seed, a small offline run")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="no training: combine --json files of earlier runs (e.g. one per seed, "
                        "run in parallel) into one report and figure")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.offline_iters = min(args.steps, 1000), args.seeds[:1], 10
        args.chunk = args.window = min(args.chunk, args.steps // 10)
    if args.steps < 10 * args.chunk or args.steps % args.chunk or args.steps % args.window:
        p.error("--steps must be a multiple of --chunk and --window and at least 10 chunks")
    torch.set_num_threads(1)
    libc = _libc_in_use()

    if args.merge:
        runs = [json.loads(Path(f).read_text()) for f in args.merge]
        results = [{"theta_init": run["args"].get("theta_init", 0.3),
                    "alpha0": run["args"]["alpha0"], **r}
                   for run in runs for r in run["results"]]
        for k in ("steps", "window", "hidden", "alpha0", "t0", "r"):
            setattr(args, k, runs[0]["args"][k])
    else:
        results = []
        for seed in args.seeds:
            on = run_online(seed, args, libc)
            off_model, off_readout = train_offline(seed, args, args.offline_iters,
                                                   seg=100, batch=32)
            off = stream_losses(off_model, off_readout, seed, args.steps, args.chunk, args.window)
            tail = max(1, len(on["windows"]) // 10)
            on_tail = sum(on["windows"][-tail:]) / tail
            off_tail = sum(off[-tail:]) / tail
            results.append({"seed": seed, "theta_init": args.theta_init, "alpha0": args.alpha0,
                            "online_tail": on_tail, "offline_tail": off_tail,
                            "ratio": on_tail / off_tail, "offline_windows": off, **on})
    for rec in results:
        g = rec["growth"]
        print(f"seed {rec['seed']}: online loss (last 10 %) {rec['online_tail']:.4f}, offline "
              f"{rec['offline_tail']:.4f}, ratio {rec['ratio']:.3f}; {rec['updates']:,} updates "
              f"in {rec['wall_s']:.0f} s; beta {rec['beta']:.3f}")
        T_r = len(rec["windows"]) * args.window
        print(f"  memory growth T={T_r // 10:,} -> {T_r:,}: "
              + (f"C heap (mallinfo2) {g['c_heap'] / 1e3:+.1f} kB, " if "c_heap" in g else "")
              + f"Python object blocks {g['python_blocks']:+,} (<= {512 * g['python_blocks'] / 1e3:+.1f} kB)"
              + (f", Python (tracemalloc) {g['python_traced'] / 1e3:+.1f} kB"
                 if "python_traced" in g else "")
              + f", live tensors {g['tensors'] / 1e3:+.1f} kB")
    r0 = results[0]
    T = args.steps
    bptt = r0["bptt_bytes_per_step"] * T
    print(f"RTRL state: influence matrix {r0['influence_bytes'] / 1e3:.1f} kB, the same at every T.")
    print(f"BPTT over the same stream: one exact gradient of all {T:,} steps stores "
          f"{r0['bptt_bytes_per_step'] / 1e3:.2f} kB/step x {T:,} = {bptt / 1e6:.1f} MB of "
          f"activations; an update at every step (k = 1) with exact gradients would re-run "
          f"the backward pass over the whole past each time: {T * (T + 1) // 2:,} step-backwards "
          f"in total, against {T:,} RTRL steps.")
    if args.json and not args.merge:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    if args.plot:
        plot(results, args, args.plot)
    met = all(abs(r["ratio"] - 1) <= 0.1 for r in results)
    print(f"online within 10 % of offline over the last 10 % of steps, every seed: {'yes' if met else 'no'}"
          + (" (--quick: too short to converge; not a check)" if args.quick else ""))
    print("long_stream: ok")
    return 0


def plot(results, args, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5.2))
    for i, r in enumerate(results):
        steps = [(k + 1) * args.window for k in range(len(r["windows"]))]
        c = f"C{i}"
        tag = f"seed {r['seed']}, T={steps[-1]:,}" + (f", theta {r['theta_init']}, "
                                                       f"alpha0 {r['alpha0']}" if "theta_init" in r else "")
        ax.plot(steps, r["windows"], color=c, lw=1, label=f"online RTRL, {tag}")
        ax.plot(steps, r["offline_windows"], color=c, lw=1, ls=":", label=f"offline model, {tag}")
    ax.axvspan(0.9 * args.steps, args.steps, color="0.9", zorder=0,
               label=f"last 10 % of T={args.steps:,}")
    ax.set_xlabel("step")
    ax.set_ylabel(f"cross-entropy (mean over {args.window} steps)")
    ax.set_title(f"EGRU {args.hidden}, k = 1, event RTRL, "
                 f"alpha_t = alpha0/(1+t/{args.t0:g})^{args.r}", fontsize=9)
    ax.legend(fontsize=6.5, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
