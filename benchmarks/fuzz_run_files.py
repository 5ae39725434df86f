"""Seed files of the library's own HDF5 formats for the mutation fuzzer (``evrtrl.benchmarks.fuzz``).

One entry per format in :data:`RUN_FILE_FORMATS`: ``(name, suffix, seeds, read, rehash)``,
registered in the fuzzer with ``Format(*entry)``. ``rehash`` re-seals a mutant
(:func:`evrtrl.h5file.seal`), so that the parser behind the content-hash check is fuzzed too.
``seeds(out_dir, shared_data_or_None) -> list[Path]`` writes small valid files with the
library's writers; the checkpoint's seeds come from the training wing itself
(:func:`evrtrl.training.checkpoint.sample_checkpoints`, named by string: the benchmarks do not
import the training wing).
"""
from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["RUN_FILE_FORMATS", "seeds_model", "seeds_bundle"]


def _models():
    from evrtrl.models import EGRU, LIF, Readout, Stack, random_masks

    g = torch.Generator().manual_seed(0)
    egru = EGRU(3, 5, theta_init=0.1, generator=g, masks=random_masks(EGRU.weight_shapes(3, 5), 0.6, seed=1))
    lif = Stack(LIF(3, 4, tau_mem=0.02, tau_syn=0.005, dt=1e-3, generator=g),
                LIF(4, 2, tau_mem=0.02, tau_syn=0.01, dt=1e-3, recurrent=False, generator=g))
    return [(egru, Readout(5, 2)), (lif, Readout(2, 2))]


def seeds_model(out: Path, shared: Path | None = None) -> list[Path]:
    """Model files: an EGRU with masks and readout, a two-layer LIF stack."""
    from evrtrl.models.modelfile import save_model

    return [save_model(m, out / f"model{i}.h5", readout=r, note="seed") for i, (m, r) in enumerate(_models())]


def seeds_bundle(out: Path, shared: Path | None = None) -> list[Path]:
    """Bundles: EGRU without a mapping, the LIF stack with a Loihi 2 mapping."""
    from evrtrl.neuromorphic import export_bundle, map_to_hardware

    (egru, _), (lif, _) = _models()
    export_bundle(egru, out / "egru.h5")
    export_bundle(lif, out / "lif.h5", mapping=map_to_hardware(lif, "loihi2"))
    return [out / "egru.h5", out / "lif.h5"]


#: (name, suffix, seeds, read, rehash) per format
RUN_FILE_FORMATS = (
    ("checkpoint", ".h5", "evrtrl.training.checkpoint:sample_checkpoints", "evrtrl.training.checkpoint:load_checkpoint",
     "evrtrl.h5file:seal"),
    ("model", ".h5", seeds_model, "evrtrl.models.modelfile:load_model", "evrtrl.h5file:seal"),
    ("bundle", ".h5", seeds_bundle, "evrtrl.neuromorphic.bundle:read_bundle", "evrtrl.h5file:seal"),
)
