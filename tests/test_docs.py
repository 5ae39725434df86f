"""The API reference builds offline from the docstrings (pdoc) with a page per module."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_api_reference_builds(tmp_path):
    pytest.importorskip("pdoc", reason="needs pdoc, the 'docs' extra: pip install 'evrtrl[docs]'")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_docs.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Warning" not in r.stderr, r.stderr[-3000:]
    pages = {
        "index.html": [],
        "evrtrl.html": ["simulate", "gradients", "relative_error", "OnlineLearner", "Engine"],
        "evrtrl/engine.html": ["run_engine", "influence_density"],
        "evrtrl/models.html": ["EGRU", "LIF", "Stack", "save_model"],
        "evrtrl/models/registry.html": ["CellSpec", "HyperParameter", "from_config"],
        "evrtrl/models/egru.html": ["egru_step", "egru_jacobian"],
        "evrtrl/models/lif.html": ["lif_coefficients", "lif_step", "lif_jacobian"],
        "evrtrl/network.html": ["forward_sequence", "Unroll"],
        "evrtrl/neuromorphic.html": ["map_to_hardware", "export_nir"],
        "evrtrl/datasets.html": [],
        "evrtrl/training/loop.html": ["TrainConfig"],
        "evrtrl/validation/testing.html": ["assert_matches_brian2"],
    }
    for page, names in pages.items():
        html = (tmp_path / page).read_text()
        for name in names:
            assert name in html, (page, name)
