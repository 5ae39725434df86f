"""Resumable, verified, atomic downloads (standard library only).

:func:`download` fetches ``url`` into ``<dest>.part``, resuming an earlier
partial transfer with an HTTP ``Range`` request, verifies the md5 and/or
sha256 checksum of the whole file, and only then renames ``.part`` onto
``dest`` (``os.replace``, atomic on one file system). A destination that
already exists with the right checksum is not fetched again.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from evrtrl.errors import ConfigError, FormatError

__all__ = ["ChecksumError", "DownloadError", "Resource", "download", "extract", "file_digest"]

_CHUNK = 1 << 16


class ChecksumError(FormatError):
    """A downloaded or cached file does not have the expected checksum."""


class DownloadError(FormatError):
    """A transfer failed (connection error, HTTP error, or it stopped early)."""


@dataclass(frozen=True)
class Resource:
    """One downloadable file of a data set.

    Attributes
    ----------
    url : str
        Where to fetch it.
    filename : str
        Name to store it under.
    md5, sha256 : str or None
        Expected checksums (hex). At least one should be given.
    source : str
        Where the URL and checksum were taken from.
    """

    url: str
    filename: str
    md5: str | None = None
    sha256: str | None = None
    source: str = ""


def file_digest(path: str | os.PathLike, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check(path: Path, md5: str | None, sha256: str | None) -> str | None:
    """None if every given checksum matches, else a description of the mismatch."""
    for alg, want in (("md5", md5), ("sha256", sha256)):
        if want:
            got = file_digest(path, alg)
            if got.lower() != want.lower():
                return f"{alg} {got}, expected {want.lower()}"
    return None


def download(
    url: str,
    dest: str | os.PathLike,
    md5: str | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
    progress: bool = False,
    retries: int = 0,
) -> Path:
    """Download ``url`` to ``dest``: resumable, verified, atomic.

    Parameters
    ----------
    url : str
        http(s) or file URL.
    dest : path-like
        Final path. A partial transfer lives in ``dest + ".part"``.
    md5, sha256 : str, optional
        Expected checksums of the complete file.
    timeout : float
        Socket timeout in seconds.
    progress : bool
        Show a tqdm progress bar.
    retries : int
        Extra attempts after an interrupted transfer (each resumes).

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    DownloadError
        If the transfer fails or stops early (the ``.part`` file is kept so a
        later call resumes).
    ChecksumError
        If the complete file has the wrong checksum (the ``.part`` file is deleted).
    """
    dest = Path(dest)
    if dest.exists():
        bad = _check(dest, md5, sha256)
        if bad is None:
            return dest
        raise ChecksumError(f"{dest}: existing file has {bad}; delete it to download again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        try:
            _fetch(url, part, timeout, progress)
            break
        except DownloadError:
            attempt += 1
            if attempt > retries:
                raise
    bad = _check(part, md5, sha256)
    if bad is not None:
        part.unlink()
        raise ChecksumError(f"{url}: downloaded file has {bad} (partial file deleted)")
    os.replace(part, dest)
    return dest


def _fetch(url: str, part: Path, timeout: float, progress: bool) -> None:
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "evrtrl-datasets"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to fetch: the part file is complete
            return
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"{url}: {exc}") from exc
    with resp:
        status = getattr(resp, "status", 200)
        if have and status == 206:
            mode, start = "ab", have
        else:  # server ignored the Range header: start over
            mode, start = "wb", 0
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=part.name[:-5])
        got = start
        try:
            with open(part, mode) as fh:
                while True:
                    try:
                        chunk = resp.read(_CHUNK)
                    except (OSError, http.client.HTTPException) as exc:  # e.g. IncompleteRead
                        raise DownloadError(f"{url}: transfer interrupted at byte {got} ({exc!r}); "
                                            "call again to resume") from exc
                    if not chunk:
                        break
                    fh.write(chunk)
                    got += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        if total is not None and got < total:
            raise DownloadError(f"{url}: transfer stopped at byte {got} of {total}; call again to resume")


# ------------------------------------------------------------------ extraction
_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)
_ZIP_ERRORS = (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError)


def _inside(path: str, root: str) -> bool:
    """True when the normalised ``path`` is ``root`` or lies below it (no file system access)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _member_path(archive: Path, root: str, name: str) -> str:
    """Normalised destination of member ``name``; refuses absolute names and ``..`` escapes."""
    if not name or name.startswith(("/", "\\")) or (name[0].isalpha() and name[1:2] == ":") or "\x00" in name:
        raise FormatError(f"{archive}: member {name!r} has an absolute or empty name; "
                          "expected a path relative to the archive root")
    dest = os.path.normpath(os.path.join(root, name))
    if not _inside(dest, root) or not Path(dest).resolve().is_relative_to(root):
        raise FormatError(f"{archive}: member {name!r} would extract outside {root}")
    return dest


def _check_tar(archive: Path, members: list[tarfile.TarInfo], root: str) -> None:
    """Refuse every member that ``filter="data"`` refuses, plus any special mode bit (see :func:`extract`)."""
    links: set[str] = set()  # destinations of symlink members
    for m in members:
        dest = _member_path(archive, root, m.name)
        parent = os.path.dirname(dest)
        while _inside(parent, root) and parent != root:  # written through an earlier symlink member?
            if parent in links:
                raise FormatError(f"{archive}: member {m.name!r} is written through the symlink member "
                                  f"{os.path.relpath(parent, root)!r}; refused (links may not be traversed)")
            parent = os.path.dirname(parent)
        if m.issym() or m.islnk():
            kind = "symlink" if m.issym() else "hardlink"
            if not m.linkname or os.path.isabs(m.linkname) or m.linkname.startswith("\\"):
                raise FormatError(f"{archive}: {kind} member {m.name!r} points to the absolute path "
                                  f"{m.linkname!r}; expected a target inside the archive")
            cur = os.path.dirname(dest) if m.issym() else root
            for part in m.linkname.replace("\\", "/").split("/"):  # step by step: no exit, no link on the way
                cur = os.path.dirname(cur) if part == ".." else cur if part in ("", ".") else os.path.join(cur, part)
                if not _inside(cur, root) or cur in links:
                    raise FormatError(f"{archive}: {kind} member {m.name!r} -> {m.linkname!r} points outside "
                                      f"{root} or through another link member; refused")
            if not Path(cur).resolve().is_relative_to(root):
                raise FormatError(f"{archive}: {kind} member {m.name!r} -> {m.linkname!r} points outside {root}")
            if m.issym():
                links.add(dest)
        elif not (m.isreg() or m.isdir()):
            kind = "FIFO" if m.isfifo() else "device" if m.isdev() else f"type {m.type!r}"
            raise FormatError(f"{archive}: member {m.name!r} is a {kind}; expected regular files, "
                              "directories and links inside the archive")
        if m.mode & ~0o777:
            raise FormatError(f"{archive}: member {m.name!r} has mode {m.mode:#o} (setuid, setgid or sticky bit); "
                              "expected permission bits within 0o777")


def _check_zip(archive: Path, infos: list[zipfile.ZipInfo], root: str) -> None:
    """Refuse absolute/escaping names, links, devices, FIFOs and special mode bits in a zip archive."""
    for info in infos:
        name = info.filename
        if "\\" in name or ".." in name.replace("\\", "/").split("/"):
            raise FormatError(f"{archive}: member {name!r} contains '..' or a backslash; refused")
        _member_path(archive, root, name)
        mode = info.external_attr >> 16
        if info.create_system == 3 and mode:  # unix attributes present
            kind = stat.S_IFMT(mode)
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                what = "symlink" if kind == stat.S_IFLNK else "FIFO" if kind == stat.S_IFIFO else "device or socket"
                raise FormatError(f"{archive}: member {name!r} is a {what} (mode {mode:#o}); expected regular "
                                  "files and directories")
            if stat.S_IMODE(mode) & ~0o777:
                raise FormatError(f"{archive}: member {name!r} has mode {stat.S_IMODE(mode):#o} (setuid, setgid "
                                  "or sticky bit); expected permission bits within 0o777")


def extract(archive: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Extract a ``.zip``, ``.tar(.gz)`` or single-file ``.gz`` archive into ``out_dir``.

    Every member is checked *before* anything is written, with the rules of
    Python's ``tarfile`` ``filter="data"`` and stricter ones:

    * absolute names, ``..`` escapes and names that resolve outside ``out_dir``
      (also through a symlink already on disk) are refused;
    * a symlink or hardlink must point inside ``out_dir`` (an absolute target is
      refused even when it would land inside), and no later member may be written
      through a symlink member;
    * devices, FIFOs and other special members are refused; so are setuid,
      setgid and sticky bits (modes outside ``0o777``); zip members that are
      symlinks (``zipfile`` would write them as plain files) are refused too.

    tar archives are then extracted with ``filter="data"`` where the running
    Python has it (3.11.4+, 3.12+), so its own checks run as well.

    Raises
    ------
    FormatError
        If a member breaks a rule (nothing is extracted then) or the archive is
        corrupt; the message names the archive and the member.
    """
    archive, out_dir = Path(archive), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = str(out_dir.resolve())
    name = archive.name
    if zipfile.is_zipfile(archive):
        try:
            with zipfile.ZipFile(archive) as z:
                _check_zip(archive, z.infolist(), root)
                z.extractall(root)
        except _ZIP_ERRORS as exc:
            raise FormatError(f"{archive}: corrupt zip archive ({type(exc).__name__}: {exc})") from exc
    elif tarfile.is_tarfile(archive):
        try:
            with tarfile.open(archive) as t:
                _check_tar(archive, t.getmembers(), root)
                if hasattr(tarfile, "data_filter"):
                    t.extractall(root, filter="data")
                else:  # pragma: no cover - Python < 3.11.4: the checks above are the filter
                    t.extractall(root)
        except _TAR_ERRORS as exc:
            raise FormatError(f"{archive}: corrupt or unsafe tar archive ({type(exc).__name__}: {exc})") from exc
    elif name.endswith(".gz"):
        target = out_dir / name[:-3]
        tmp = target.with_name(target.name + ".part")
        try:
            with gzip.open(archive, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            tmp.unlink(missing_ok=True)
            raise FormatError(f"{archive}: corrupt gzip file ({type(exc).__name__}: {exc})") from exc
        os.replace(tmp, target)
    else:
        raise ConfigError(f"{archive}: unknown archive type; expected .zip, .tar[.gz] or .gz")
    return out_dir
