"""Optional packages: a missing one is one line naming what to install (library, CLI, validate)."""
from __future__ import annotations

import sys

import pytest
import torch

from evrtrl.cli import main
from evrtrl.errors import MissingExtraError
from evrtrl.extras import install_hint, require
from evrtrl.models import LIF, save_model


def _hide(monkeypatch, *modules):
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)  # import raises ModuleNotFoundError


def test_require_names_the_extra(monkeypatch):
    _hide(monkeypatch, "brian2", "scipy", "scipy.signal")
    with pytest.raises(MissingExtraError, match=r"^run_brian2 needs brian2, which is not installed: "
                                                 r"pip install 'evrtrl\[sim\]'$"):
        require("brian2", "run_brian2")
    with pytest.raises(MissingExtraError, match=r"evrtrl\[data\]"):
        require("scipy.signal", "the cochlea model")
    assert "--no-deps norse==1.1.0" in install_hint("norse.torch")
    assert isinstance(MissingExtraError("x"), ImportError)


def test_require_does_not_rename_a_broken_dependency(tmp_path, monkeypatch):
    (tmp_path / "evrtrl_probe_pkg.py").write_text("import evrtrl_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="evrtrl_no_such_dependency"):
        require("evrtrl_probe_pkg", "a probe")


def test_cli_prints_one_line_and_exits_2(tmp_path, monkeypatch, capsys):
    path = save_model(LIF(3, 4, tau_mem=0.02, tau_syn=0.005, dt=0.001), tmp_path / "m.h5")
    _hide(monkeypatch, "nir")
    rc = main(["export", str(path), "--format", "nir", "-o", str(tmp_path / "m.nir")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["error: NIR export/import needs nir, which is not installed: "
                               "pip install 'evrtrl[sim]'"]


def test_validate_names_what_it_skipped(monkeypatch):
    from evrtrl.validation.validate import format_table, run_validation

    _hide(monkeypatch, "brian2", "norse", "norse.torch")
    torch.manual_seed(0)
    results = run_validation(quick=True)
    skipped = {r.check: r.detail for r in results if r.passed is None}
    ran = [r for r in results if r.passed is not None]
    assert ran and all(r.passed for r in ran)  # the gradient checks still run
    assert skipped["LIF euler LIFCell"] == ("norse is not installed: pip install --no-deps norse==1.1.0 "
                                            "(its torchvision requirement would replace a CPU torch by a "
                                            "CUDA one; scripts/setup.sh does this)")
    assert "pip install 'evrtrl[sim]'" in skipped["LIF exact ff reset=zero"]
    assert skipped["drift exact vs euler dt/tau=0.05"].count("is not installed") == 2
    assert "skip: LIF exact rec reset=zero: brian2 is not installed: pip install 'evrtrl[sim]'" \
        in format_table(results)


def test_cli_plot_without_matplotlib(tmp_path, monkeypatch, capsys):
    _hide(monkeypatch, "matplotlib", "matplotlib.pyplot")
    rc = main(["plot", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["error: evrtrl plot needs matplotlib, which is not installed: "
                               "pip install 'evrtrl[data]'"]
