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
import tarfile
import urllib.error
import urllib.request
import zipfile
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


def extract(archive: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Extract a ``.zip``, ``.tar(.gz)`` or single-file ``.gz`` archive into ``out_dir``.

    Members that would land outside ``out_dir`` are refused.
    """
    archive, out_dir = Path(archive), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = out_dir.resolve()
    name = archive.name
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for m in z.namelist():
                if not (out_dir / m).resolve().is_relative_to(root):
                    raise FormatError(f"{archive}: member {m!r} would extract outside {out_dir}")
            z.extractall(out_dir)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            for m in t.getmembers():
                if not (out_dir / m.name).resolve().is_relative_to(root):
                    raise FormatError(f"{archive}: member {m.name!r} would extract outside {out_dir}")
            t.extractall(out_dir)
    elif name.endswith(".gz"):
        target = out_dir / name[:-3]
        tmp = target.with_name(target.name + ".part")
        with gzip.open(archive, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, target)
    else:
        raise ConfigError(f"{archive}: unknown archive type; expected .zip, .tar[.gz] or .gz")
    return out_dir
