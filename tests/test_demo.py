"""`evrtrl demo` runs end to end and ends with the `test accuracy: NN.N%` line."""
from __future__ import annotations

import re

from evrtrl.cli import main


def test_demo_one_epoch(capsys):
    code = main(["demo", "--epochs", "1", "--quiet"])
    out = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"test accuracy: \d+\.\d%", out[-1]), out[-1]
    assert any("multiply-adds per batch: event" in line for line in out)
    acc = float(out[-1].split()[-1].rstrip("%"))
    assert (code == 0) == (acc >= 99.0)
