"""Saccade digits in the N-MNIST format: scikit-learn's ``load_digits`` images seen by an event-camera model.

Pipeline per image (all seeded, deterministic):

1. The 8x8 image (values 0..16) is scaled to [0, 1], up-sampled to 28x28
   (bilinear) and centred on a 34x34 canvas (as N-MNIST centres 28x28 MNIST).
2. Three saccades of ``saccade_us`` (default 100 ms) each move the image along
   a triangle, like the pan-tilt motion used to record N-MNIST (Orchard et al.
   2015): ``A=(-r, r) -> B=(r, r) -> C=(0, -r) -> A`` pixels (``r = amplitude``).
   Frames are rendered every ``frame_us`` by sub-pixel bilinear shifts.
3. Event-camera model per pixel: log intensity ``L = log(I + eps)``; a pixel
   emits ``floor(|L - L_ref| / C)`` events of the sign of the change when
   ``|L - L_ref| >= C`` and moves ``L_ref`` by that many thresholds. ``C`` has a
   per-pixel mismatch (normal, ``threshold_sigma``). A pixel that fired ignores
   changes for ``refractory_us``. Timestamps are jittered uniformly inside the
   frame. Background noise: Poisson events at ``noise_hz`` per pixel with random
   polarity.
4. Events are written with :func:`evrtrl.datasets.nmnist.write_nmnist` into
   ``Train/<digit>/<id>.bin`` and ``Test/<digit>/<id>.bin`` and read back by
   :class:`datasets.NMNIST`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evrtrl.errors import ConfigError
from evrtrl.extras import require
from ..events import camera_events
from ..nmnist import write_nmnist

__all__ = ["EventCamera", "build_saccades", "saccade_events"]

SIZE = 34


@dataclass(frozen=True)
class EventCamera:
    """Parameters of the event-camera model (see the module docstring)."""

    threshold: float = 0.4
    threshold_sigma: float = 0.04
    refractory_us: int = 1000
    noise_hz: float = 0.5
    eps: float = 0.05
    frame_us: int = 1000
    saccade_us: int = 100_000
    amplitude: float = 2.5

    def __post_init__(self) -> None:
        if self.threshold <= 0 or self.frame_us <= 0 or self.saccade_us < self.frame_us or self.eps <= 0:
            raise ConfigError("EventCamera needs threshold > 0, eps > 0, 0 < frame_us <= saccade_us")


def _canvas(image8: np.ndarray) -> np.ndarray:
    zoom = require("scipy.ndimage", "the saccade builder").zoom

    img = np.clip(np.asarray(image8, dtype=np.float64) / 16.0, 0.0, 1.0)
    up = np.clip(zoom(img, 28 / img.shape[0], order=1), 0.0, 1.0)
    canvas = np.zeros((SIZE, SIZE))
    o = (SIZE - up.shape[0]) // 2
    canvas[o:o + up.shape[0], o:o + up.shape[1]] = up
    return canvas


def saccade_events(image8: np.ndarray, camera: EventCamera = EventCamera(), seed: int = 0) -> np.ndarray:
    """Camera events of one 8x8 digit image moved through three saccades (34x34 sensor)."""
    shift = require("scipy.ndimage", "the saccade builder").shift

    rng = np.random.default_rng(seed)
    canvas = _canvas(image8)
    r = camera.amplitude
    verts = np.array([[-r, r], [r, r], [0.0, -r], [-r, r]])  # (dx, dy)
    n_per = camera.saccade_us // camera.frame_us
    thr = np.maximum(camera.threshold + camera.threshold_sigma * rng.standard_normal((SIZE, SIZE)),
                     0.5 * camera.threshold)
    l_ref = None
    free_at = np.zeros((SIZE, SIZE), dtype=np.int64)
    ts, xs, ys, ps = [], [], [], []
    for s in range(3):
        for j in range(n_per + (1 if s == 0 else 0)):
            if s == 0:
                frac, k = j / n_per, j
            else:
                frac, k = (j + 1) / n_per, s * n_per + j + 1
            dx, dy = verts[s] + frac * (verts[s + 1] - verts[s])
            frame = shift(canvas, (dy, dx), order=1, mode="constant", cval=0.0)
            logi = np.log(frame + camera.eps)
            t_frame = k * camera.frame_us
            if l_ref is None:
                l_ref = logi.copy()
                continue
            diff = logi - l_ref
            n = np.floor(np.abs(diff) / thr).astype(np.int64)
            active = (n > 0) & (free_at <= t_frame)
            if active.any():
                yy, xx = np.nonzero(active)
                cnt = n[yy, xx]
                sign = np.sign(diff[yy, xx])
                l_ref[yy, xx] += sign * cnt * thr[yy, xx]
                free_at[yy, xx] = t_frame + camera.refractory_us
                rep = np.repeat(np.arange(yy.size), cnt)
                ts.append(t_frame - camera.frame_us + rng.integers(0, camera.frame_us, rep.size))
                xs.append(xx[rep])
                ys.append(yy[rep])
                ps.append((sign[rep] > 0).astype(np.int8))
    duration = 3 * camera.saccade_us
    n_noise = rng.poisson(camera.noise_hz * duration * 1e-6 * SIZE * SIZE)
    ts.append(rng.integers(0, duration, n_noise))
    xs.append(rng.integers(0, SIZE, n_noise))
    ys.append(rng.integers(0, SIZE, n_noise))
    ps.append(rng.integers(0, 2, n_noise).astype(np.int8))
    return camera_events(np.concatenate(ts), np.concatenate(xs), np.concatenate(ys), np.concatenate(ps))


def _render(args):
    image, camera, seed, path = args
    write_nmnist(path, saccade_events(image, camera, seed))
    return path


def build_saccades(
    out: str | os.PathLike,
    per_class: int = 100,
    test_per_class: int | None = None,
    seed: int = 0,
    camera: EventCamera = EventCamera(),
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Write an N-MNIST-layout folder of saccade digits under ``out``.

    Parameters
    ----------
    out : path-like
        Output folder (readable with ``datasets.NMNIST(out)``).
    per_class : int
        Training samples per digit (``load_digits`` has about 180 per digit; the
        first 80 % of each digit's images are training images, the rest test
        images; images are reused with new seeds when more samples are asked).
    test_per_class : int, optional
        Test samples per digit (default ``max(1, per_class // 5)``).
    seed : int
        Seed of the camera noise and mismatch.
    camera : EventCamera
        Camera model.
    workers : int, optional
        Worker processes (default: number of CPUs).
    progress : bool
        Show a tqdm progress bar.
    """
    from multiprocessing import get_context

    load_digits = require("sklearn.datasets", "the saccade builder").load_digits
    from tqdm import tqdm

    if per_class < 1:
        raise ConfigError(f"build_saccades(per_class={per_class}); expected >= 1")
    digits = load_digits()
    out = Path(out)
    n_test = test_per_class if test_per_class is not None else max(1, per_class // 5)
    jobs = []
    for d in range(10):
        idx = np.flatnonzero(digits.target == d)
        cut = int(0.8 * idx.size)
        for split, pool_idx, n in (("Train", idx[:cut], per_class), ("Test", idx[cut:], n_test)):
            for i in range(n):
                img = digits.images[pool_idx[i % pool_idx.size]]
                sample_seed = int(np.random.SeedSequence([seed, d, split == "Test", i]).generate_state(1)[0])
                jobs.append((img, camera, sample_seed, out / split / str(d) / f"{i:05d}.bin"))
    nproc = workers or os.cpu_count() or 1
    if nproc > 1:
        with get_context("spawn").Pool(nproc) as pool:
            list(tqdm(pool.imap(_render, jobs, chunksize=8), total=len(jobs), desc="saccades",
                      disable=not progress))
    else:
        for j in tqdm(jobs, desc="saccades", disable=not progress):
            _render(j)
    return {"train": out / "Train", "test": out / "Test"}
