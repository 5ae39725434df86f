"""Brian2 exact vs Norse euler (same tau, dt, weights, input): the documented count bound."""
from __future__ import annotations

import pytest

pytest.importorskip("brian2", reason="needs Brian2, the 'sim' extra: pip install 'evrtrl[sim]'")
pytest.importorskip("norse.torch", reason="needs Norse: pip install --no-deps norse==1.1.0 (scripts/setup.sh)")

from evrtrl.validation.validate import DRIFT_BOUND  # noqa: E402
from evrtrl.validation.drift import drift_pair  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.mark.parametrize("recurrent", [False, True], ids=["ff", "rec"])
@pytest.mark.parametrize("ratio", [0.02, 0.05, 0.1])
@pytest.mark.parametrize("seed", [0, 1])
def test_count_drift_within_documented_bound(recurrent, ratio, seed):
    row = drift_pair(ratio, recurrent=recurrent, seed=seed, duration=0.5)
    assert row.spikes_exact > 50 and row.spikes_euler > 50
    assert row.relative_count_error <= DRIFT_BOUND(ratio), row
    # the trains are the same trains, shifted: most spikes pair up within 2 steps or 2 ms
    assert max(row.matched[2], row.matched_time) >= 0.7, row


def test_drift_shrinks_with_dt():
    coarse = drift_pair(0.2, recurrent=False, seed=0, duration=0.5)
    fine = drift_pair(0.02, recurrent=False, seed=0, duration=0.5)
    assert fine.relative_count_error < coarse.relative_count_error
