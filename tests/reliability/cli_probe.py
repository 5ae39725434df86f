"""Helpers of the CLI error-contract probes (tests/reliability): run ``evrtrl`` in process and
check that an error is exactly one ``error:`` line with rc 2."""
from __future__ import annotations

from evrtrl.cli import main

SYN = "synthetic:rotation,n=8"


def run_cli(argv, capsys) -> tuple[int, str]:
    """``evrtrl argv``: (return code, stderr)."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    return rc, capsys.readouterr().err


def one_error_line(rc: int, err: str, *needles: str) -> None:
    """rc 2 and one ``error:`` line containing every needle."""
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def train_args(tmp_path, *extra) -> list:
    """A small ``evrtrl train`` run into ``tmp_path/run``."""
    return ["train", "--data", SYN, "--hidden", "3", "--batch", "8", "--no-progress", "--no-eval",
            "--out", tmp_path / "run", *extra]
