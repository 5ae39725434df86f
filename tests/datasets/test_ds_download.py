import hashlib
import http.server
import threading

import pytest

from evrtrl.datasets import ChecksumError, DownloadError, Resource, download, extract
from evrtrl.datasets.catalog import NMNIST, SHD, SSC, DVSGesture, NCaltech101

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes


class _Handler(http.server.BaseHTTPRequestHandler):
    cut_after: int | None = None  # first GET of /flaky stops after this many bytes
    served_flaky = 0
    ranges: list = []

    def log_message(self, *a):
        pass

    def do_GET(self):
        body = PAYLOAD
        start = 0
        rng = self.headers.get("Range")
        type(self).ranges.append(rng)
        if rng and self.path != "/norange":
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        data = body[start:]
        if self.path == "/flaky" and type(self).served_flaky == 0:
            type(self).served_flaky += 1
            self.wfile.write(data[:30_000])
            self.wfile.flush()
            self.connection.shutdown(2)  # interrupt mid-transfer
            return
        self.wfile.write(data)


@pytest.fixture()
def server():
    _Handler.served_flaky = 0
    _Handler.ranges = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


MD5 = hashlib.md5(PAYLOAD).hexdigest()
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_download_verified_and_atomic(server, tmp_path):
    dest = download(server + "/file", tmp_path / "f.bin", md5=MD5, sha256=SHA)
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "f.bin.part").exists()
    # already there with the right checksum: no new request
    n = len(_Handler.ranges)
    download(server + "/file", tmp_path / "f.bin", md5=MD5)
    assert len(_Handler.ranges) == n


def test_resume_after_interrupted_transfer(server, tmp_path):
    dest = tmp_path / "g.bin"
    with pytest.raises(DownloadError, match="resume"):
        download(server + "/flaky", dest, md5=MD5, timeout=5)
    part = tmp_path / "g.bin.part"
    assert not dest.exists() and 0 < part.stat().st_size < len(PAYLOAD)
    have = part.stat().st_size
    download(server + "/flaky", dest, md5=MD5, timeout=5)
    assert dest.read_bytes() == PAYLOAD
    assert _Handler.ranges[-1] == f"bytes={have}-"


def test_server_without_range_support_restarts(server, tmp_path):
    (tmp_path / "h.bin.part").write_bytes(b"garbage")
    download(server + "/norange", tmp_path / "h.bin", md5=MD5)
    assert (tmp_path / "h.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch(server, tmp_path):
    with pytest.raises(ChecksumError, match="md5 .* expected 0+"):
        download(server + "/file", tmp_path / "bad.bin", md5="0" * 32)
    assert not (tmp_path / "bad.bin").exists() and not (tmp_path / "bad.bin.part").exists()


def test_http_error(server, tmp_path):
    with pytest.raises(DownloadError):
        download("http://127.0.0.1:1/none", tmp_path / "x", timeout=2)


def test_extract_gz_zip_tar(tmp_path):
    import gzip, tarfile, zipfile
    (tmp_path / "a.h5.gz").write_bytes(gzip.compress(b"abc"))
    extract(tmp_path / "a.h5.gz", tmp_path / "o")
    assert (tmp_path / "o" / "a.h5").read_bytes() == b"abc"
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as z:
        z.writestr("Train/0/1.bin", b"12345")
    extract(tmp_path / "z.zip", tmp_path / "o")
    assert (tmp_path / "o" / "Train" / "0" / "1.bin").exists()
    (tmp_path / "m.txt").write_text("x")
    with tarfile.open(tmp_path / "t.tar.gz", "w:gz") as t:
        t.add(tmp_path / "m.txt", arcname="ibmGestureTrain/m.txt")
    extract(tmp_path / "t.tar.gz", tmp_path / "o")
    assert (tmp_path / "o" / "ibmGestureTrain" / "m.txt").exists()


def test_catalog_has_real_sources():
    for cls in (SHD, SSC, NMNIST, NCaltech101, DVSGesture):
        for split, res in cls.resources.items():
            for r in res:
                assert isinstance(r, Resource) and r.url.startswith("https://") and len(r.md5) == 32 and r.source
    assert SHD.resources["train"][0].url == "https://zenkelab.org/datasets/shd_train.h5.gz"
