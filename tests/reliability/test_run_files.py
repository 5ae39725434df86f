"""Sealed library files (issue 12): content hash checked before libhdf5 parses, links refused,
legacy files still read, the previous checkpoint kept, non-finite weights never checkpointed."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import pytest
import torch

from evrtrl.errors import FormatError, NonFiniteError
from evrtrl.h5file import HDF5_SIGNATURE, USERBLOCK, read_h5, seal
from evrtrl.models import EGRU, Readout
from evrtrl.models.modelfile import load_model, save_model
from evrtrl.neuromorphic import export_bundle, read_bundle
from evrtrl.training import TrainConfig, train
from evrtrl.training.checkpoint import load_checkpoint, previous_path, save_checkpoint


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint written by a real (tiny) training run."""
    run = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(data="synthetic:rotation,n=12", hidden=4, batch=6, epochs=1, eval_each_epoch=False)
    train(cfg, run / "r", progress=False)
    return run / "r" / "checkpoint.h5"


def _model(seed=0):
    return EGRU(3, 4, theta_init=0.1, generator=torch.Generator().manual_seed(seed)).double()


def test_files_are_sealed_and_the_seal_covers_every_byte(tmp_path, real_checkpoint):
    data = real_checkpoint.read_bytes()
    assert data.startswith(b"evrtrl-sha256 1\n") and data[USERBLOCK:USERBLOCK + 8] == HDF5_SIGNATURE
    with read_h5(real_checkpoint) as f:
        assert f.seal == "sealed" and f.attrs["kind"] == "evrtrl-checkpoint"
    # one flipped weight bit: today's reader loaded it silently
    p = save_model(_model(), tmp_path / "m.h5")
    raw = bytearray(p.read_bytes())
    with h5py.File(p) as f:
        off = f["model/layers/0/U_u"].id.get_offset()
    raw[USERBLOCK + off + 3] ^= 0x10
    p.write_bytes(raw)
    with pytest.raises(FormatError, match="content hash mismatch"):
        load_model(p)
    for cut in (USERBLOCK + 10, len(raw) - 1):
        p.write_bytes(bytes(raw[:cut]))
        with pytest.raises(FormatError, match=str(p)):
            load_model(p)


_ZERO_ALL = textwrap.dedent("""
    import sys
    from evrtrl.errors import FormatError
    from evrtrl.training.checkpoint import load_checkpoint
    src, out = open(sys.argv[1], "rb").read(), sys.argv[2]
    kinds = set()
    for off in range(0, len(src) - 35, 35):
        b = bytearray(src); b[off:off + 35] = bytes(35)
        if b == src:  # the window held zeros already: not a mutation
            continue
        open(out, "wb").write(b)
        try:
            load_checkpoint(out)
            kinds.add("loaded")
        except FormatError as e:
            kinds.add("FormatError")
    print(sorted(kinds))
""")


def test_zeroed_35_bytes_of_a_real_checkpoint_is_a_format_error_not_a_hang(tmp_path, real_checkpoint):
    """The issue's reproducer: zeroing 35 bytes of a checkpoint made libhdf5 loop forever (at
    byte 5810 of the unsealed file: an attribute read). Every 35-byte window of a sealed
    checkpoint is zeroed in turn (windows that held zeros already are skipped); run in a
    child under a time limit so a regression fails instead of hanging."""
    out = subprocess.run([sys.executable, "-c", _ZERO_ALL, str(real_checkpoint), str(tmp_path / "mut.h5")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "['FormatError']"


def test_a_real_libhdf5_loop_is_refused_even_behind_a_valid_seal(tmp_path, real_checkpoint, monkeypatch):
    """Zeroing 35 bytes at offset 5810 of this checkpoint's HDF5 part makes libhdf5 loop
    forever on an attribute read (found by a search over every 35-byte window; a plain h5py
    read was still spinning after 40 s). A crafted file re-sealed after the damage, and the
    same damage in an unsealed (legacy) copy, are refused by the forked probe, not hung on.
    If the checkpoint layout changes, this offset may stop looping: then the message check
    below fails and a new offset must be searched."""
    from evrtrl.h5file import HDF5GuardError

    monkeypatch.setenv("EVRTRL_H5_PROBE_S", "8")
    raw = bytearray(real_checkpoint.read_bytes())
    raw[USERBLOCK + 5810:USERBLOCK + 5845] = bytes(35)
    crafted = tmp_path / "crafted.h5"
    crafted.write_bytes(raw)
    with pytest.raises(FormatError, match="content hash mismatch"):  # as damaged: the seal refuses it
        load_checkpoint(crafted)
    seal(crafted)
    legacy = tmp_path / "legacy.h5"
    _unsealed_copy(real_checkpoint, legacy)
    leg = bytearray(legacy.read_bytes())
    leg[5810:5845] = bytes(35)
    legacy.write_bytes(leg)
    for p in (crafted, legacy):
        with pytest.raises(HDF5GuardError, match="did not finish parsing the file within 8 s"):
            load_checkpoint(p)


def test_external_and_soft_links_are_refused(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = [1.0]
    for kind, link in (("an external link", h5py.ExternalLink(str(other), "/x")),
                       ("a soft link", h5py.SoftLink("/model/layers/0/U_u"))):
        p = save_model(_model(), tmp_path / f"{kind.split()[-2]}.h5", readout=Readout(4, 2, dtype=torch.float64))
        with h5py.File(p, "a") as f:
            f["readout/extra"] = link
        seal(p)  # a crafted file: the seal is valid, the link is not
        with pytest.raises(FormatError, match=f"'/readout/extra' is {kind}"):
            load_model(p)
    p = save_model(_model(), tmp_path / "ext.h5")
    with h5py.File(p, "a") as f:  # raw data kept in another file
        f.create_dataset("model/sneaky", shape=(4,), dtype="f8", external=[(str(tmp_path / "raw.bin"), 0, 32)])
    seal(p)
    with pytest.raises(FormatError, match="external files"):
        load_model(p)


def _unsealed_copy(src: Path, dst: Path) -> None:
    """The same objects in a file without a user block: what evrtrl 0.1.0 wrote."""
    with h5py.File(src, "r") as a, h5py.File(dst, "w") as b:
        for k, v in a.attrs.items():
            b.attrs[k] = v
        for name in a:
            a.copy(a[name], b, name=name)


def test_legacy_unsealed_files_still_load(tmp_path, real_checkpoint):
    legacy = tmp_path / "legacy.h5"
    _unsealed_copy(real_checkpoint, legacy)
    assert legacy.read_bytes()[:8] == HDF5_SIGNATURE
    a, b = load_checkpoint(real_checkpoint), load_checkpoint(legacy)
    assert a.counters == b.counters and torch.equal(a.model.U_u, b.model.U_u)
    with read_h5(legacy) as f:
        assert f.seal == "legacy"
    # the structure checks still apply to legacy files
    with h5py.File(legacy, "a") as f:
        del f["counters"]
    with pytest.raises(FormatError, match="missing group '/counters'"):
        load_checkpoint(legacy)
    # a bundle written before sealing also loads
    bundle = tmp_path / "b.h5"
    export_bundle(_model(), bundle)
    _unsealed_copy(bundle, tmp_path / "b_legacy.h5")
    assert read_bundle(tmp_path / "b_legacy.h5").network.layers[0].n == 4


def test_previous_checkpoint_is_kept(tmp_path):
    p = tmp_path / "checkpoint.h5"
    m0, m1 = _model(0), _model(1)
    save_checkpoint(p, m0, None, None, counters={"step": 1}, keep_previous=True)
    assert not previous_path(p).exists()
    save_checkpoint(p, m1, None, None, counters={"step": 2}, keep_previous=True)
    assert previous_path(p).name == "checkpoint.prev.h5"
    prev, cur = load_checkpoint(previous_path(p)), load_checkpoint(p)
    assert prev.counters == {"step": 1} and torch.equal(prev.model.U_u, m0.U_u)
    assert cur.counters == {"step": 2} and torch.equal(cur.model.U_u, m1.U_u)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["checkpoint.h5", "checkpoint.prev.h5"]


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    p = tmp_path / "checkpoint.h5"
    m = _model()
    save_checkpoint(p, m, None, None, counters={"epoch": 0, "global_batch": 3})
    before = p.read_bytes()
    with torch.no_grad():
        m.W_r[1, 2] = float("nan")
    with pytest.raises(NonFiniteError, match=r"parameter 'W_r' holds 1 NaN .* at epoch 0, global_batch 7"):
        save_checkpoint(p, m, None, None, counters={"epoch": 0, "global_batch": 7})
    assert p.read_bytes() == before
