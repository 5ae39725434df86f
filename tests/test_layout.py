"""DESIGN.md section 1: one installed namespace, imports pointing one way."""
from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("evrtrl", "models", "datasets", "neuromorphic", "benchmarks")
BARE = {"models", "datasets", "neuromorphic", "benchmarks"}


def _python_files():
    for folder in (*FOLDERS, "tests", "examples", "scripts"):
        yield from sorted((ROOT / folder).rglob("*.py")) if (ROOT / folder).is_dir() else ()


def test_no_bare_imports_of_the_folders():
    """`models`, `datasets`, ... are installed as evrtrl.models, ...: importing them bare would
    load a second copy (or another distribution's package of that name)."""
    bad = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            bad += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names
                    if n.split(".")[0] in BARE]
    assert bad == [], "bare imports (use evrtrl.<package>):\n" + "\n".join(bad)


def test_every_package_folder_is_installed():
    """Each folder with an __init__.py is listed in pyproject's packages under its evrtrl.* name."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    folder_of = {v: k for k, v in cfg["package-dir"].items()}
    assert set(folder_of) == set(FOLDERS)
    found = set()
    for folder in FOLDERS:
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((folder_of[folder], *rel)))
    assert found == listed


def test_bare_import_is_refused_from_the_repository_root():
    """Where the working directory is on sys.path a bare `import models` finds the folder: the
    package refuses to load as a second copy and names the right import."""
    out = subprocess.run([sys.executable, "-c", "import models"], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode != 0 and "import evrtrl.models" in out.stderr


def _loaded_after(statement: str) -> set[str]:
    code = (f"import sys; {statement}; "
            "print(' '.join(m for m in ('evrtrl.models', 'evrtrl.datasets', 'evrtrl.neuromorphic')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    return set(out.stdout.split())


def test_core_imports_no_other_package():
    assert _loaded_after("import evrtrl, evrtrl.checkpoint, evrtrl.testing") == set()


def test_models_and_datasets_do_not_import_neuromorphic():
    assert "evrtrl.neuromorphic" not in _loaded_after("import evrtrl.models, evrtrl.datasets")
    assert "evrtrl.models" not in _loaded_after("import evrtrl.datasets")
