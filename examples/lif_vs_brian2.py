"""LIF validated against Brian2 (and Norse): the same spikes, step for step.

    python examples/lif_vs_brian2.py            # recurrent LIF, 1 s of input spikes
    python examples/lif_vs_brian2.py --quick    # 0.1 s, for CI

``LIF(integration="exact")`` follows Brian2's ``method='exact'`` and default schedule; the
script builds a recurrent LIF layer, runs it in evrtrl and in Brian2 on the same Poisson
input and asserts identical rasters (same step labels) and end-of-step ``v``, ``i`` within
1e-9 (:func:`evrtrl.validation.testing.assert_matches_brian2`). With Norse installed it
does the same for ``integration="euler"`` against Norse's ``LIFRecurrentCell``. The same
assertions are available for one's own models and tests (docs/validation.md).

Needs Brian2 (``pip install 'evrtrl[sim]'``); Norse is optional
(``pip install --no-deps norse==1.1.0``).
"""
from __future__ import annotations

import argparse
import sys

import torch

import evrtrl
from evrtrl.errors import MissingExtraError
from evrtrl.extras import available
from evrtrl.models import LIF
from evrtrl.validation.testing import assert_matches_brian2, assert_matches_norse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="0.1 s of input instead of 1 s (CI)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    dt = 1e-3
    T = 100 if args.quick else 1000
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(T, 2, 20, generator=g) < 0.05).double()  # 50 Hz Poisson input, 2 trials

    lif = LIF(20, 30, tau_mem=20e-3, tau_syn=5e-3, dt=dt, v_th=1.0, reset="zero",
              integration="exact", recurrent=True, weight_scale=4.0, dtype=torch.float64, generator=g)
    try:
        comps = assert_matches_brian2(lif, x)
    except MissingExtraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    spikes = int(evrtrl.simulate(lif, x).spikes.sum())
    c = comps[0]
    print(f"Brian2 exact: {spikes} spikes, {c.n_mismatch} raster entries differ, "
          f"max |v| difference {c.state_max_abs.get('v', 0.0):.1e}")

    if available("norse.torch"):
        euler = LIF(20, 30, tau_mem=20e-3, tau_syn=5e-3, dt=dt, v_th=1.0, reset="zero",
                    integration="euler", recurrent=True, weight_scale=4.0, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1))
        c = assert_matches_norse(euler, x)[0]
        print(f"Norse euler: {int(c.count_a.sum())} spikes, {c.n_mismatch} raster entries differ")
    else:
        print("Norse is not installed: skipped (pip install --no-deps norse==1.1.0)")
    print("lif_vs_brian2: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
