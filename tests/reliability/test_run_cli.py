"""The CLI error contract (issue 12): every bad input is one `error: ...` line on stderr and exit
status 2, never a traceback. One test per probe of the issue; each failed on the code before."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from evrtrl.models import EGRU, Readout
from evrtrl.models.modelfile import save_model

from cli_probe import SYN, one_error_line, run_cli, train_args



@pytest.fixture
def model_file(tmp_path):
    m = EGRU(2, 3, theta_init=0.1, generator=torch.Generator().manual_seed(0))
    return save_model(m, tmp_path / "m.h5", readout=Readout(3, 2), data=SYN, loss_mode="mean")


@pytest.fixture
def shd_file(tmp_path):
    from evrtrl.datasets import audio_events, write_shd

    rng = np.random.default_rng(0)
    samples = [audio_events(np.sort(rng.integers(0, 50_000, 40)), rng.integers(0, 700, 40)) for _ in range(4)]
    return write_shd(tmp_path / "shd_train.h5", samples, [0, 1, 0, 1], ["a", "b"]) or tmp_path / "shd_train.h5"


@pytest.fixture
def nmnist_dir(tmp_path):
    from evrtrl.datasets import camera_events, write_nmnist

    rng = np.random.default_rng(0)
    for c in ("0", "1"):
        (tmp_path / "nm" / c).mkdir(parents=True)
        ev = camera_events(np.arange(30) * 1000, rng.integers(0, 34, 30), rng.integers(0, 34, 30),
                           rng.integers(0, 2, 30))
        write_nmnist(tmp_path / "nm" / c / "00001.bin", ev)
    return tmp_path / "nm"


# ------------------------------------------------------------------------ train arguments
@pytest.mark.parametrize("extra, needle", [
    (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--gamma", "inf"], "--gamma"),
    (["--threads", "-2"], "--threads"), (["--threads", "0"], "--threads"),
    (["--max-batches", "-1"], "--max-batches"), (["--checkpoint-every", "-1"], "--checkpoint-every"),
])
def test_bad_train_numbers(tmp_path, capsys, extra, needle):
    one_error_line(*run_cli(train_args(tmp_path, *extra), capsys), needle)


@pytest.mark.parametrize("spec, needle", [
    ("synthetic:rotation,T=0", "T=0"), ("synthetic:rotation,n=0", "n=0"),
    ("synthetic:rotation,foo=1", "unknown key(s) ['foo']"),
])
def test_bad_synthetic_data_spec(tmp_path, capsys, spec, needle):
    argv = train_args(tmp_path)
    argv[argv.index(SYN)] = spec
    one_error_line(*run_cli(argv, capsys), needle)


def test_nmnist_duration_zero(tmp_path, capsys, nmnist_dir):
    argv = ["train", "--data", f"nmnist:{nmnist_dir},duration_ms=0", "--no-progress", "--out", tmp_path / "r"]
    one_error_line(*run_cli(argv, capsys), "duration_ms=0")


def test_shd_factor_zero(tmp_path, capsys, shd_file):
    argv = ["train", "--data", f"shd:{shd_file},factor=0", "--no-progress", "--no-eval", "--out", tmp_path / "r"]
    one_error_line(*run_cli(argv, capsys), "factor=0")


def test_single_h5_is_not_both_train_and_test_set(tmp_path, capsys, shd_file):
    argv = ["train", "--data", f"shd:{shd_file},duration_ms=50", "--no-progress", "--out", tmp_path / "r"]
    one_error_line(*run_cli(argv, capsys), "both the train and the test")


def test_ignored_dt_us_is_refused(tmp_path, capsys):
    one_error_line(*run_cli(train_args(tmp_path, "--dt-us", "1000"), capsys), "--dt-us has no effect")


def test_file_named_out(tmp_path, capsys):
    (tmp_path / "run").write_text("not a directory")
    one_error_line(*run_cli(train_args(tmp_path), capsys), "is a file")


def test_read_only_out(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    if os.geteuid() == 0:  # root ignores the mode: make creating anything below it fail as it would
        real = os.mkdir

        def mkdir(path, *a, **k):
            if str(path).startswith(str(ro)):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real(path, *a, **k)

        monkeypatch.setattr(os, "mkdir", mkdir)
    try:
        argv = train_args(tmp_path)
        argv[-1] = ro / "run"
        one_error_line(*run_cli(argv, capsys), "Permission denied", str(ro))
    finally:
        os.chmod(ro, 0o755)


def test_full_disk(tmp_path, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    one_error_line(*run_cli(train_args(tmp_path), capsys), "No space left on device")
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_missing_optional_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    one_error_line(*run_cli(["plot", tmp_path], capsys), "needs matplotlib, which is not installed", "pip install 'evrtrl[data]'")


# ------------------------------------------------------------------------ evaluate / export
def test_evaluate_batch_zero(capsys, model_file):
    one_error_line(*run_cli(["evaluate", model_file, "--batch", "0"], capsys), "--batch")


def test_export_missing_model(tmp_path, capsys):
    one_error_line(*run_cli(["export", tmp_path / "absent.h5", "-o", tmp_path / "b.h5"], capsys), "absent.h5")


def test_export_corrupt_model(tmp_path, capsys, model_file):
    raw = bytearray(model_file.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 35] = bytes(b ^ 0xFF for b in raw[mid:mid + 35])
    model_file.write_bytes(raw)
    one_error_line(*run_cli(["export", model_file, "-o", tmp_path / "b.h5"], capsys), "content hash", "m.h5")
    model_file.write_bytes(b"garbage" * 100)
    one_error_line(*run_cli(["export", model_file, "-o", tmp_path / "b.h5"], capsys), "m.h5")


def test_export_onto_a_directory(tmp_path, capsys, model_file):
    (tmp_path / "outdir").mkdir()
    one_error_line(*run_cli(["export", model_file, "-o", tmp_path / "outdir"], capsys), "is a directory")


# ------------------------------------------------------------------------ the process level
def test_entry_point_prints_one_line_and_exits_2(tmp_path):
    """As a user sees it: `python -m evrtrl train --lr nan` (a traceback and rc 1 before)."""
    out = subprocess.run([sys.executable, "-m", "evrtrl", "train", "--data", SYN, "--lr", "nan", "--out",
                          str(tmp_path / "r")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and out.stderr.startswith("error: "), out.stderr
    assert "Traceback" not in out.stderr
