"""Spoken digits in the SHD format: espeak-ng speech -> :class:`Cochlea` -> ``shd_{train,test}.h5``.

Classes follow SHD: labels 0-9 are German ``null .. neun``, 10-19 English
``zero .. nine`` (``languages=("en",)`` keeps only 10 English classes, labels 0-9).
Each utterance draws a voice variant, a speaking rate and a pitch from a
seeded generator. The train/test split is by *voice variant* (as SHD splits
by speaker): variants in :data:`TEST_VARIANTS` only appear in the test set.
Needs the ``espeak-ng`` program (Debian/Ubuntu package ``espeak-ng``).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evrtrl.errors import ConfigError
from evrtrl.extras import require
from ..hdf5 import write_shd
from .cochlea import Cochlea

__all__ = ["GERMAN", "ENGLISH", "TEST_VARIANTS", "Utterance", "build_spoken", "synthesize"]

GERMAN = ["null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"]
ENGLISH = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TRAIN_VARIANTS = ["m1", "m2", "m3", "m5", "m6", "f1", "f2", "f4"]
TEST_VARIANTS = ["m4", "m7", "f3", "f5"]
VOICES = {"de": ["de"], "en": ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp"]}


@dataclass(frozen=True)
class Utterance:
    """One synthesis request."""

    word: str
    voice: str
    speed_wpm: int
    pitch: int
    label: int
    speaker: int


def synthesize(word: str, voice: str = "en-us", speed_wpm: int = 160, pitch: int = 50) -> tuple[np.ndarray, int]:
    """Speak ``word`` with espeak-ng; returns ``(samples float64, sample_rate)``.

    Raises
    ------
    ConfigError
        If ``espeak-ng`` is not installed (apt package ``espeak-ng``).
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise ConfigError("espeak-ng not found; install the Debian/Ubuntu package 'espeak-ng'")
    sf = require("soundfile", "the spoken-digit builder")

    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "u.wav"
        subprocess.run([exe, "-v", voice, "-s", str(speed_wpm), "-p", str(pitch), "-w", str(wav), word],
                       check=True, capture_output=True)
        audio, sr = sf.read(wav, dtype="float64")
    return audio, int(sr)


def _plan(per_class: int, languages: tuple[str, ...], seed: int, test: bool) -> list[Utterance]:
    rng = np.random.default_rng([seed, int(test)])
    variants = TEST_VARIANTS if test else TRAIN_VARIANTS
    out = []
    label = 0
    for lang in ("de", "en"):
        if lang not in languages:
            continue
        words = GERMAN if lang == "de" else ENGLISH
        for word in words:
            for _ in range(per_class):
                vi = int(rng.integers(len(variants)))
                base = VOICES[lang][int(rng.integers(len(VOICES[lang])))]
                out.append(Utterance(word, f"{base}+{variants[vi]}", int(rng.integers(120, 221)),
                                     int(rng.integers(20, 81)), label, vi + (len(TRAIN_VARIANTS) if test else 0)))
            label += 1
    return out


def _render(args: tuple[Utterance, Cochlea, int]):
    utt, cochlea, seed = args
    audio, sr = synthesize(utt.word, utt.voice, utt.speed_wpm, utt.pitch)
    ev = cochlea.spikes(audio, sr, seed=seed)
    if ev.size:  # start at the first spike, as SHD samples start near speech onset
        ev = ev.copy()
        ev["t"] -= ev["t"][0]
    return ev


def build_spoken(
    out: str | os.PathLike,
    per_class: int = 20,
    test_per_class: int | None = None,
    channels: int = 700,
    seed: int = 0,
    languages: tuple[str, ...] = ("de", "en"),
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Build ``shd_train.h5`` and ``shd_test.h5`` under ``out``.

    Parameters
    ----------
    out : path-like
        Output folder (readable afterwards with ``datasets.SHD(out)``).
    per_class : int
        Training utterances per class.
    test_per_class : int, optional
        Test utterances per class (default ``max(1, per_class // 4)``).
    channels : int
        Cochlear channels (700 as SHD).
    seed : int
        Seed of every random choice.
    languages : tuple of str
        Subset of ``("de", "en")``.
    workers : int, optional
        Worker processes (default: number of CPUs).
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    dict
        ``{"train": path, "test": path}``.
    """
    if per_class < 1 or channels < 1 or not set(languages) <= {"de", "en"} or not languages:
        raise ConfigError(f"build_spoken(per_class={per_class}, channels={channels}, languages={languages}); "
                          "expected per_class >= 1, channels >= 1, languages within ('de', 'en')")
    from multiprocessing import get_context

    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cochlea = Cochlea(n_channels=channels)
    keys = [w for lang, ws in (("de", GERMAN), ("en", ENGLISH)) if lang in languages for w in ws]
    paths = {}
    n_test = test_per_class if test_per_class is not None else max(1, per_class // 4)
    for split, n in (("train", per_class), ("test", n_test)):
        plan = _plan(n, tuple(languages), seed, split == "test")
        jobs = [(u, cochlea, seed * 1_000_003 + i) for i, u in enumerate(plan)]
        nproc = workers or os.cpu_count() or 1
        if nproc > 1:
            with get_context("spawn").Pool(nproc) as pool:
                it = pool.imap(_render, jobs, chunksize=2)
                samples = list(tqdm(it, total=len(jobs), desc=f"spoken {split}", disable=not progress))
        else:
            samples = [_render(j) for j in tqdm(jobs, desc=f"spoken {split}", disable=not progress)]
        path = out / f"shd_{split}.h5"
        write_shd(path, samples, [u.label for u in plan], keys, speakers=[u.speaker for u in plan])
        paths[split] = path
    return paths
