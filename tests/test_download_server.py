"""Downloads from a real HTTP server on 127.0.0.1 (a thread of this process), reached
through $MINIDL_MIRRORS: success, wrong checksum, a short body, 404, an HTML page, a
stalled server (socket timeout), a trickling one (overall deadline), SIGTERM in the
middle; never a partial file. And a CIFAR batch re-pickled by Python 3 is accepted."""
import hashlib
import http.server
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from minidl.data import DownloadError, UnsafePickleError, load_cifar10
from minidl.data.download import Remote, download, mirror_urls
from minidl.data.formats import read_cifar_pickle

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = bytes(range(256)) * 300
REMOTE = Remote("file.bin", ("http://192.0.2.1/never-used/file.bin",),  # TEST-NET: unroutable
                "sha256:" + hashlib.sha256(PAYLOAD).hexdigest())


class Handler(http.server.BaseHTTPRequestHandler):
    """/good, /badsum, /short (announces all, sends half), /html, /stall (headers, then
    silence), /trickle (a byte every 50 ms); anything else 404."""

    def do_GET(self):
        kind = self.path.split("/")[1]
        if kind not in ("good", "badsum", "short", "html", "stall", "trickle"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if kind == "html" else "application/octet-stream")
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        if kind == "stall":
            time.sleep(3)
        elif kind == "trickle":
            for byte in PAYLOAD[:100]:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.05)
        elif kind == "short":
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
        else:
            self.wfile.write(PAYLOAD[::-1] if kind == "badsum" else
                             b"<html>please log in</html>".ljust(len(PAYLOAD)) if kind == "html" else PAYLOAD)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_the_mirrors_variable_replaces_the_official_addresses(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDL_MIRRORS", f"{server}/missing/, {server}/good")
    assert mirror_urls(REMOTE) == (f"{server}/missing/file.bin", f"{server}/good/file.bin")
    dest = download(REMOTE, tmp_path / "file.bin", progress=False, timeout=2)
    assert dest.read_bytes() == PAYLOAD and os.listdir(tmp_path) == ["file.bin"]
    monkeypatch.delenv("MINIDL_MIRRORS")
    assert mirror_urls(REMOTE) == REMOTE.urls


@pytest.mark.parametrize("kind, says", [("badsum", "checksum mismatch"), ("short", "interrupted: received"),
                                        ("missing", "404"), ("html", "HTML page")])
def test_each_failure_names_the_address_and_leaves_nothing(server, tmp_path, monkeypatch, kind, says):
    monkeypatch.setenv("MINIDL_MIRRORS", f"{server}/{kind}")
    with pytest.raises(DownloadError) as caught:
        download(REMOTE, tmp_path / "file.bin", progress=False, timeout=2)
    message = str(caught.value)
    assert says in message and f"{server}/{kind}/file.bin" in message and "\n" not in message, message
    assert os.listdir(tmp_path) == []


def test_a_stalled_server_times_out_and_the_next_mirror_serves(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDL_MIRRORS", f"{server}/stall,{server}/good")
    start = time.monotonic()
    download(REMOTE, tmp_path / "file.bin", progress=False, timeout=0.5)
    assert time.monotonic() - start < 2.5  # not the 3 s the stalled server waits
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD


def test_a_trickling_server_hits_the_deadline(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDL_MIRRORS", f"{server}/trickle")
    monkeypatch.setenv("MINIDL_DOWNLOAD_DEADLINE", "0.6")
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"gave up after 0.6 s"):
        download(REMOTE, tmp_path / "file.bin", progress=False, timeout=2)  # each byte beats the timeout
    assert time.monotonic() - start < 3 and os.listdir(tmp_path) == []
    monkeypatch.setenv("MINIDL_DOWNLOAD_DEADLINE", "soon")
    with pytest.raises(DownloadError, match="MINIDL_DOWNLOAD_DEADLINE='soon'"):
        download(REMOTE, tmp_path / "file.bin", progress=False)


def test_sigterm_during_a_download_leaves_no_partial_file(server, tmp_path):
    script = ("import sys\nfrom minidl.data.download import download\n"
              f"from test_download_server import REMOTE\n"
              f"download(REMOTE, {str(tmp_path / 'file.bin')!r}, progress=False)\n")
    env = {**os.environ, "MINIDL_MIRRORS": f"{server}/trickle",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    process = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT)
    try:
        for _ in range(200):  # until the temporary file exists
            if any(p.suffix == ".part" for p in tmp_path.iterdir()):
                break
            time.sleep(0.05)
        assert any(p.suffix == ".part" for p in tmp_path.iterdir())
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        process.kill()
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------ CIFAR re-pickled by Python 3
def cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"testing batch 1 of 1", b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


def test_a_cifar_folder_repickled_by_python3_loads(tmp_path):
    """As `pickle.load(f, encoding="bytes")` then `pickle.dump(protocol=2)` leave it:
    bytes keys and values, stored through _codecs.encode."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = cifar_batch(6, 0)
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    names = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                  "horse", "ship", "truck")]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    assert b"_codecs" in (folder / "test_batch").read_bytes()
    images, labels, classes = load_cifar10(tmp_path, split="test", download=False)
    np.testing.assert_array_equal(images, batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert labels.tolist() == batch[b"labels"] and classes[0] == "airplane"


class Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("payload, refused", [
    (Reduce(os.system, ("echo owned",)), "posix.system"),
    (Reduce(__import__("_codecs").encode, ("x", "rot13")), "'rot13'"),
    (Reduce(__import__("_codecs").decode, (b"x", "latin1")), "_codecs.decode"),
])
def test_the_restricted_unpickler_still_refuses_everything_else(tmp_path, payload, refused):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": payload}, protocol=2))
    with pytest.raises(UnsafePickleError, match="refus") as caught:
        read_cifar_pickle(path)
    assert refused in str(caught.value)
