"""Exporting to a chip: train a small LIF network, write NIR and the HDF5 bundle, and check
it against hardware profiles (quantisation, placement, parameter drift, spike agreement).

    python examples/export_to_chip.py            # ~30 s
    python examples/export_to_chip.py --quick    # seconds, for CI

1. Trains ``Stack(LIF 12 -> 24 recurrent, LIF 24 -> 4)`` for a few online updates with the
   event engine on a synthetic spike-pattern task (``evrtrl.training.data.spike_task``).
2. ``export_nir`` / ``import_nir``: NIR (CubaLIF + Linear, recurrence as a graph cycle); the
   re-imported network gives the same spikes.
3. ``map_to_hardware`` on Xylo Audio 2 and Loihi 2: does it fit, what quantisation moves,
   and how the quantised network's spikes compare with the float one's.
4. ``export_bundle``: the versioned HDF5 bundle (sparse weights, integer codes, placement),
   the format for EGRU and programmable targets.

Needs nir (``pip install 'evrtrl[sim]'``). See docs/neuromorphic.md.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

import evrtrl
from evrtrl.errors import MissingExtraError
from evrtrl.models import LIF, Readout, Stack
from evrtrl.neuromorphic import export_bundle, export_nir, import_nir, map_to_hardware, read_bundle
from evrtrl.training.data import spike_task


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer training sequences (CI)")
    ap.add_argument("--out", default=None, help="folder for model.nir and model.bundle.h5 (default: temporary)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tmp = tempfile.TemporaryDirectory()
    out = Path(args.out or tmp.name)
    out.mkdir(parents=True, exist_ok=True)

    dt = 1e-3
    kw = dict(tau_mem=20e-3, tau_syn=5e-3, dt=dt, integration="euler", weight_scale=6.0)
    net = Stack(LIF(12, 24, **kw), LIF(24, 4, recurrent=False, **kw))
    data = spike_task(16 if args.quick else 256, seed=0, T=30, d=12, classes=4)
    readout = Readout(4, 4)
    opt = torch.optim.Adam(list(net.parameters()) + list(readout.parameters()), lr=0.01)
    for lo in range(0, len(data), 8):
        x, labels = data.batch(list(range(lo, min(len(data), lo + 8))), torch.float32)
        loss = lambda y, t, labels=labels: (torch.nn.functional.cross_entropy(readout(y), labels)  # noqa: E731
                                            if t >= 15 else None)
        evrtrl.OnlineLearner(net, opt, loss, k=x.shape[0], method="event",
                             extra_parameters=readout.parameters()).run(x)
    test = spike_task(32, seed=1, T=30, d=12, classes=4)
    x, labels = test.batch(list(range(32)), torch.float32)

    def predict(spikes: torch.Tensor) -> torch.Tensor:  # the host-side readout, as in training
        with torch.no_grad():
            return readout(torch.as_tensor(spikes, dtype=torch.float32)[15:]).sum(0).argmax(-1)

    try:
        export_nir(net, out / "model.nir")
    except MissingExtraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    back = import_nir(out / "model.nir", dt=dt, dtype=torch.float32)  # NIR has no time step: given here
    same = torch.equal(evrtrl.simulate(net, x).spikes, evrtrl.simulate(back, x).spikes)
    print(f"NIR: wrote {out / 'model.nir'}; re-imported network gives the same spikes: {same}")
    assert same

    for target in ("xylo_audio2", "loihi2"):
        report = map_to_hardware(net, target, x=x, labels=labels, predict=predict)
        print(f"\n{report.summary()}")
    export_bundle(net, out / "model.bundle.h5", mapping=report)
    bundle = read_bundle(out / "model.bundle.h5")
    print(f"\nbundle: {out / 'model.bundle.h5'} (format version {bundle.version}, "
          f"{len(bundle.network.layers)} layers, mapped to {bundle.mapping['profile']})")
    print("export_to_chip: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
