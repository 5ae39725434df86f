"""Every script in examples/ runs with --quick (small sizes, seconds) and ends with '<name>: ok'.

New examples are picked up by name; one whose optional package is missing exits 2 with a
single 'error: ... is not installed: <install command>' line, and the test skips naming it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
#: fast enough for the default (quick) test run; the others run with --run-slow (CI)
QUICK = {"quickstart"}


def test_examples_exist():
    names = {p.stem for p in EXAMPLES}
    assert {"quickstart", "lif_vs_brian2", "train_event_data", "export_to_chip"} <= names


@pytest.mark.parametrize("path", [
    pytest.param(p, id=p.stem, marks=() if p.stem in QUICK else pytest.mark.slow) for p in EXAMPLES
])
def test_example_runs_quick(path, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, str(path), "--quick"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    err = r.stderr.strip().splitlines()
    if r.returncode == 2 and len(err) == 1 and "is not installed" in err[0]:
        pytest.skip(err[0])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert r.stdout.strip().splitlines()[-1] == f"{path.stem}: ok", r.stdout[-2000:]
