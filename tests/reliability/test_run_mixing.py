"""Runs that cannot mix (issue 12): run ids, no silent reuse of --out, the run lock, orphaned
temp files, option changes on resume, the previous checkpoint, and a failing rank."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from evrtrl.cli import main
from evrtrl.errors import ConfigError, RunError
from evrtrl.training import TrainConfig, train
from evrtrl.training.checkpoint import load_checkpoint
from evrtrl.training.rundir import RunLock


def _cfg(**kw):
    base = dict(data="synthetic:rotation,n=12", hidden=4, batch=6, epochs=1, eval_each_epoch=False,
                dtype="float64", k=6)
    base.update(kw)
    return TrainConfig(**base)


class _Killed(Exception):
    pass


def _kill_at(n):
    def cb(rec):
        if rec["global_batch"] == n:
            raise _Killed

    return cb


def test_run_id_is_shared_and_a_fresh_run_refuses_a_used_directory(tmp_path):
    a = train(_cfg(), tmp_path / "r", progress=False)
    cfg_json = json.loads((tmp_path / "r" / "config.json").read_text())
    assert len(a.run_id) == 32 and cfg_json["run_id"] == a.run_id
    assert load_checkpoint(tmp_path / "r" / "checkpoint.h5").extra["run_id"] == a.run_id
    with pytest.raises(RunError, match="not empty.*--resume.*--overwrite"):
        train(_cfg(seed=1), tmp_path / "r", progress=False)
    b = train(_cfg(seed=1), tmp_path / "r", progress=False, overwrite=True)
    assert b.run_id != a.run_id
    assert load_checkpoint(tmp_path / "r" / "checkpoint.h5").extra["run_id"] == b.run_id


def test_the_issues_mix_cannot_happen(tmp_path):
    """Issue 12: a new run in a directory holding an older checkpoint, killed before its own
    first checkpoint, was resumed from the OLD model under the NEW config.json (rc 0)."""
    old = train(_cfg(seed=0), tmp_path / "r", progress=False)
    # the mixed directory as 0.2.0 left it: new config.json, old checkpoint
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "r", mixed)
    cfg_json = json.loads((mixed / "config.json").read_text())
    (mixed / "config.json").write_text(json.dumps({**cfg_json, "seed": 5, "run_id": "f" * 32}))
    with pytest.raises(RunError, match="mixes two runs"):
        train(_cfg(seed=5), mixed, resume=True, progress=False)
    # today: the new run needs --overwrite, which removes the old run's files first
    with pytest.raises(_Killed):
        train(_cfg(seed=5, epochs=2), tmp_path / "r", overwrite=True, progress=False, callbacks=[_kill_at(1)])
    assert not (tmp_path / "r" / "checkpoint.h5").exists()
    res = train(_cfg(seed=5, epochs=2), tmp_path / "r", resume=True, progress=False)
    assert any("no checkpoint yet" in n for n in res.notes)
    fresh = train(_cfg(seed=5, epochs=2), tmp_path / "fresh", progress=False)
    assert torch.equal(res.model.U_u, fresh.model.U_u) and not torch.equal(res.model.U_u, old.model.U_u)


def test_two_trainings_into_one_directory_the_second_is_refused(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    with RunLock(run):  # another training holds the directory
        with pytest.raises(RunError, match=r"in use by pid \d+"):
            train(_cfg(), run, progress=False)
        with pytest.raises(RunError, match="in use"):
            train(_cfg(), run, resume=True, progress=False)
    train(_cfg(), run, progress=False)  # released: fine


def test_orphaned_temp_files_are_removed(tmp_path):
    run = tmp_path / "r"
    with pytest.raises(_Killed):
        train(_cfg(epochs=2, checkpoint_every=1), run, progress=False, callbacks=[_kill_at(2)])
    orphan = run / ".checkpoint.h5.k9x_2abc.tmp"  # what a SIGKILL inside atomic_write leaves
    orphan.write_bytes(b"half a checkpoint")
    keep = run / "notes.tmp"  # not ours: kept
    keep.write_text("x")
    train(_cfg(epochs=2, checkpoint_every=1), run, resume=True, progress=False)
    assert not orphan.exists() and keep.exists()


def test_changed_options_on_resume_are_refused_or_stated(tmp_path, capsys):
    run = tmp_path / "r"
    with pytest.raises(_Killed):
        train(_cfg(epochs=2), run, progress=False, callbacks=[_kill_at(2)])
    with pytest.raises(ConfigError, match=r"lr 0\.5 \(stored 0\.01\)"):
        train(_cfg(epochs=2, lr=0.5), run, resume=True, progress=False)
    # the CLI: options not given take the stored values; a given one that differs is refused
    assert main(["train", "--out", str(run), "--resume", "--hidden", "9", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hidden 9 (stored 4)" in err
    assert main(["train", "--out", str(run), "--resume", "--epochs", "3", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "note: resume: epochs changed from 2 to 3" in err
    assert [json.loads(l)["epoch"] for l in (run / "epochs.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert "epoch 3/3:" in out  # a line per epoch without a progress bar


def test_unreadable_checkpoint_resumes_from_the_previous_one(tmp_path):
    run = tmp_path / "r"
    with pytest.raises(_Killed):
        train(_cfg(epochs=2, checkpoint_every=1), run, progress=False, callbacks=[_kill_at(3)])
    assert load_checkpoint(run / "checkpoint.h5").counters["global_batch"] == 3
    assert load_checkpoint(run / "checkpoint.prev.h5").counters["global_batch"] == 2
    raw = bytearray((run / "checkpoint.h5").read_bytes())
    raw[-100:] = bytes(b ^ 0xFF for b in raw[-100:])
    (run / "checkpoint.h5").write_bytes(raw)
    res = train(_cfg(epochs=2, checkpoint_every=1), run, resume=True, progress=False)
    assert any("checkpoint.h5 is unreadable" in n and "checkpoint.prev.h5" in n for n in res.notes)
    full = train(_cfg(epochs=2, checkpoint_every=1), tmp_path / "full", progress=False)
    assert torch.equal(res.model.U_u, full.model.U_u)


_RANK1 = textwrap.dedent("""
    import sys, time, torch
    from evrtrl.training import TrainConfig, train
    from evrtrl.training import distributed as ddp
    torch.set_num_threads(1)
    ddp.init_from_env()
    def cb(rec):
        if rec["global_batch"] == 2:
            raise RuntimeError("rank 1 breaks down")
    cfg = TrainConfig(data="synthetic:rotation,n=48", hidden=4, batch=4, epochs=3, eval_each_epoch=False)
    try:
        train(cfg, sys.argv[1], progress=False, callbacks=[cb])
    except Exception as e:
        print(type(e).__name__, e, flush=True)
        time.sleep(600)  # the failed process lives on (a notebook, a driver script)
""")


def test_a_failing_rank_stops_the_others(tmp_path):
    """Rank 1 raises and its process lives on: rank 0 (`evrtrl train` under torchrun's
    environment) must stop with one error line at once instead of waiting in its next
    all-reduce (before: until the 30-minute gloo time-out)."""
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "EVRTRL_DIST_TIMEOUT_S": "300"}
    run = tmp_path / "r"
    rank0 = [sys.executable, "-m", "evrtrl.training.cli", "train", "--data", "synthetic:rotation,n=48",
             "--hidden", "4", "--batch", "4", "--epochs", "3", "--no-eval", "--no-progress", "--out", str(run)]
    procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for r, cmd in ((0, rank0), (1, [sys.executable, "-c", _RANK1, str(run)]))]
    try:
        out0, err0 = procs[0].communicate(timeout=240)
        procs[1].kill()
        out1 = procs[1].communicate()[0]
    finally:
        for p in procs:
            p.kill()
    assert "rank 1 breaks down" in out1
    assert procs[0].returncode == 2, (out0, err0)
    lines = [l for l in err0.splitlines() if "Warning" not in l and l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: rank 0: rank 1 of the distributed run failed"), err0
