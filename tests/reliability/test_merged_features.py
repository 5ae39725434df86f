"""Issue 12's treatment of the features main gained beside it: the CLI error contract for the new
commands and options, resume rules for the new options, the memory refusal as an error line,
sealed per-neuron (format 2) model files and netx exports, the finite check with an optimizer
that sums gradients first, and the fuzzer's ten formats."""
from __future__ import annotations

import re

import pytest
import torch

from evrtrl.cli import main
from evrtrl.errors import ConfigError, FormatError, NonFiniteError
from evrtrl.h5file import SEAL_MAGIC, USERBLOCK
from evrtrl.models import LIF, Readout
from evrtrl.models.modelfile import load_model, save_model
from evrtrl.training import TrainConfig, train
from evrtrl.training.loop import SPARSE_DEFAULTS

from cli_probe import one_error_line, run_cli, train_args



@pytest.mark.parametrize("extra, needle", [
    (["--activity", "-1"], "--activity"), (["--activity", "nan"], "--activity"),
    (["--activity-target", "inf"], "--activity-target"), (["--width", "0"], "--width"),
    (["--shard-columns", "0"], "--shard-columns"), (["--shard-partition", "diagonal"], "--shard-partition"),
    (["--model", "nosuchcell"], "--model"), (["--method", "rtrl"], "--method"),
])
def test_new_train_options_keep_the_contract(tmp_path, capsys, extra, needle):
    one_error_line(*run_cli(train_args(tmp_path, *extra), capsys), needle)


def test_shard_columns_without_processes_is_one_line(tmp_path, capsys):
    one_error_line(*run_cli(train_args(tmp_path, "--shard-columns", "2"), capsys), "--shard-columns 2")


@pytest.mark.parametrize("value", ["2", "x"])
def test_data_key_sparse_is_checked(tmp_path, capsys, value):
    argv = ["train", "--data", f"nmnist:{tmp_path},sparse={value}", "--no-progress", "--out", tmp_path / "run"]
    one_error_line(*run_cli(argv, capsys), "sparse")


@pytest.mark.parametrize("argv, needle", [
    (["plan", "--hidden", "0"], "--hidden"), (["plan", "--density", "2"], "--density"),
    (["plan", "--batch", "-1"], "--batch"), (["plan", "--available", "nan"], "--available"),
    (["bench", "--threads", "0"], "--threads"), (["bench", "--fuzz", "--fuzz-count", "0"], "--fuzz-count"),
    (["bench", "--kernel", "fast"], "--kernel"), (["doctor", "--build"], "--build"),
    (["data", "build", "spoken", "--out", "x", "--workers", "0"], "--workers"),
    (["validate", "--model", "/nonexistent/m.h5"], "/nonexistent/m.h5"),
])
def test_new_commands_refuse_bad_values(capsys, argv, needle):
    one_error_line(*run_cli(argv, capsys), needle)


def test_fuzz_unknown_format_is_one_line(capsys):
    from evrtrl.benchmarks.fuzz import main as fuzz_main

    try:
        rc = fuzz_main(["--formats", "nosuch", "--count", "1"])
    except SystemExit as exc:
        rc = exc.code
    one_error_line(rc, capsys.readouterr().err, "nosuch")


def test_memory_refusal_is_an_error_line_naming_the_flag(tmp_path, capsys, monkeypatch):
    from evrtrl import memory

    monkeypatch.setattr(memory, "_meminfo_available", lambda: 1024)
    one_error_line(*run_cli(train_args(tmp_path), capsys), "--allow-memory")
    rc, err = run_cli(train_args(tmp_path, "--allow-memory", "--overwrite", "--max-batches", "1"), capsys)
    assert rc == 0, err


def test_resume_refuses_changed_sparsity_knobs_and_states_the_shard_split(tmp_path, capsys):
    run = tmp_path / "r"
    cfg = dict(data="synthetic:rotation,n=12", hidden=4, batch=6, epochs=1, eval_each_epoch=False, k=6)
    train(TrainConfig(**cfg), run, progress=False)
    egru = SPARSE_DEFAULTS["egru"]  # what the run stored for the options left None
    with pytest.raises(ConfigError, match=re.escape(f"activity 0.5 (stored {egru['activity']})")):
        train(TrainConfig(**cfg, activity=0.5), run, resume=True, progress=False)
    with pytest.raises(ConfigError, match=re.escape(f"pd_width 0.5 (stored {egru['pd_width']})")):
        train(TrainConfig(**cfg, pd_width=0.5), run, resume=True, progress=False)
    # None (the model's default) leaves the stored value; the column split may change, stated
    res = train(TrainConfig(**{**cfg, "epochs": 2}, shard_partition="contiguous"), run, resume=True,
                progress=False)
    assert any("shard_partition changed from 'strided' to 'contiguous'" in n for n in res.notes)
    assert main(["train", "--out", str(run), "--resume", "--activity-target", "0.1", "--no-progress"]) == 2
    assert f"activity_target 0.1 (stored {egru['activity_target']})" in capsys.readouterr().err


def test_per_neuron_lif_model_file_is_sealed_and_checked(tmp_path):
    g = torch.Generator().manual_seed(0)
    lif = LIF(3, 4, tau_mem=torch.tensor([0.01, 0.02, 0.03, 0.04]), tau_syn=0.005,
              v_th=torch.tensor([1.0, 0.9, 1.1, 1.2]),
              dt=1e-3, trainable=("v_th",), generator=g)
    p = save_model(lif, tmp_path / "lif.h5", readout=Readout(4, 2))
    data = bytearray(p.read_bytes())
    assert data.startswith(SEAL_MAGIC)
    back = load_model(p).model
    assert torch.equal(back.v_th.detach(), lif.v_th.detach()) and torch.equal(back.tau_mem, lif.tau_mem)
    data[USERBLOCK + len(data[USERBLOCK:]) // 2] ^= 0x10
    p.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="content hash mismatch"):
        load_model(p)


def test_netx_export_is_sealed_and_read_through_the_sealed_reader(tmp_path):
    from evrtrl.neuromorphic.chipsim import read_netx
    from evrtrl.neuromorphic.vendor_export import export_netx

    lif = LIF(3, 4, tau_mem=0.02, tau_syn=0.005, dt=1e-3, generator=torch.Generator().manual_seed(0))
    p = tmp_path / "net.h5"
    export_netx(lif, p)
    assert p.read_bytes().startswith(SEAL_MAGIC)
    assert len(read_netx(p)) == 1
    data = bytearray(p.read_bytes())
    data[-8] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="content hash mismatch"):
        read_netx(p)


def test_finite_check_runs_on_the_summed_gradients():
    """An optimizer that sums gradients first (all_reduce_gradients, as the data-parallel and the
    sharded optimizers do) is asked to do so before the check, and only once per update."""
    import evrtrl
    from evrtrl.models import EGRU
    from evrtrl.training.distributed import OptimizerWrapper

    class Summing(OptimizerWrapper):
        calls = 0

        def __init__(self, opt):
            self.optimizer = opt

        def all_reduce_gradients(self):
            if self._reduced:
                return
            self._reduced = True
            Summing.calls += 1
            for p in self.optimizer.param_groups[0]["params"]:
                if p.grad is not None:
                    p.grad = p.grad * float("nan")  # what a peer's NaN gradient does to the sum

        def step(self, closure=None):
            self.all_reduce_gradients()
            self._reduced = False
            return self.optimizer.step()

    model = EGRU(2, 3, generator=torch.Generator().manual_seed(0))
    opt = Summing(torch.optim.SGD(model.parameters(), lr=0.1))
    learner = evrtrl.OnlineLearner(model, opt, lambda y, t: y.sum(), k=2)
    with pytest.raises(NonFiniteError, match="at update 1 \\(after step t=1\\); weights not updated"):
        learner.run(torch.randn(4, 1, 2))
    assert Summing.calls == 1


def test_the_fuzzer_covers_all_ten_formats():
    from evrtrl.benchmarks.fuzz import FORMATS

    assert [f.name for f in FORMATS] == ["nmnist", "aedat2", "aedat31", "shd", "gesture_csv", "gesture_npy",
                                         "nir", "checkpoint", "model", "bundle"]
    assert all(f.rehash for f in FORMATS[-3:]) and not any(f.rehash for f in FORMATS[:-3])
