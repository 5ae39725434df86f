"""Seeded mutation fuzzer over every file reader: does a corrupt file give the library's own error?

Each registered :class:`Format` writes a few valid *seed* files; every mutant is
a seed with 1-3 seeded byte-level mutations (bit flips, interesting bytes,
zeroed runs, interesting 16/32/64-bit integers and float64 values, truncation,
inserted, deleted and copied chunks). A reader runs every mutant in a worker
process (its own session, memory limited) under a time limit, and each mutant is
classified as

``ok``       the reader returned (the mutation hit data, or was harmless);
``format``   it raised :class:`evrtrl.errors.FormatError` (the contract);
``own``      it raised another :class:`evrtrl.errors.EvrtrlError`;
``foreign``  it raised anything else (KeyError, OSError, MemoryError, ...): a contract breach;
``crash``    the worker died (segfault, abort);
``hang``     the worker ran past the time limit and was killed.

Formats with a content hash also give a ``rehash`` function: every mutant is then
read twice, as is (the hash check must refuse it) and with the hash recomputed
(so the parser behind the hash check is exercised too); the second kind is
reported under ``<name>+rehash``.

Adding a reader is one entry in :data:`FORMATS`; its functions are named as
``"module:function"`` strings (imported only in the worker) or given as
module-level callables::

    Format("checkpoint", ".h5", seeds="evrtrl.training.checkpoint:sample_checkpoints",
           read="evrtrl.training.checkpoint:load_checkpoint", rehash="evrtrl.h5file:seal")

``seeds(out_dir, shared_data_or_None) -> list[Path]`` writes the seed files,
``read(path)`` reads one file, ``rehash(path)`` rewrites its hash in place.

Usage: ``python -m evrtrl.benchmarks.fuzz --count 200`` (or ``evrtrl bench --fuzz``).
"""
from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from evrtrl.benchmarks.fuzz_run_files import RUN_FILE_FORMATS
from evrtrl.cli_contract import Parser, positive_float, positive_int
from evrtrl.cli_contract import run as run_cli
from evrtrl.errors import ConfigError

__all__ = ["FORMATS", "Format", "FuzzResult", "fuzz", "main", "mutate", "register"]

_REPO = str(Path(__file__).resolve().parents[1])
CLASSES = ("ok", "format", "own", "foreign", "crash", "hang")

#: seconds a fresh worker may take to import evrtrl (not counted as reading time)
STARTUP_S = 180.0

#: time limit of the HDF5 probe child inside the readers while fuzzing (below the per-mutant limit)
PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Format:
    """One fuzzed reader. ``seeds``, ``read`` and ``rehash`` are callables or ``"module:function"`` names."""

    name: str
    suffix: str
    seeds: Callable[..., list[Path]] | str
    read: Callable[[Path], Any] | str
    rehash: Callable[[Path], None] | str | None = None


def _resolve(fn: Callable | str) -> Callable:
    if callable(fn):
        return fn
    module, _, attr = fn.partition(":")
    return getattr(importlib.import_module(module), attr)


# --------------------------------------------------------------------------- seeds and readers
def _camera(rng: np.random.Generator, n: int, t_max: int, w: int, h: int) -> np.ndarray:
    from evrtrl.datasets import camera_events

    return camera_events(np.sort(rng.integers(0, t_max, n)), rng.integers(0, w, n), rng.integers(0, h, n),
                         rng.integers(0, 2, n))


def seeds_nmnist(out: Path, shared: Path | None) -> list[Path]:
    from evrtrl.datasets import write_nmnist

    paths = []
    if shared is not None and (shared / "nmnist" / "sample_nmnist.bin").is_file():
        paths.append(Path(shutil.copy(shared / "nmnist" / "sample_nmnist.bin", out / "real.bin")))
    rng = np.random.default_rng(1)
    write_nmnist(out / "overflow.bin", _camera(rng, 300, 3 * 2**23, 34, 34))  # with y = 240 overflow markers
    return paths + [out / "overflow.bin"]


def seeds_aedat2(out: Path, shared: Path | None) -> list[Path]:
    from evrtrl.datasets.aedat import write_aedat2

    header = None
    if shared is not None and (shared / "aedat" / "sample_aedat2_header_davis346red.aedat").is_file():
        header = (shared / "aedat" / "sample_aedat2_header_davis346red.aedat").read_bytes()
    rng = np.random.default_rng(2)
    write_aedat2(out / "davis.aedat", _camera(rng, 400, 2**33, 346, 260), header_bytes=header)
    return [out / "davis.aedat"]


def seeds_aedat31(out: Path, shared: Path | None) -> list[Path]:
    from evrtrl.datasets.aedat import write_aedat31

    rng = np.random.default_rng(3)
    write_aedat31(out / "gesture.aedat", _camera(rng, 400, 2**32, 128, 128), packet_size=128)
    return [out / "gesture.aedat"]


def seeds_shd(out: Path, shared: Path | None) -> list[Path]:
    from evrtrl.datasets import audio_events, write_shd

    rng = np.random.default_rng(4)
    samples = [audio_events(np.sort(rng.integers(0, 1_000_000, k)), rng.integers(0, 700, k)) for k in (40, 25, 60)]
    write_shd(out / "shd.h5", samples, [0, 3, 1], [f"class{i}" for i in range(4)], speakers=[1, 2, 1])
    paths = [out / "shd.h5"]
    ref = None if shared is None else shared / "audio_spikes" / "lauscher_reference_70ch.npz"
    if ref is not None and ref.is_file():
        arr = np.load(ref)["arr_0"]
        real = audio_events(np.rint(arr[0] * 1e6).astype(np.int64), arr[1].astype(np.int32))
        write_shd(out / "lauscher.h5", [real], [0], ["digit"])
        paths.append(out / "lauscher.h5")
    return paths


def read_shd_all(path: Path) -> None:
    """Every sample and label of an SHD file, and its class names."""
    from evrtrl.datasets import SpikeH5

    r = SpikeH5(path, n_units=700, probe_timeout_s=PROBE_TIMEOUT_S)
    try:
        r.keys
        for i in range(len(r)):
            r[i]
    finally:
        r.close()


def seeds_gesture_csv(out: Path, shared: Path | None) -> list[Path]:
    rows = ["class,startTime_usec,endTime_usec"] + [f"{c},{s},{s + 1_500_000}" for c, s in
                                                      zip(range(1, 12), range(0, 22_000_000, 2_000_000))]
    (out / "user01_led_labels.csv").write_text("\r\n".join(rows) + "\r\n")
    return [out / "user01_led_labels.csv"]


def seeds_gesture_npy(out: Path, shared: Path | None) -> list[Path]:
    rng = np.random.default_rng(5)
    ev = _camera(rng, 300, 6_000_000, 128, 128)
    a = np.stack([ev["x"], ev["y"], ev["p"], ev["t"] / 1000.0], axis=1)
    np.save(out / "3.npy", a.astype(np.float64))
    np.save(out / "7.npy", np.stack([ev["x"], ev["y"], ev["p"], ev["t"] // 1000], axis=1).astype(np.int32))
    return [out / "3.npy", out / "7.npy"]


def seeds_nir(out: Path, shared: Path | None) -> list[Path]:
    names = ("braille_noDelay_bias_zero.nir", "lif_norse.nir", "two_lif_neurons.nir")
    if shared is not None and all((shared / "nir" / n).is_file() for n in names):
        return [Path(shutil.copy(shared / "nir" / n, out / n)) for n in names]
    import nir

    rng = np.random.default_rng(6)
    n_in, n = 3, 4
    graph = nir.NIRGraph(
        nodes={"input": nir.Input(input_type=np.array([n_in])),
               "fc": nir.Linear(weight=rng.normal(size=(n, n_in))),
               "lif": nir.CubaLIF(tau_syn=np.full(n, 5e-3), tau_mem=np.full(n, 1e-2), r=np.ones(n),
                                  v_leak=np.zeros(n), v_threshold=np.ones(n), w_in=np.ones(n)),
               "output": nir.Output(output_type=np.array([n]))},
        edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")])
    nir.write(out / "tiny.nir", graph)
    return [out / "tiny.nir"]


def read_nir_file(path: Path) -> None:
    """A NIR file up to the library's network description (no torch model is built)."""
    from evrtrl.neuromorphic.nir_io import network_from_nir_graph, read_graph

    network_from_nir_graph(read_graph(path, probe_timeout_s=PROBE_TIMEOUT_S), dt=1e-4)


#: every fuzzed reader; the checkpoint, model and bundle readers are registered below
FORMATS: tuple[Format, ...] = (
    Format("nmnist", ".bin", seeds_nmnist, "evrtrl.datasets:read_nmnist"),
    Format("aedat2", ".aedat", seeds_aedat2, "evrtrl.datasets:read_aedat2"),
    Format("aedat31", ".aedat", seeds_aedat31, "evrtrl.datasets:read_aedat31"),
    Format("shd", ".h5", seeds_shd, read_shd_all),
    Format("gesture_csv", ".csv", seeds_gesture_csv, "evrtrl.datasets:read_gesture_labels"),
    Format("gesture_npy", ".npy", seeds_gesture_npy, "evrtrl.datasets:read_gesture_npy"),
    Format("nir", ".nir", seeds_nir, read_nir_file),
)


def register(formats: tuple[Format, ...], *extra: Format) -> tuple[Format, ...]:
    """``formats`` with ``extra`` appended (a new tuple; names must be unique)."""
    out = tuple(formats) + tuple(extra)
    names = [f.name for f in out]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate format names in {names}")
    return out


#: the library's own sealed HDF5 formats: checkpoint, model, bundle (each with a +rehash row)
FORMATS = register(FORMATS, *(Format(*f) for f in RUN_FILE_FORMATS))


# --------------------------------------------------------------------------- mutations
_BYTES = (0x00, 0xFF, 0x7F, 0x80, 0x01, 0xF0)
_INTS = (0, 1, -1, 2**7, 2**15 - 1, 2**15, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32 + 5, 2**62, 2**63 - 1, -2**63)
_FLOATS = (np.nan, np.inf, -np.inf, 1e300, -1.0, 1e19, 5e-324, 70000.0, 7.0, 0.5)


def _int_bytes(value: int, width: int, order: str) -> bytes:
    return (value % (1 << (8 * width))).to_bytes(width, order)


def mutate(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """One mutant of ``data`` (1-3 seeded mutations) and a short description of them."""
    buf = bytearray(data)
    done = []
    for _ in range(int(rng.integers(1, 4))):
        n = len(buf)
        op = int(rng.integers(0, 10)) if n else 8
        pos = int(rng.integers(0, n)) if n else 0
        if op == 0:
            k = int(rng.integers(1, 9))
            for _ in range(k):
                i = int(rng.integers(0, n))
                buf[i] ^= 1 << int(rng.integers(0, 8))
            done.append(f"flip{k}")
        elif op == 1:
            buf[pos] = _BYTES[int(rng.integers(0, len(_BYTES)))]
            done.append(f"byte@{pos}")
        elif op == 2:
            k = int(rng.integers(1, 65))
            buf[pos:pos + k] = bytes(len(buf[pos:pos + k]))
            done.append(f"zero{k}@{pos}")
        elif op in (3, 4):
            width = (2, 4, 8)[int(rng.integers(0, 3))]
            order = "little" if op == 3 else "big"
            pos -= pos % width
            val = _INTS[int(rng.integers(0, len(_INTS)))]
            chunk = _int_bytes(val, width, order)
            buf[pos:pos + width] = chunk[:len(buf[pos:pos + width])]
            done.append(f"int{8 * width}{order[0]}={val}@{pos}")
        elif op == 5:
            pos -= pos % 4
            val = _FLOATS[int(rng.integers(0, len(_FLOATS)))]
            dt = ("<f8", "<f4", ">f8", ">f4")[int(rng.integers(0, 4))]
            with np.errstate(over="ignore"):
                chunk = np.array(val, dtype=np.float64).astype(dt).tobytes()
            buf[pos:pos + len(chunk)] = chunk[:len(buf[pos:pos + len(chunk)])]
            done.append(f"{dt}={val}@{pos}")
        elif op == 6:
            del buf[pos:]
            done.append(f"truncate@{pos}")
        elif op == 7:
            k = int(rng.integers(1, 129))
            del buf[pos:pos + k]
            done.append(f"delete{k}@{pos}")
        elif op == 8:
            src = int(rng.integers(0, n)) if n else 0
            k = int(rng.integers(1, 129))
            buf[pos:pos] = buf[src:src + k]
            done.append(f"insert{k}@{pos}")
        else:
            src = int(rng.integers(0, n))
            k = int(rng.integers(1, 65))
            chunk = bytes(buf[src:src + k])
            buf[pos:pos + len(chunk)] = chunk
            done.append(f"copy{k}:{src}->{pos}")
    return bytes(buf), "+".join(done)


# --------------------------------------------------------------------------- worker
def _classify(exc: BaseException) -> str:
    from evrtrl.errors import EvrtrlError, FormatError

    if isinstance(exc, FormatError):
        return "format"
    return "own" if isinstance(exc, EvrtrlError) else "foreign"


def _worker(conn, memory_bytes: int | None) -> None:  # pragma: no cover - runs in the child
    os.setsid()  # its own process group: killing it takes any grandchild (HDF5 probe) along
    if memory_bytes:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    import torch

    torch.set_num_threads(1)
    conn.send(("ready", ""))
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        fmt, path, rehash = task
        try:
            if rehash:
                _resolve(fmt.rehash)(Path(path))
            _resolve(fmt.read)(Path(path))
            conn.send(("ok", ""))
        except Exception as exc:  # noqa: BLE001 - classifying every exception is this tool's job
            cls = _classify(exc)
            detail = f"{type(exc).__name__}: {exc}"[:300]  # HDF5GuardError: the probe child looped or crashed
            if cls == "foreign":
                frames = traceback.extract_tb(exc.__traceback__)
                ours = [f for f in frames if _REPO in f.filename]
                detail += " | at " + " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}"
                                                 for f in (frames[-1:] + ours[-2:][::-1]))
            conn.send((cls, detail))


class _Pool:
    """One worker process, restarted after a hang or a crash."""

    def __init__(self, memory_bytes: int | None) -> None:
        self.ctx = mp.get_context("spawn")
        self.memory_bytes = memory_bytes
        self.proc = None
        self.conn = None

    def start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child, self.memory_bytes), daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent
        if not parent.poll(STARTUP_S) or parent.recv()[0] != "ready":  # imports are not timed as reading
            self.kill()
            raise RuntimeError(f"fuzz worker did not start within {STARTUP_S:.0f} s")

    def kill(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
            self.proc.join(5)
            self.conn.close()
        self.proc = self.conn = None

    def run(self, task: tuple, timeout_s: float) -> tuple[str, str]:
        if self.proc is None:
            self.start()
        self.conn.send(task)
        try:
            ready = self.conn.poll(timeout_s)
            if ready:
                return self.conn.recv()
        except (EOFError, ConnectionError):
            ready = True
        if not ready:
            self.kill()
            return "hang", f"no answer within {timeout_s:.0f} s"
        self.proc.join(5)
        code = self.proc.exitcode
        self.kill()
        return "crash", f"worker exit code {code}"

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.conn.send(None)
                self.proc.join(5)
            except (BrokenPipeError, OSError):
                pass
            self.kill()


# --------------------------------------------------------------------------- driver
@dataclass
class FuzzResult:
    """Counts per class for one format (``<name>`` or ``<name>+rehash``), examples of non-contract outcomes."""

    name: str
    counts: dict[str, int] = field(default_factory=lambda: {c: 0 for c in CLASSES})
    examples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    guarded: int = 0  # FormatErrors that were HDF5GuardError: libhdf5 looped or crashed in the probe child

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def add(self, cls: str, detail: str, what: str) -> None:
        self.counts[cls] += 1
        self.guarded += detail.startswith("HDF5GuardError")
        if (cls in ("foreign", "crash", "hang") or detail.startswith("HDF5GuardError")) and len(self.examples) < 5:
            self.examples.append(f"{cls}: {what}: {detail}")


def _shared_data() -> Path | None:
    env = os.environ.get("EVRTRL_SHARED_DATA")
    root = Path(__file__).resolve().parents[1]
    for c in ([Path(env)] if env else []) + [root.parent / "shared" / "data", root / "shared" / "data"]:
        if c.is_dir():
            return c
    return None


def fuzz(count: int = 200, seed: int = 0, formats: tuple[Format, ...] = FORMATS, names: list[str] | None = None,
         timeout_s: float = 60.0, shared: Path | None = None, memory_gb: float | None = 4.0,
         progress: bool = False) -> list[FuzzResult]:
    """Fuzz every format (or those in ``names``) with ``count`` seeded mutants; return one result per row."""
    chosen = [f for f in formats if names is None or f.name in names]
    if names is not None and len(chosen) != len(set(names)):
        raise ConfigError(f"unknown format in {names}; known: {[f.name for f in formats]}")
    shared = shared if shared is not None else _shared_data()
    pool = _Pool(int(memory_gb * 2**30) if memory_gb else None)
    results = []
    work = Path(tempfile.mkdtemp(prefix="evrtrl-fuzz-"))
    try:
        for k, fmt in enumerate(chosen):
            sdir = work / fmt.name / "seeds"
            sdir.mkdir(parents=True)
            seeds = [Path(p) for p in _resolve(fmt.seeds)(sdir, shared)]
            if not seeds:
                raise ValueError(f"format {fmt.name!r} wrote no seed files")
            rows = [FuzzResult(fmt.name)] + ([FuzzResult(fmt.name + "+rehash")] if fmt.rehash else [])
            for s in seeds:  # every seed must read cleanly, or the fuzzer measures nothing
                cls, detail = pool.run((fmt, str(s), False), timeout_s)
                if cls != "ok":
                    raise RuntimeError(f"seed {s.name} of format {fmt.name!r} does not read: {cls}: {detail}")
            mdir = work / fmt.name / "mutants"
            mdir.mkdir()
            for i in range(count):
                rng = np.random.default_rng([seed, k, i])
                src = seeds[int(rng.integers(0, len(seeds)))]
                data, how = mutate(src.read_bytes(), rng)
                for row, rehash in zip(rows, (False, True)):
                    path = mdir / f"m{i}{'r' if rehash else ''}{fmt.suffix}"
                    path.write_bytes(data)
                    t0 = time.perf_counter()
                    cls, detail = pool.run((fmt, str(path), rehash), timeout_s)
                    row.seconds += time.perf_counter() - t0
                    row.add(cls, detail, f"{src.name} {how} (seed {seed}, mutant {i})")
                    path.unlink(missing_ok=True)
                if progress and (i + 1) % 50 == 0:
                    print(f"  {fmt.name}: {i + 1}/{count}", file=sys.stderr, flush=True)
            results += rows
    finally:
        pool.close()
        shutil.rmtree(work, ignore_errors=True)
    return results


def table(results: list[FuzzResult]) -> str:
    """Markdown table of the counts."""
    lines = ["| format | mutants | ok | FormatError | (of which HDF5 guard) | other own error | foreign exception "
             "| crash | hang | ms/mutant |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        c = r.counts
        lines.append(f"| {r.name} | {r.n} | {c['ok']} | {c['format']} | {r.guarded} | {c['own']} | {c['foreign']} "
                     f"| {c['crash']} | {c['hang']} | {1000 * r.seconds / max(r.n, 1):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m evrtrl.benchmarks.fuzz", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=run)
    return run_cli(p, argv)  # the CLI error contract: one error: line, exit status 2


def add_arguments(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """Fuzzer options (``prefix`` = ``"fuzz-"`` inside ``evrtrl bench``)."""
    p.add_argument(f"--{prefix}count", type=positive_int, default=200, help="mutants per format (default 200)")
    p.add_argument(f"--{prefix}seed", type=int, default=0, help="seed of the mutations (default 0)")
    p.add_argument(f"--{prefix}formats", default=None, help=f"comma-separated subset of {[f.name for f in FORMATS]}")
    p.add_argument(f"--{prefix}timeout", type=positive_float, default=60.0,
                   help="seconds per mutant before 'hang' (default 60)")
    p.add_argument(f"--{prefix}json", metavar="PATH", default=None, help="write the counts and examples as JSON")


def run(args: argparse.Namespace, prefix: str = "") -> int:
    """Run the fuzzer from parsed options; exit status 1 when a mutant was foreign, crashed or hung."""
    opt = lambda name: getattr(args, (prefix + name).replace("-", "_"))  # noqa: E731
    names = opt("formats").split(",") if opt("formats") else None
    t0 = time.time()
    results = fuzz(opt("count"), opt("seed"), names=names, timeout_s=opt("timeout"), progress=True)
    print(table(results))
    bad = [e for r in results for e in r.examples]
    for e in bad:
        print(" ", e)
    print(f"\nseed {opt('seed')}, {opt('count')} mutants per format, {time.time() - t0:.0f} s")
    if opt("json"):
        Path(opt("json")).parent.mkdir(parents=True, exist_ok=True)
        Path(opt("json")).write_text(json.dumps(
            {"seed": opt("seed"), "count": opt("count"),
             "results": [{"name": r.name, "counts": r.counts, "guarded": r.guarded, "examples": r.examples,
                          "seconds": r.seconds}
                         for r in results]}, indent=1))
    return 1 if any(r.counts[c] for r in results for c in ("foreign", "crash", "hang")) else 0


if __name__ == "__main__":
    sys.exit(main())
