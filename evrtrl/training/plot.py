"""``plot(run_dir)``: PNG figures of a run (matplotlib, Agg backend).

Writes into ``run_dir/figures/``:

* ``curves.png``    training loss and accuracy per batch, test accuracy per epoch;
* ``activity.png``  activity alpha (fraction of units with non-zero output) and beta
  (fraction in the active set K, per sequence) per batch, test-set beta at epoch
  ends, and the multiply-add saving
  ``macs_dense / macs_event`` (event engine counted, dense formula in
  :mod:`evrtrl.training.metrics`);
* ``influence.png`` influence-matrix density per batch: gamma (born fraction of the live
  columns at the end of the sequence) and the fraction of non-zero entries of the event
  engine's M tensors at the end of the sequence (not drawn for BPTT runs, which have no
  influence matrix; their activity figure shows alpha alone);
* ``raster.png``    input events and hidden spikes of the first test sample, when the
  run's data and ``model.h5`` can be opened (skipped with a note otherwise).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from evrtrl.errors import EvrtrlError
from evrtrl.extras import require
from evrtrl.training.data import open_data
from evrtrl.training.evaluate import resolve_model
from evrtrl.training.metrics import read_records

__all__ = ["plot"]


def _xs(recs: list[dict[str, Any]]) -> list[float]:
    return [r.get("global_batch", i + 1) for i, r in enumerate(recs)]


def _series(recs, key):
    out = []
    for r in recs:
        v = r.get(key)
        out.append(float("nan") if v is None else float(v))
    return out


def _has(recs, key) -> bool:
    """Whether any record holds a number for ``key`` (BPTT runs have no beta, gamma, saving)."""
    return any(v == v for v in _series(recs, key))


def plot(run_dir: str | os.PathLike, *, sample: int = 0) -> list[Path]:
    """Draw the figures of the run in ``run_dir``; returns the paths written."""
    require("matplotlib", "evrtrl plot").use("Agg", force=True)
    plt = require("matplotlib.pyplot", "evrtrl plot")

    run = Path(run_dir)
    batches, epochs = read_records(run, "batches"), read_records(run, "epochs")
    if not batches:
        raise FileNotFoundError(f"{run}: no batches.jsonl or batches.csv; is it a run directory?")
    figdir = run / "figures"
    figdir.mkdir(exist_ok=True)
    written: list[Path] = []
    x = _xs(batches)
    per_epoch = max(1, len(batches) // max(1, len(epochs))) if epochs else 1

    def save(fig, name):
        p = figdir / name
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a1.plot(x, _series(batches, "loss"), lw=1)
    a1.set_xlabel("batch")
    a1.set_ylabel("training loss (mean CE)")
    a2.plot(x, _series(batches, "acc"), lw=1, alpha=0.6, label="train (batch)")
    if epochs and any(e.get("test_acc") is not None for e in epochs):
        ex = [(e["epoch"] + 1) * per_epoch for e in epochs]
        a2.plot(ex, _series(epochs, "test_acc"), "o-", label="test (epoch end)")
    a2.set_xlabel("batch")
    a2.set_ylabel("accuracy")
    a2.set_ylim(-0.02, 1.02)
    a2.legend(loc="lower right")
    save(fig, "curves.png")

    engine = _has(batches, "saving")
    fig, axes = plt.subplots(1, 2 if engine else 1, figsize=(10 if engine else 5.5, 3.6), squeeze=False)
    a1 = axes[0][0]
    a1.plot(x, _series(batches, "alpha"), label="alpha (output non-zero)")
    if _has(batches, "beta"):
        a1.plot(x, _series(batches, "beta"), label="beta (active set K, per sequence)")
    if epochs and any(e.get("test_beta") is not None for e in epochs):
        ex = [(e["epoch"] + 1) * per_epoch for e in epochs]
        a1.plot(ex, _series(epochs, "test_beta"), "o-", label="beta on the test set")
    a1.set_xlabel("batch")
    a1.set_ylabel("fraction of units (mean over steps)")
    a1.set_ylim(0, 1.02)
    a1.legend()
    if engine:
        a2 = axes[0][1]
        a2.plot(x, _series(batches, "saving"))
        a2.set_xlabel("batch")
        a2.set_ylabel("MAC saving: dense / event")
    save(fig, "activity.png")

    if not (_has(batches, "gamma") or _has(batches, "m_density")):
        return written + _raster_or_note(run, figdir, sample, plt)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(x, _series(batches, "gamma"), label="gamma: born live columns")
    ax.plot(x, _series(batches, "m_density"), label="non-zero entries of M")
    ax.set_xlabel("batch")
    ax.set_ylabel("fraction (end of sequence)")
    ax.set_ylim(0, 1.02)
    ax.legend()
    save(fig, "influence.png")
    return written + _raster_or_note(run, figdir, sample, plt)


def _raster_or_note(run: Path, figdir: Path, sample: int, plt) -> list[Path]:
    try:
        p = _raster(run, figdir, sample, plt)
        return [p] if p is not None else []
    except (FileNotFoundError, EvrtrlError) as exc:
        (figdir / "raster.txt").write_text(f"raster skipped: {exc}\n")
        return []


def _raster(run: Path, figdir: Path, sample: int, plt) -> Path | None:
    import evrtrl

    if not (run / "model.h5").exists():
        raise FileNotFoundError(f"{run / 'model.h5'} is absent (the run has not finished an epoch)")
    model, readout, info = resolve_model(run)
    data = open_data(info["data"], "test", dt_us=info.get("dt_us"))
    x, y = data.batch([sample], readout.weight.dtype)
    res = evrtrl.simulate(model, x)
    layers = res.layers
    fig, axes = plt.subplots(1 + len(layers), 1, figsize=(8, 2.2 + 2.0 * len(layers)), sharex=True)
    inp = x[:, 0, :]
    nz = (inp != 0).nonzero()
    if inp.shape[1] <= 8 and len(nz) > 0.5 * inp.numel():  # dense real-valued input: traces
        for j in range(inp.shape[1]):
            axes[0].plot(inp[:, j].tolist(), label=f"x{j + 1}")
        axes[0].legend(loc="upper right")
    else:
        axes[0].scatter(nz[:, 0].tolist(), nz[:, 1].tolist(), s=4, marker="|")
    axes[0].set_ylabel("input")
    axes[0].set_title(f"sample {sample} of the test split, label {int(y[0])}")
    for l, tr in enumerate(layers):
        ev = (tr.spikes[:, 0, :] != 0).nonzero()
        axes[l + 1].scatter(ev[:, 0].tolist(), ev[:, 1].tolist(), s=6, marker="|", color="k")
        axes[l + 1].set_ylabel(f"layer {l} unit")
        axes[l + 1].set_ylim(-0.5, tr.spikes.shape[2] - 0.5)
    axes[-1].set_xlabel("step")
    p = figdir / "raster.png"
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p
