r"""The rotation-direction task of the 2303.05641 code (embedded; no download).

A 2-D trajectory spirals towards the origin, clockwise or anticlockwise:

.. math::

    x_1(t) = \pm \frac{\sin(t + \varphi)}{1 + t}, \qquad
    x_2(t) = \frac{\cos(t + \varphi)}{1 + t}, \qquad t = 0, \dots, 16,

with a random phase :math:`\varphi`. The class is the direction (0: +, 1: -).
"""
from __future__ import annotations

import numpy as np

__all__ = ["rotation_task"]


def rotation_task(
    n: int, *, steps: int = 17, seed: int = 0, noise: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sequences ``(steps, n, 2)`` (float32) and their labels ``(n,)`` (int64)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    phi = rng.uniform(0.0, 2 * np.pi, size=n)
    t = np.arange(steps, dtype=np.float64)[:, None]
    sign = np.where(labels == 0, 1.0, -1.0)[None, :]
    x1 = sign * np.sin(t + phi) / (1 + t)
    x2 = np.cos(t + phi) / (1 + t)
    x = np.stack([x1, x2], axis=-1)
    if noise:
        x = x + noise * rng.standard_normal(x.shape)
    return x.astype(np.float32), labels.astype(np.int64)
