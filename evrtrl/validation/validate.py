"""``evrtrl validate [--model PATH] [--quick]``: every cross-check, as a table.

Checks (float64 throughout):

- gradient agreement ``event`` / ``dense`` / ``bptt`` on EGRU and LIF (exact and euler)
  defaults: relative norm-wise error per parameter (tolerance 1e-10: in float64 the engines
  equal BPTT to 1e-10 and each other to 1e-12);
- Brian2 ``method='exact'`` vs ``integration="exact"``: mismatched raster entries (tolerance
  0) and max |v|, |i| difference (1e-9); feed-forward and recurrent, both reset modes, a stack;
- Norse ``LIFCell`` / ``LIFRecurrentCell`` vs ``integration="euler"``: the same;
- Brian2 exact vs Norse euler at ``dt / tau_mem = 0.05``: relative spike-count error against
  the documented bound (docs/validation.md).

A check whose simulator is not installed is reported as ``skip`` (not a failure).
:func:`register` adds the ``validate`` sub-command to an argparse parser (the CLI wires it).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable

import torch
from evrtrl.models import EGRU, LIF, Stack
from evrtrl.models.modelfile import load_model

from evrtrl.cli_contract import Parser
from evrtrl.cli_contract import run as run_cli
from evrtrl.extras import available, install_hint
from evrtrl.network import layers_of
from evrtrl.validation.brian2_bridge import run_brian2
from evrtrl.validation.drift import drift_pair
from evrtrl.validation.norse_bridge import run_norse
from evrtrl.validation.testing import compare_with_reference, gradient_errors

__all__ = ["CheckResult", "run_validation", "main", "register", "DRIFT_BOUND"]

GRAD_RTOL = 1e-10
STATE_ATOL = 1e-9


def DRIFT_BOUND(dt_over_tau: float) -> float:
    """Documented bound on the relative spike-count error, Brian2 exact vs Norse euler
    (docs/validation.md): ``sum_k |N_k^exact - N_k^euler| / max(sum N^exact, sum N^euler)``."""
    return 1.5 * dt_over_tau + 0.02


@dataclass
class CheckResult:
    """One row of the validation table; ``passed`` is None for a skipped check."""

    check: str
    reference: str
    worst_error: float
    tolerance: float
    passed: bool | None
    detail: str = ""
    seconds: float = 0.0

    @property
    def status(self) -> str:
        return "skip" if self.passed is None else ("pass" if self.passed else "FAIL")


def _lif(d, n, seed, **kw):

    g = torch.Generator().manual_seed(seed)
    kw.setdefault("weight_scale", 3.0)
    return LIF(d, n, tau_mem=20e-3, tau_syn=10e-3, dt=1e-3, dtype=torch.float64, generator=g,
               **kw)


def _spikes(T, B, d, rate, seed):
    g = torch.Generator().manual_seed(1000 + seed)
    return (torch.rand(T, B, d, generator=g) < rate).double()


def _loss(T, B, n, seed):
    c = torch.randn(T, B, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return lambda y, t: (y * c[t]).sum()


def _gradient_check(name, model, x) -> CheckResult:

    T, B = x.shape[:2]
    errs = gradient_errors(model, x, _loss(T, B, model.hidden_size, 0))
    w = max(errs, key=lambda e: e.relative_error)
    return CheckResult(name, "event/dense/bptt", w.relative_error, GRAD_RTOL,
                       w.relative_error <= GRAD_RTOL,
                       f"worst: '{w.parameter}' {w.method_a} vs {w.method_b}")


def _sim_check(name, reference, model, x, runner) -> CheckResult:

    comps = compare_with_reference(model, x, runner(model, x), name=reference)
    mism = sum(c.n_mismatch for c in comps)
    state = max((v for c in comps for v in c.state_max_abs.values()), default=0.0)
    spikes = sum(c.total_a for c in comps)
    ok = mism == 0 and state <= STATE_ATOL and spikes > 0
    return CheckResult(
        name, reference, float(mism) if mism else state, 0.0 if mism else STATE_ATOL, ok,
        f"{mism} raster entries differ, max |state diff| {state:.2e}, {spikes} spikes",
    )


def _checks(quick: bool, model=None) -> list[tuple[str, str, Callable[[], CheckResult]]]:

    T = 60 if quick else 200
    out: list[tuple[str, str, Callable[[], CheckResult]]] = []
    if model is not None:
        return _model_checks(model, T)
    g = torch.Generator().manual_seed(0)
    egru = EGRU(4, 8, dtype=torch.float64, generator=g)
    xe = torch.randn(T // 2, 2, 4, generator=g, dtype=torch.float64)
    out.append(("gradients EGRU", "", lambda: _gradient_check("gradients EGRU", egru, xe)))
    for integ in ("exact", "euler"):
        m = _lif(4, 8, 1, integration=integ)
        x = _spikes(T // 2, 2, 4, 0.2, 1)
        out.append((f"gradients LIF {integ}", "",
                    lambda m=m, x=x, i=integ: _gradient_check(f"gradients LIF {i}", m, x)))

    variants = [(False, "zero"), (True, "zero"), (True, "subtract")]
    if not quick:
        variants.append((False, "subtract"))
    for rec, reset in variants:
        m = _lif(5, 12, 2, recurrent=rec, reset=reset)
        x = _spikes(T, 2, 5, 0.2, 2)
        nm = f"LIF exact {'rec' if rec else 'ff'} reset={reset}"
        out.append((nm, "brian2", lambda m=m, x=x, nm=nm: _sim_check(nm, "Brian2", m, x, run_brian2)))
    if not quick:
        st = Stack(_lif(5, 10, 3), _lif(10, 6, 4, reset="subtract", recurrent=False))
        xs = _spikes(T, 2, 5, 0.2, 3)
        out.append(("LIF exact stack", "brian2",
                    lambda: _sim_check("LIF exact stack", "Brian2", st, xs, run_brian2)))
    for rec in (False, True):
        m = _lif(5, 12, 5, recurrent=rec, integration="euler")
        x = _spikes(T, 2, 5, 0.2, 5)
        nm = f"LIF euler {'LIFRecurrentCell' if rec else 'LIFCell'}"
        out.append((nm, "norse", lambda m=m, x=x, nm=nm: _sim_check(nm, "Norse", m, x, run_norse)))
    out.append(("drift exact vs euler dt/tau=0.05", "brian2+norse", lambda: _drift_check(quick)))
    return out


def _drift_check(quick: bool) -> CheckResult:

    r = 0.05
    rows = [drift_pair(r, recurrent=rec, seed=s, duration=0.25 if quick else 0.5)
            for rec in (False, True) for s in ((0,) if quick else (0, 1))]
    worst = max(x.relative_count_error for x in rows)
    bound = DRIFT_BOUND(r)
    return CheckResult("drift exact vs euler dt/tau=0.05", "Brian2 vs Norse", worst, bound,
                       worst <= bound,
                       f"min matched within 2 steps {min(x.matched[2] for x in rows):.3f}")


def _model_checks(model, T):
    """Checks for a loaded model: gradients, plus the simulator its integration matches."""

    layers = [r.layer for r in layers_of(model)]
    model = model.double()
    d = layers[0].input_size
    x = _spikes(T, 2, d, 0.2, 0)
    out = [("gradients (model)", "", lambda: _gradient_check("gradients (model)", model, x))]
    if all(isinstance(l, LIF) for l in layers):
        integ = {l.integration for l in layers}
        if integ == {"exact"}:

            out.append(("model vs Brian2", "brian2",
                        lambda: _sim_check("model vs Brian2", "Brian2", model, x, run_brian2)))
        elif integ == {"euler"} and all(l.reset == "zero" for l in layers):

            out.append(("model vs Norse", "norse",
                        lambda: _sim_check("model vs Norse", "Norse", model, x, run_norse)))
    return out


def _load(model_path: str):
    """The recurrent model of a file written by ``evrtrl.models.save_model``."""

    return load_model(model_path).model


def run_validation(model_path: str | None = None, quick: bool = False) -> list[CheckResult]:
    """Run every cross-check (module docstring) and return one :class:`CheckResult` each."""
    model = _load(model_path) if model_path else None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results = []
    try:
        probes = {"brian2": "brian2", "norse": "norse.torch"}
        missing = {m: install_hint(m) for m, probe in probes.items() if not available(probe)}
        for name, sim, fn in _checks(quick, model):
            lacking = [m for m in sim.split("+") if m in missing] if sim else []
            if lacking:
                results.append(CheckResult(name, sim, float("nan"), float("nan"), None,
                                           "; ".join(f"{m} is not installed: {missing[m]}" for m in lacking)))
                continue
            t0 = time.perf_counter()
            try:
                r = fn()
            except Exception as e:  # a crashing check is a failing check, reported
                r = CheckResult(name, sim or "event/dense/bptt", float("nan"), float("nan"),
                                False, f"{type(e).__name__}: {e}")
            r.seconds = time.perf_counter() - t0
            results.append(r)
    finally:
        torch.set_num_threads(threads)
    return results


def format_table(results: list[CheckResult]) -> str:
    head = ("check", "reference", "worst error", "tolerance", "result")
    rows = [(r.check, r.reference, f"{r.worst_error:.3g}", f"{r.tolerance:.3g}", r.status)
            for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in rows]
    for r in results:
        if r.passed is False or r.passed is None:
            lines.append(f"{r.status}: {r.check}: {r.detail}")
    return "\n".join(lines)


def main(args: argparse.Namespace | list[str] | None = None) -> int:
    """Print the table; return 0 when every check passes (skips allowed), 1 otherwise."""
    if not isinstance(args, argparse.Namespace):  # stand-alone: the CLI error contract
        p = Parser(prog="evrtrl validate")
        _add_arguments(p)
        p.set_defaults(func=main)
        return run_cli(p, args)
    # a bad --model (missing, corrupt) raises; the CLI prints its one error: line (cli_contract)
    results = run_validation(getattr(args, "model", None), bool(getattr(args, "quick", False)))
    print(format_table(results))
    failed = [r for r in results if r.passed is False]
    print(f"\n{len(results) - len(failed)}/{len(results)} checks passed or skipped"
          + (f"; {len(failed)} FAILED" if failed else ""))
    return 1 if failed else 0


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="PATH", default=None,
                   help="validate a model saved by evrtrl.models.save_model (or `evrtrl train`)")
    p.add_argument("--quick", action="store_true",
                   help="shorter sequences and fewer configurations")


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``validate [--model PATH] [--quick]`` to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "validate", help="run every cross-check (gradients, Brian2, Norse) and print a table",
        description=__doc__.split("\n\n")[0],
    )
    _add_arguments(p)
    p.set_defaults(func=main)
    return p
