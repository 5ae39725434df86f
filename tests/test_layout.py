"""One installed namespace (evrtrl.*), imports pointing one way (README, Layout)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tomllib

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
    """Each folder with Python files has an __init__.py and is listed in pyproject's packages
    under its evrtrl.* name; the other listed packages are data-only ones with package-data."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    folder_of = {v: k for k, v in cfg["package-dir"].items()}
    assert set(folder_of) == set(FOLDERS)
    found, no_init = set(), []
    for folder in FOLDERS:
        for py in (ROOT / folder).rglob("*.py"):
            if "__pycache__" in py.parts:
                continue
            rel = py.parent.relative_to(ROOT / folder).parts
            found.add(".".join((folder_of[folder], *rel)))
            if not (py.parent / "__init__.py").exists():
                no_init.append(str(py.parent.relative_to(ROOT)))
    assert no_init == [], f"folders with Python files but no __init__.py (left out of the wheel): {sorted(set(no_init))}"
    assert found <= listed, f"not in pyproject packages: {sorted(found - listed)}"
    data_only = listed - found
    assert data_only <= set(cfg.get("package-data", {})), f"listed without Python files or package-data: {sorted(data_only - set(cfg.get('package-data', {})))}"


def test_bare_import_is_refused_from_the_repository_root():
    """Where the working directory is on sys.path a bare `import models` finds the folder: the
    package refuses to load as a second copy and names the right import."""
    out = subprocess.run([sys.executable, "-c", "import models"], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode != 0 and "import evrtrl.models" in out.stderr


#: folder -> installed package name
PACKAGE = {"evrtrl": "evrtrl", "models": "evrtrl.models", "datasets": "evrtrl.datasets",
           "neuromorphic": "evrtrl.neuromorphic", "benchmarks": "evrtrl.benchmarks"}
#: the wings: applications on top of everything else (each may import only itself and the floors)
WINGS = ("evrtrl.training", "evrtrl.validation", "evrtrl.benchmarks")
CLI = ("evrtrl.cli", "evrtrl.__main__")


def _floor(module: str) -> tuple[int, str]:
    """(floor, group) of an evrtrl module: 0 engine core, 1 models | datasets, 2 neuromorphic,
    3 a wing. Modules of one group may import each other; otherwise only lower floors."""
    if module in CLI:
        return 3, "cli"
    for wing in WINGS:
        if module == wing or module.startswith(wing + "."):
            return 3, wing
    for pkg, floor in (("evrtrl.models", 1), ("evrtrl.datasets", 1), ("evrtrl.neuromorphic", 2)):
        if module == pkg or module.startswith(pkg + "."):
            return floor, pkg
    return 0, "evrtrl"


def _module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = [PACKAGE[folder], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str):
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target
            # `from evrtrl import models` imports the sub-package evrtrl.models
            for a in node.names:
                yield node.lineno, f"{target}.{a.name}"


def test_import_floors():
    """The floors: engine core < models, datasets < neuromorphic < the wings (training,
    validation, benchmarks, CLI), checked on every import statement, function-local ones too."""
    known = {_module_name(p) for f in FOLDERS for p in (ROOT / f).rglob("*.py")}
    bad = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            module = _module_name(path)
            floor, group = _floor(module)
            for line, target in _imports(path, module):
                if not target.startswith("evrtrl") or target not in known:
                    continue
                t_floor, t_group = _floor(target)
                if t_group != group and t_floor >= floor:
                    bad.append(f"{path.relative_to(ROOT)}:{line}: {module} (floor {floor}) imports "
                               f"{target} (floor {t_floor})")
    assert bad == [], "imports against the floors:\n" + "\n".join(sorted(set(bad)))


def _loaded_after(statement: str) -> set[str]:
    code = (f"import sys; {statement}; "
            "print(' '.join(m for m in ('evrtrl.models', 'evrtrl.datasets', 'evrtrl.neuromorphic')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    return set(out.stdout.split())


def test_core_imports_no_other_package():
    assert _loaded_after("import evrtrl") == set()


def test_models_and_datasets_do_not_import_neuromorphic():
    assert "evrtrl.neuromorphic" not in _loaded_after("import evrtrl.models, evrtrl.datasets")
    assert "evrtrl.models" not in _loaded_after("import evrtrl.datasets")
