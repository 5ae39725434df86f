"""Static type check of the public API: mypy over the modules listed in pyproject's [tool.mypy]."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_public_api_type_checks(tmp_path):
    pytest.importorskip("mypy", reason="needs mypy, the 'test' extra: pip install 'evrtrl[test]'")
    r = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache")],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "Success: no issues found" in r.stdout
