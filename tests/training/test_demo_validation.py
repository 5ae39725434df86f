"""The demo never decides anything on the test set: early stopping is off by default and, when
on, looks at a validation split carved from the training set (issue 12)."""
from __future__ import annotations

import pytest

from evrtrl.training import data as data_mod
from evrtrl.training import demo


@pytest.mark.parametrize("early_stop", [False, True])
def test_demo_decides_on_validation_never_on_test(monkeypatch, early_stop):
    real_task = data_mod.rotation_task
    sizes = {}
    calls = []

    def small_task(n, seed, **kw):  # 1024 train -> 256 (128 of them validation), 512 test -> 192
        ds = real_task(n // 4 if n == 1024 else 192, seed, **kw)
        sizes.setdefault("train" if n == 1024 else "test", len(ds))
        return ds

    def acc(model, readout, x, labels, loss="mean"):
        calls.append(x.shape[1])
        return 1.0  # "perfect" at once: an early stop would trigger at the first check

    monkeypatch.setattr(data_mod, "rotation_task", small_task)
    monkeypatch.setattr(demo, "_accuracy", acc)
    demo.run(epochs=6, hidden=4, batch=64, progress=False, early_stop=early_stop)
    *during, final = calls
    assert final == sizes["test"] == 192  # the reported figure only
    if early_stop:
        assert during == [128]  # validation split (first check after epoch 5), stopped there
    else:
        assert during == []  # all 6 epochs ran, nothing was checked
