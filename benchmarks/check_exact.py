"""Exactness check of the RTRL engines (run after every engine change).

In float64, over EGRU and LIF (both ``integration`` and both ``reset`` values), masked and
unmasked, B = 1 and B = 3, one layer and a 2-layer ``models.Stack``: the event engine's
gradient must equal the dense engine's to 1e-12 relative and BPTT's to 1e-10 relative
(relative to the largest entry of the reference gradient of each parameter).

    python -m evrtrl.benchmarks.check_exact
"""
from __future__ import annotations

import itertools
import sys

import torch

import evrtrl
from evrtrl.models import EGRU, LIF, Stack, Triangle, random_masks


def _egru(d, n, masked, seed):
    masks = random_masks(EGRU.weight_shapes(d, n), 0.4, seed=seed) if masked else None
    g = torch.Generator().manual_seed(seed)
    return EGRU(d, n, masks=masks, theta_init=0.3, pseudo_derivative=Triangle(0.7, 0.3),
                dtype=torch.float64, generator=g)


def _lif(d, n, masked, seed, integration, reset):
    masks = random_masks(LIF.weight_shapes(d, n), 0.5, seed=seed) if masked else None
    g = torch.Generator().manual_seed(seed)
    return LIF(d, n, tau_mem=0.02, tau_syn=0.01, dt=0.001 if integration == "euler" else 0.002,
               v_th=0.5, reset=reset, integration=integration, masks=masks, weight_scale=3.0,
               pseudo_derivative=Triangle(0.3, 0.4), dtype=torch.float64, generator=g)


def cases():
    d, n, T = 5, 9, 40
    for masked, B, depth in itertools.product((False, True), (1, 3), (1, 2)):
        def build(make):
            layers = [make(d, n, 0)] + [make(n, n, 1)] * 0
            if depth == 2:
                layers.append(make(n, n, 1))
            return layers[0] if depth == 1 else Stack(*layers)
        yield (f"EGRU masked={masked} B={B} depth={depth}",
               build(lambda a, b, s: _egru(a, b, masked, 10 + s)), d, B, T)
        for integration, reset in itertools.product(("exact", "euler"), ("zero", "subtract")):
            yield (f"LIF {integration}/{reset} masked={masked} B={B} depth={depth}",
                   build(lambda a, b, s: _lif(a, b, masked, 20 + s, integration, reset)),
                   d, B, T * 2)


def long_cases():
    """Long sequences, where the event engine's lazy transforms get re-materialised."""
    d, n = 5, 9
    yield "EGRU long T=400 B=2 masked", _egru(d, n, True, 30), d, 2, 400
    for integration, reset in itertools.product(("exact", "euler"), ("zero", "subtract")):
        yield (f"LIF {integration}/{reset} long T=600 B=2 masked",
               _lif(d, n, True, 31, integration, reset), d, 2, 600)


def rel_err(a: dict, b: dict) -> float:
    worst = 0.0
    for k in b:
        scale = float(b[k].abs().max())
        if scale == 0:
            scale = 1.0
        worst = max(worst, float((a[k] - b[k]).abs().max()) / scale)
    return worst


def main() -> int:
    torch.manual_seed(0)
    ok = True
    for name, model, d, B, T in itertools.chain(cases(), long_cases()):
        g = torch.Generator().manual_seed(3)
        x = torch.randn(T, B, d, dtype=torch.float64, generator=g) * 2.0
        x = x * (torch.rand(T, B, d, generator=g, dtype=torch.float64) < 0.6)
        target = torch.randn(T, B, model.hidden_size, dtype=torch.float64, generator=g)
        loss = lambda y, t: ((y - target[t]) ** 2).sum()  # noqa: E731
        ge = evrtrl.gradients(model, x, loss, method="event")
        gd = evrtrl.gradients(model, x, loss, method="dense")
        gb = evrtrl.gradients(model, x, loss, method="bptt")
        e_d, e_b = rel_err(ge, gd), rel_err(ge, gb)
        beta = ge.stats.summary()["beta"]
        nz = sum(float(v.abs().sum()) for v in gb.values()) > 0
        good = e_d <= 1e-12 and e_b <= 1e-10 and nz
        ok &= good
        print(f"{'ok ' if good else 'BAD'} {name:45s} event-dense {e_d:.1e}  event-bptt {e_b:.1e}"
              f"  beta {beta:.2f}")
    print("ALL EXACT" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
