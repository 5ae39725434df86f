"""The wheel: builds without a setuptools warning and holds every module, the profiles and
nothing at the top level but ``evrtrl``."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_builds_without_warnings_and_holds_everything(tmp_path):
    # a copy of the sources, so that the build leaves nothing in the working tree
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            (src / f).write_bytes((ROOT / f).read_bytes())
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert "Warning" not in log and "would be ignored" not in log, log[-3000:]
    (wheel,) = (tmp_path / "dist").glob("evrtrl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.startswith("evrtrl-")} == {"evrtrl"}
    sources = [f for f in files if f.endswith(".py") and f.split("/")[0] in
               ("evrtrl", "models", "datasets", "neuromorphic", "benchmarks")]
    installed = {f if f.startswith("evrtrl/") else "evrtrl/" + f for f in sources}
    assert installed <= set(names), sorted(installed - set(names))
    assert "evrtrl/neuromorphic/profile_data/loihi2.json" in names
