"""CLI frictions of issue 12: thread default, per-epoch lines without a progress bar, no NaN
metrics for BPTT (and figures that are not empty), --device."""
from __future__ import annotations

import csv
import json
import math
import re

import pytest
import torch

from evrtrl.cli import main

DATA = "synthetic:spikes,n=16,d=6,classes=2,T=8"


def _train(tmp_path, *extra):
    return ["train", "--data", DATA, "--hidden", "4", "--batch", "8", "--epochs", "2",
            "--out", str(tmp_path / "run"), *extra]


def test_train_uses_one_thread_unless_told(tmp_path, capsys):
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main(_train(tmp_path, "--no-progress", "--epochs", "1")) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)


def test_no_progress_prints_a_line_per_epoch(tmp_path, capsys):
    assert main(_train(tmp_path, "--no-progress")) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("epoch 1/2: loss ") and out[1].startswith("epoch 2/2: loss ")
    assert "test_acc" in out[1] and "saving" in out[1]
    assert json.loads(out[-1])["epochs"] == 2


def test_bptt_logs_no_nan_and_draws_no_empty_figures(tmp_path, capsys):
    assert main(_train(tmp_path, "--no-progress", "--method", "bptt")) == 0
    out = capsys.readouterr().out
    assert not re.search(r"\bnan\b", out, re.I), out
    run = tmp_path / "run"
    for name in ("batches.jsonl", "epochs.jsonl"):
        text = (run / name).read_text()
        assert "NaN" not in text, name  # json.dumps(nan) writes NaN, which is not JSON
        for line in text.splitlines():
            rec = json.loads(line)
            # no RTRL engine: no beta, no influence; saving compares BPTT's own counted multiply-adds
            assert rec["beta"] is None and rec["m_density"] is None and rec["gamma"] is None
            assert rec["saving"] is not None and rec["saving"] > 0
            assert rec["alpha"] is not None and 0 <= rec["alpha"] <= 1
    with open(run / "batches.csv", newline="") as f:
        for row in csv.DictReader(f):
            assert all(v.lower() != "nan" for v in row.values()), row
    assert main(["plot", str(run)]) == 0
    pngs = sorted(p.name for p in (run / "figures").glob("*.png"))
    assert pngs == ["activity.png", "curves.png", "raster.png"]  # no influence matrix in BPTT


def test_device_option(tmp_path, capsys):
    assert main(_train(tmp_path, "--no-progress", "--device", "cpu", "--epochs", "1")) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["device"] == "cpu"
    rc = main(_train(tmp_path, "--no-progress", "--device", "nonsense", "--overwrite"))
    assert rc == 2 and "--device 'nonsense'" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_device_matches_cpu(tmp_path, capsys):  # pragma: no cover - runs where a GPU is lent
    for dev in ("cpu", "cuda"):
        assert main(["train", "--data", DATA, "--hidden", "4", "--batch", "8", "--epochs", "1", "--dtype", "float64",
                     "--no-progress", "--device", dev, "--out", str(tmp_path / dev)]) == 0
    a = [json.loads(l)["loss"] for l in (tmp_path / "cpu" / "batches.jsonl").read_text().splitlines()]
    b = [json.loads(l)["loss"] for l in (tmp_path / "cuda" / "batches.jsonl").read_text().splitlines()]
    assert all(math.isclose(x, y, rel_tol=1e-9) for x, y in zip(a, b))
