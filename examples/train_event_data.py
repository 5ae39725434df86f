"""Training on event data: an N-MNIST-format event-camera set, an EGRU, exact event RTRL.

    python examples/train_event_data.py --out runs/example     # the README table run (~5 min, 1 core)
    python examples/train_event_data.py --quick                 # tiny, for CI (seconds)

1. Writes a small saccade-digit set in the N-MNIST on-disk format (a simulated event camera
   moving over scikit-learn's 8x8 digits: ``evrtrl.datasets.offline.build_saccades``; the
   same reader opens the real N-MNIST).
2. Trains an EGRU with 20 % weight density online with the event engine
   (``evrtrl.training.train``: checkpoints, resume after a kill, CSV/JSON logs, the model file).
3. Evaluates the saved model and reloads it with ``evrtrl.models.load_model``.

The command-line equivalent is ``evrtrl data build saccades ...`` then ``evrtrl train --data
nmnist:DIR,pool=4 ...`` (README, docs/training.md). Needs the ``data`` extra
(``pip install 'evrtrl[data]'``: scipy, scikit-learn).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from evrtrl.datasets.offline.saccades import build_saccades
from evrtrl.errors import MissingExtraError
from evrtrl.models import load_model
from evrtrl.training import TrainConfig, train
from evrtrl.training.evaluate import evaluate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 samples per digit, 2 batches (CI)")
    ap.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory()
    out = Path(args.out) if args.out else Path(tmp.name) / "run"
    data_dir = out.parent / (out.name + "-data")
    per_class, test_per_class = (2, 1) if args.quick else (40, 10)
    try:
        build_saccades(data_dir, per_class=per_class, test_per_class=test_per_class, workers=1,
                       progress=False)
    except MissingExtraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"data: {10 * per_class} training and {10 * test_per_class} test recordings in {data_dir}")

    cfg = TrainConfig(
        data=f"nmnist:{data_dir},pool=4,duration_ms=300", model="egru", hidden=16 if args.quick else 64,
        density=0.2, method="event", epochs=1 if args.quick else 6, batch=8 if args.quick else 16,
        lr=5e-3, dt_us=20000, loss="mean", seed=0, max_batches=2 if args.quick else None,
    )
    result = train(cfg, out, progress=not args.quick)
    last = result.batches[-1]
    print(f"trained: {len(result.batches)} batches, loss {last['loss']:.3f}, beta {last['beta']:.2f}, "
          f"{last['saving']:.1f}x fewer multiply-adds than dense RTRL")
    acc = evaluate(out)
    model, readout = load_model(out / "model.h5")
    print(f"test accuracy {acc:.1%} ({type(model).__name__} {model.input_size} -> {model.hidden_size}, "
          f"readout {readout.out_features} classes)")
    print("train_event_data: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
