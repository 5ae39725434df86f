"""DESIGN.md section 1: imports point one way; the core imports none of the other packages."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _loaded_after(statement: str) -> set[str]:
    code = (f"import sys; {statement}; "
            "print(' '.join(m for m in ('models', 'datasets', 'neuromorphic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    return set(out.stdout.split())


def test_core_imports_no_other_package():
    assert _loaded_after("import evrtrl, evrtrl.training, evrtrl.checkpoint, evrtrl.testing") == set()


def test_models_and_datasets_do_not_import_neuromorphic():
    assert "neuromorphic" not in _loaded_after("import models, datasets")
    assert "models" not in _loaded_after("import datasets")
