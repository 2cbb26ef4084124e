"""Downloads against a real HTTP server on 127.0.0.1 (a thread of this process):
success, checksum mismatch, a connection cut short, a dead address, mirrors in turn,
and archive extraction. After any failure no file exists under the final name and no
temporary file is left behind."""
import hashlib
import http.server
import io
import socket
import sys
import tarfile
import threading
from pathlib import Path

import platformdirs
import pytest

from minidl.data import DatasetNotFoundError, DownloadError, data_root
from minidl.data.download import Remote, download, ensure_file, extract_tar

PAYLOAD = bytes(range(256)) * 400  # 100 kB, several read chunks
MD5 = "md5:" + hashlib.md5(PAYLOAD).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    """/good: the payload; /bad: other bytes of the same length; /cut: announces the
    full length, sends half, then closes; anything else: 404."""

    def do_GET(self):
        if self.path.startswith("/good") or self.path.startswith("/bad") or self.path.startswith("/cut"):
            body = PAYLOAD if not self.path.startswith("/bad") else PAYLOAD[::-1]
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            if self.path.startswith("/cut"):
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)
        else:
            self.send_error(404)

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_download_success(server, tmp_path):
    dest = tmp_path / "data" / "file.bin"
    assert download(Remote("file.bin", (f"{server}/good/file.bin",), MD5), dest) == dest
    assert dest.read_bytes() == PAYLOAD
    assert leftovers(dest.parent) == ["file.bin"]


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError) as info:
        download(Remote("file.bin", (f"{server}/bad/file.bin",), MD5), dest)
    message = str(info.value)
    assert "checksum mismatch" in message and MD5[4:] in message
    assert hashlib.md5(PAYLOAD[::-1]).hexdigest() in message
    assert str(dest) in message  # where to put a copy fetched by hand
    assert leftovers(tmp_path) == []


def test_interrupted_download_leaves_nothing(server, tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError, match=f"interrupted: received {len(PAYLOAD) // 2} of {len(PAYLOAD)}"):
        download(Remote("file.bin", (f"{server}/cut/file.bin",), MD5), dest)
    assert leftovers(tmp_path) == []


def test_unreachable_address_names_url(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/file.bin"
    with pytest.raises(DownloadError) as info:
        download(Remote("file.bin", (url,), MD5), tmp_path / "file.bin")
    assert url in str(info.value)
    assert leftovers(tmp_path) == []


def test_mirrors_are_tried_in_turn(server, tmp_path):
    urls = (f"{server}/missing/file.bin", f"{server}/bad/file.bin", f"{server}/good/file.bin")
    dest = download(Remote("file.bin", urls, MD5), tmp_path / "file.bin")
    assert dest.read_bytes() == PAYLOAD


def test_ensure_file_downloads_once_and_then_trusts_the_file(server, tmp_path):
    remote = Remote("file.bin", (f"{server}/good/file.bin",), MD5)
    path = ensure_file(remote, tmp_path / "sub")
    assert path.read_bytes() == PAYLOAD
    path.write_bytes(b"re-compressed copy")  # present files are checked by their reader
    assert ensure_file(remote, tmp_path / "sub", download_ok=False).read_bytes() == b"re-compressed copy"


def test_ensure_file_failure_is_a_dataset_not_found_error(server, tmp_path):
    remote = Remote("file.bin", (f"{server}/cut/file.bin",), MD5)
    with pytest.raises(DatasetNotFoundError, match="interrupted"):
        ensure_file(remote, tmp_path, hint="\nsome hint")
    with pytest.raises(DatasetNotFoundError, match=f"{server}/cut/file.bin"):
        ensure_file(remote, tmp_path, download_ok=False)
    assert leftovers(tmp_path) == []


def test_data_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDL_DATA_DIR", str(tmp_path / "env"))
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data_root() == tmp_path / "env"
    monkeypatch.setenv("MINIDL_DATA_DIR", "")  # set but empty counts as unset
    assert data_root() == Path(platformdirs.user_cache_dir("minidl", appauthor=False))
    monkeypatch.delenv("MINIDL_DATA_DIR")
    assert data_root() == Path(platformdirs.user_cache_dir("minidl", appauthor=False))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG_CACHE_HOME is a Linux convention")
def test_data_root_follows_xdg_cache_home_on_linux(tmp_path, monkeypatch):
    monkeypatch.delenv("MINIDL_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_root() == tmp_path / "cache" / "minidl"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data_root() == Path.home() / ".cache" / "minidl"


# --------------------------------------------------------------------------- archives
def make_tar(path, files, extra=()):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)


def test_extract_tar_takes_only_expected_regular_files(tmp_path):
    archive = tmp_path / "a.tar.gz"
    link = tarfile.TarInfo("pack/evil")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    make_tar(archive, {"pack/one": b"1", "pack/two": b"22", "../escape": b"x"}, extra=[link])
    target = extract_tar(archive, tmp_path, "pack", ["one", "two"])
    assert sorted(p.name for p in target.iterdir()) == ["one", "two"]
    assert (target / "two").read_bytes() == b"22"
    assert not (tmp_path.parent / "escape").exists()
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(DownloadError, match="not a regular file"):
        extract_tar(archive, other, "pack", ["evil"])
    assert leftovers(other) == []


def test_truncated_archive_leaves_no_folder(tmp_path):
    archive = tmp_path / "a.tar.gz"
    make_tar(archive, {"pack/one": bytes(range(256)) * 2000})
    archive.write_bytes(archive.read_bytes()[:300])
    with pytest.raises(DownloadError, match="download it again"):
        extract_tar(archive, tmp_path, "pack", ["one"])
    assert leftovers(tmp_path) == ["a.tar.gz"]
