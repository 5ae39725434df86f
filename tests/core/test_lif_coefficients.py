"""The exact-integration coefficient b stays accurate when tau_syn ~ tau_mem (issue 12 item 8).

b = tau_syn / (tau_syn - tau_mem) (alpha - a) cancels catastrophically as the time constants
meet; the library evaluates b = a u phi1(u - w) with phi1(x) = expm1(x) / x. References: the
analytic limit (b = a dt / tau_mem at tau_syn = tau_mem) and mpmath at 60 digits.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evrtrl.models import LIF
from evrtrl.models.lif import dphi1, phi1

mpmath = pytest.importorskip("mpmath")
mpmath.mp.dps = 60


def _b_ref(dt, tm, ts):
    dt, tm, ts = mpmath.mpf(dt), mpmath.mpf(tm), mpmath.mpf(ts)
    a, al = mpmath.exp(-dt / tm), mpmath.exp(-dt / ts)
    if tm == ts:
        return a * dt / tm
    return ts / (ts - tm) * (al - a)


def _b_lib(dt, tm, ts):
    m = LIF(1, len(tm), tau_mem=tm, tau_syn=ts, dt=dt, dtype=torch.float64)
    from evrtrl.models.lif import lif_coefficients
    return lif_coefficients(m.weights(), m.p).b


def _b_textbook(dt, tm, ts):
    a, al = math.exp(-dt / tm), math.exp(-dt / ts)
    return ts / (ts - tm) * (al - a)


REL = [1e-11, -1e-11, 3e-10, 1e-8, 1e-6, 1e-4, 1e-2, 0.3, -0.5, 2.0, 10.0]


@pytest.mark.parametrize("dt", [1e-4, 1e-3])
def test_b_near_equal_time_constants(dt):
    tm = [0.02] * len(REL)
    ts = [0.02 * (1 + r) for r in REL]
    b = _b_lib(dt, tm, ts)
    for k in range(len(REL)):
        ref = _b_ref(dt, tm[k], ts[k])
        err = abs(float((mpmath.mpf(float(b[k])) - ref) / ref))
        assert err <= 4e-16, f"rel diff {REL[k]:g}: b rel err {err:.2e}"


def test_b_taus_rounded_through_float32():
    """NIR files carry float32 time constants: tau_syn = float32(tau_mem) differs by ~1e-8."""
    dt = 1e-4
    tm = [0.02, 0.005, 0.1, 0.0123]
    ts = [float(np.float32(t)) for t in tm]
    b = _b_lib(dt, tm, ts)
    for k in range(len(tm)):
        ref = _b_ref(dt, tm[k], ts[k])
        assert abs(float((mpmath.mpf(float(b[k])) - ref) / ref)) <= 4e-16
    # the textbook form is far off there: the test can fail
    worst = max(abs((_b_textbook(dt, tm[k], ts[k]) - float(_b_ref(dt, tm[k], ts[k])))
                    / float(_b_ref(dt, tm[k], ts[k]))) for k in range(len(tm)))
    assert worst > 1e-9


def test_b_equal_time_constants_is_the_analytic_limit():
    dt, tau = 1e-3, [0.02, 0.007, 0.3]
    b = _b_lib(dt, tau, tau)
    for k, t in enumerate(tau):
        assert float(b[k]) == pytest.approx(math.exp(-dt / t) * dt / t, rel=2e-16, abs=0)


def test_textbook_form_loses_digits_at_1e_11():
    """Why expm1: at a relative difference of 1e-11 the textbook b is off by ~1e-4 or worse."""
    dt, tm = 1e-4, 0.02
    ts = tm * (1 + 1e-11)
    ref = float(_b_ref(dt, tm, ts))
    assert abs(_b_textbook(dt, tm, ts) - ref) / ref > 1e-6
    assert abs(float(_b_lib(dt, [tm], [ts])[0]) - ref) / ref <= 4e-16


@pytest.mark.parametrize("x", [0.0, 1e-300, 1e-12, -3e-9, 1e-5, -0.01, 0.0999, 0.1, -0.1, 0.5, -2.0, 7.0])
def test_phi1_and_its_derivative(x):
    t = torch.tensor([x], dtype=torch.float64)
    X = mpmath.mpf(x)
    ref = mpmath.mpf(1) if x == 0 else mpmath.expm1(X) / X
    dref = mpmath.mpf(1) / 2 if x == 0 else mpmath.diff(lambda s: mpmath.expm1(s) / s, X)
    assert abs(float((mpmath.mpf(float(phi1(t)[0])) - ref) / ref)) <= 4e-16
    assert abs(float((mpmath.mpf(float(dphi1(t)[0])) - dref) / dref)) <= 5e-14
    # autograd of phi1 (what BPTT differentiates) agrees with the analytic derivative
    t.requires_grad_(True)
    (g,) = torch.autograd.grad(phi1(t).sum(), t)
    assert abs(float(g[0]) - float(dphi1(t.detach())[0])) <= 5e-14 * abs(float(dref))
