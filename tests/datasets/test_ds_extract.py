"""Hostile archives: datasets.extract refuses them before anything is written (docs/reliability.md)."""
from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from evrtrl.datasets import extract
from evrtrl.errors import FormatError


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as t:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    i = tarfile.TarInfo(name)
    i.type, i.linkname, i.mode = kind, linkname, mode
    return i


@pytest.fixture()
def box(tmp_path):
    """(archive folder, extraction target, a file outside the target that must stay untouched)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    out = tmp_path / "out"
    return tmp_path, out, victim


def _untouched(tmp_path: Path, out: Path, victim: Path, before: set[str]) -> None:
    assert victim.read_text() == "original"
    after = {p.name for p in tmp_path.iterdir()}
    assert after - before <= {"out"}, f"files appeared outside the target: {after - before}"


def test_symlink_then_write_through(box):
    tmp, out, victim = box
    arc = _tar(tmp / "a.tar", [(_info("link", tarfile.SYMTYPE, ".."), None),
                               (_info("link/pwned.txt"), b"evil")])
    before = {p.name for p in tmp.iterdir()}
    with pytest.raises(FormatError, match="link"):
        extract(arc, out)
    _untouched(tmp, out, victim, before)
    assert not (tmp / "pwned.txt").exists()


def test_write_through_an_inside_symlink_chain(box):
    """e -> '.' is inside, s -> 'e/..' is lexically inside but really the parent: refused."""
    tmp, out, victim = box
    arc = _tar(tmp / "a.tar", [(_info("e", tarfile.SYMTYPE, "."), None),
                               (_info("s", tarfile.SYMTYPE, "e/.."), None),
                               (_info("s/victim.txt"), b"evil")])
    with pytest.raises(FormatError, match="link"):
        extract(arc, out)
    assert victim.read_text() == "original"


def test_hardlink_to_parent_file_then_overwrite(box):
    tmp, out, victim = box
    arc = _tar(tmp / "a.tar", [(_info("h", tarfile.LNKTYPE, "../victim.txt"), None),
                               (_info("h"), b"overwritten")])
    with pytest.raises(FormatError, match="hardlink"):
        extract(arc, out)
    assert victim.read_text() == "original"
    assert not (out / "h").exists()


def test_absolute_symlink(box):
    tmp, out, victim = box
    arc = _tar(tmp / "a.tar", [(_info("abs", tarfile.SYMTYPE, str(victim)), None)])
    with pytest.raises(FormatError, match="absolute"):
        extract(arc, out)
    assert not os.path.lexists(out / "abs")


def test_fifo(box):
    tmp, out, _ = box
    arc = _tar(tmp / "a.tar", [(_info("pipe", tarfile.FIFOTYPE), None)])
    with pytest.raises(FormatError, match="FIFO"):
        extract(arc, out)
    assert not os.path.lexists(out / "pipe")


def test_device(box):
    tmp, out, _ = box
    dev = _info("null", tarfile.CHRTYPE)
    dev.devmajor, dev.devminor = 1, 3
    arc = _tar(tmp / "a.tar", [(dev, None)])
    with pytest.raises(FormatError, match="device"):
        extract(arc, out)


@pytest.mark.parametrize("mode", [0o4755, 0o2755, 0o1777])
def test_setuid_setgid_sticky(box, mode):
    tmp, out, _ = box
    arc = _tar(tmp / "a.tar", [(_info("tool", mode=mode), b"#!/bin/sh\n")])
    with pytest.raises(FormatError, match="mode"):
        extract(arc, out)
    assert not (out / "tool").exists()


def test_absolute_and_dotdot_names(box):
    tmp, out, victim = box
    for name in (str(victim), "../victim.txt", "a/../../victim.txt"):
        arc = _tar(tmp / "a.tar", [(_info(name), b"evil")])
        with pytest.raises(FormatError):
            extract(arc, out)
    assert victim.read_text() == "original"


def test_nothing_is_written_when_a_later_member_is_bad(box):
    tmp, out, _ = box
    arc = _tar(tmp / "a.tar", [(_info("good.txt"), b"fine"), (_info("pipe", tarfile.FIFOTYPE), None)])
    with pytest.raises(FormatError):
        extract(arc, out)
    assert not (out / "good.txt").exists()


def test_well_formed_tar_gz_with_inside_links_extracts(tmp_path):
    arc = tmp_path / "ok.tar.gz"
    with tarfile.open(arc, "w:gz") as t:
        for info, data in [(_info("d", tarfile.DIRTYPE, mode=0o755), None), (_info("d/a.bin", mode=0o640), b"abc"),
                           (_info("d/alias", tarfile.SYMTYPE, "a.bin"), None),
                           (_info("d/hard", tarfile.LNKTYPE, "d/a.bin"), None)]:
            if data is not None:
                info.size = len(data)
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    out = extract(arc, tmp_path / "out")
    assert (out / "d" / "a.bin").read_bytes() == b"abc"
    assert (out / "d" / "alias").read_bytes() == b"abc" and (out / "d" / "hard").read_bytes() == b"abc"


def _zip_member(z: zipfile.ZipFile, name: str, data: bytes, mode: int | None) -> None:
    info = zipfile.ZipInfo(name)
    if mode is not None:
        info.create_system = 3
        info.external_attr = mode << 16
    z.writestr(info, data)


@pytest.mark.parametrize("name,mode,match", [
    ("link", stat.S_IFLNK | 0o777, "symlink"),
    ("fifo", stat.S_IFIFO | 0o644, "FIFO"),
    ("suid", stat.S_IFREG | 0o4755, "mode"),
    ("/abs.txt", stat.S_IFREG | 0o644, "absolute"),
    ("a/../../victim.txt", None, r"\.\."),
])
def test_zip_hostile_members(box, name, mode, match):
    tmp, out, victim = box
    arc = tmp / "a.zip"
    with zipfile.ZipFile(arc, "w") as z:
        _zip_member(z, "ok.txt", b"fine", stat.S_IFREG | 0o644)
        _zip_member(z, name, b"../victim.txt", mode)
    with pytest.raises(FormatError, match=match):
        extract(arc, out)
    assert victim.read_text() == "original" and not (out / "ok.txt").exists()


def test_zip_well_formed_extracts(tmp_path):
    arc = tmp_path / "ok.zip"
    with zipfile.ZipFile(arc, "w") as z:
        _zip_member(z, "Train/0/1.bin", b"12345", stat.S_IFREG | 0o644)
        _zip_member(z, "plain.txt", b"x", None)
    out = extract(arc, tmp_path / "out")
    assert (out / "Train" / "0" / "1.bin").read_bytes() == b"12345" and (out / "plain.txt").read_bytes() == b"x"


def test_corrupt_archives_raise_format_error(tmp_path):
    good = tmp_path / "g.tar.gz"
    with tarfile.open(good, "w:gz") as t:
        info = _info("big.bin")
        data = os.urandom(50_000)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[:20_000])
    with pytest.raises(FormatError) as err:
        extract(cut, tmp_path / "o1")
    assert err.value.__cause__ is not None and "cut.tar.gz" in str(err.value)
    gz = tmp_path / "x.h5.gz"
    gz.write_bytes(gzip.compress(b"y" * 1000)[:-12] + b"\x00" * 12)
    with pytest.raises(FormatError, match="gzip"):
        extract(gz, tmp_path / "o2")
    assert not (tmp_path / "o2" / "x.h5.part").exists()
