"""The mutation fuzzer at a small count (CI), and the classes it reports (docs/reliability.md)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from evrtrl.benchmarks import fuzz as fz
from evrtrl.errors import FormatError


def test_every_reader_keeps_the_contract_on_a_few_mutants():
    """3 seeded mutants per format (all ten): 0 hangs, 0 crashes, 0 exceptions other than the library's own.
    Seeds include ../shared/data's real files where present, else the library's writers' output."""
    results = fz.fuzz(count=3, seed=12, timeout_s=60)
    # all ten formats; the sealed ones (checkpoint, model, bundle) also as re-sealed mutants
    assert [r.name for r in results if not r.name.endswith("+rehash")] == [f.name for f in fz.FORMATS]
    assert [r.name for r in results if r.name.endswith("+rehash")] == [
        "checkpoint+rehash", "model+rehash", "bundle+rehash"]
    for r in results:
        assert r.n == 3
        assert (r.counts["foreign"], r.counts["crash"], r.counts["hang"]) == (0, 0, 0), (r.name, r.examples)


# ------------------------------------------------------------ the classifier itself can see failures
def _one_seed(out: Path, shared) -> list[Path]:
    (out / "s.txt").write_bytes(b"seed file 0123456789" * 4)
    return [out / "s.txt"]


def _read_by_name(path: Path) -> None:
    """ok for seeds and rehashed files; mutant m<i> behaves by i % 4: FormatError, KeyError, hang, abort."""
    if path.read_bytes().startswith(b"seed file") and not path.name.startswith("m") or \
            path.read_bytes() == b"seed file rehashed":
        return
    kind = int(path.stem.lstrip("m").rstrip("r")) % 4
    if kind == 0:
        raise FormatError(f"{path}: bad")
    if kind == 1:
        raise KeyError("leaked")
    if kind == 2:
        time.sleep(30)
    os.abort()


def _rehash(path: Path) -> None:
    path.write_bytes(b"seed file rehashed")


@pytest.mark.slow  # three worker restarts (~20 s)
def test_classes_hang_crash_foreign_and_rehash_rows():
    fmt = fz.Format("toy", ".txt", _one_seed, _read_by_name, rehash=_rehash)
    res = fz.fuzz(count=4, seed=0, formats=(fmt,), timeout_s=3, memory_gb=None)
    plain, rehashed = res
    assert (plain.name, rehashed.name) == ("toy", "toy+rehash")
    assert rehashed.counts["ok"] == 4  # the rehash ran before the read
    assert plain.counts == {"ok": 0, "format": 1, "own": 0, "foreign": 1, "crash": 1, "hang": 1}
    assert any(e.startswith("hang") for e in plain.examples)


def test_mutations_are_seeded():
    import numpy as np

    data = bytes(range(256)) * 4
    a = [fz.mutate(data, np.random.default_rng([1, 0, i])) for i in range(20)]
    b = [fz.mutate(data, np.random.default_rng([1, 0, i])) for i in range(20)]
    assert a == b and len({m for m, _ in a}) > 15


def test_one_registration_adds_a_format():
    extra = fz.Format("toy", ".txt", _one_seed, _read_by_name)
    formats = fz.register(fz.FORMATS, extra)
    assert formats[-1] is extra and formats[:-1] == fz.FORMATS
    with pytest.raises(ValueError, match="duplicate"):
        fz.register(formats, extra)
