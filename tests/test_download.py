"""Streaming download against a real loopback HTTP server: resume, timeouts, size cap, digest."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from agent.protocol.manifest import FileEntry
from agent.updates.download import DownloadError, DownloadLimits, download_bundle, download_file

LIMITS = DownloadLimits(connect_timeout_s=1, read_timeout_s=1, total_timeout_s=10, retries=1)


def _serve(http: Any, name: str = "model.bin", size: int = 300_000) -> tuple[bytes, FileEntry]:
    data = os.urandom(size)
    (http.root / name).write_bytes(data)
    return data, FileEntry(path=name, sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def _get(http: Any, entry: FileEntry, dest: Path, limits: DownloadLimits = LIMITS) -> None:
    with requests.Session() as s:
        download_file(s, f"{http.base_url}/{entry.path}", dest, entry, limits, time.monotonic() + limits.total_timeout_s)


def test_download_ok(http_server: Any, tmp_path: Path) -> None:
    data, entry = _serve(http_server)
    _get(http_server, entry, tmp_path / "model.bin")
    assert (tmp_path / "model.bin").read_bytes() == data
    assert not (tmp_path / "model.bin.part").exists()


def test_resume_with_range(http_server: Any, tmp_path: Path) -> None:
    data, entry = _serve(http_server)
    (tmp_path / "model.bin.part").write_bytes(data[:123_456])  # what a killed process left behind
    _get(http_server, entry, tmp_path / "model.bin")
    assert (tmp_path / "model.bin").read_bytes() == data
    assert http_server.requests[-1][2] == "bytes=123456-"


def test_resume_of_a_wrong_prefix_is_caught_by_the_digest(http_server: Any, tmp_path: Path) -> None:
    data, entry = _serve(http_server)
    (tmp_path / "model.bin.part").write_bytes(os.urandom(1000))
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        _get(http_server, entry, tmp_path / "model.bin")
    assert not (tmp_path / "model.bin.part").exists()  # the next attempt starts clean
    _get(http_server, entry, tmp_path / "model.bin")
    assert (tmp_path / "model.bin").read_bytes() == data


@pytest.mark.parametrize(("fault", "text"), [("404", "HTTP 404"), ("500", "HTTP 500"),
                                             ("truncate", "truncated"), ("slow", "timeout")])
def test_faults_are_clear_errors(http_server: Any, tmp_path: Path, fault: str, text: str) -> None:
    _, entry = _serve(http_server)
    http_server.faults[entry.path] = fault
    http_server.set_slow_seconds(1.5)
    with pytest.raises(DownloadError, match=text):
        _get(http_server, entry, tmp_path / "model.bin")
    assert not (tmp_path / "model.bin").exists()


def test_truncated_once_then_resumed(http_server: Any, tmp_path: Path) -> None:
    data, entry = _serve(http_server)
    http_server.faults[entry.path] = "truncate"
    with pytest.raises(DownloadError):
        _get(http_server, entry, tmp_path / "model.bin", DownloadLimits(1, 1, 10, retries=0))
    part = tmp_path / "model.bin.part"
    have = part.stat().st_size
    assert 0 < have < len(data)
    del http_server.faults[entry.path]
    _get(http_server, entry, tmp_path / "model.bin")
    assert (tmp_path / "model.bin").read_bytes() == data
    assert http_server.requests[-1][2] == f"bytes={have}-"


def test_total_timeout(http_server: Any, tmp_path: Path) -> None:
    _, entry = _serve(http_server, size=640_000)
    http_server.faults[entry.path] = "slow"
    http_server.set_slow_seconds(0.3)  # each chunk arrives within the read timeout, the whole does not
    with pytest.raises(DownloadError, match="total download timeout"):
        _get(http_server, entry, tmp_path / "model.bin", DownloadLimits(1, 1, total_timeout_s=1.0, retries=0))


def test_hard_cap_at_declared_size(http_server: Any, tmp_path: Path) -> None:
    data, entry = _serve(http_server)
    small = entry.model_copy(update={"size": 1000})
    with pytest.raises(DownloadError, match="declares 1000"):
        _get(http_server, small, tmp_path / "model.bin")
    assert not (tmp_path / "model.bin").exists()
    assert not (tmp_path / "model.bin.part").exists() or (tmp_path / "model.bin.part").stat().st_size <= 1000


def test_connect_refused(tmp_path: Path) -> None:
    from builder.fleet.devservices import free_port

    entry = FileEntry(path="m", sha256="0" * 64, size=1)
    with requests.Session() as s, pytest.raises(DownloadError, match="cannot connect"):
        download_file(s, f"http://127.0.0.1:{free_port()}/m", tmp_path / "m", entry, LIMITS, time.monotonic() + 5)


def test_disk_full_is_clear(http_server: Any, tmp_path: Path) -> None:
    import subprocess

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        _, entry = _serve(http_server)
        with pytest.raises(DownloadError, match="disk full"):
            _get(http_server, entry, mnt / "model.bin")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_download_bundle_writes_exact_manifest_bytes(http_server: Any, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from agent.protocol.manifest import Manifest, ModelFiles, OutputLayout, TensorSpec

    data, entry = _serve(http_server, "model.tflite", 5000)
    m = Manifest(name="m", version=2, created=datetime.now(UTC), files=[entry], models=ModelFiles(cpu="model.tflite"),
                 input=TensorSpec(name="in", shape=[1, 8, 8, 3], dtype="uint8"), outputs=[], class_names=["a"],
                 layout=OutputLayout(decoder="ssd_postprocess", num_classes=1))
    raw = m.to_bytes()
    seen: list[tuple[int, int]] = []
    out = download_bundle(http_server.base_url, m, raw, b"{}", tmp_path / "stage", LIMITS,
                          progress=lambda d, t: seen.append((d, t)))
    assert (out / "manifest.json").read_bytes() == raw
    assert (out / "model.tflite").read_bytes() == data
    assert seen[-1] == (5000, 5000)


class _Trickle:
    """A real HTTP server on 127.0.0.1 that sends its headers, then one body byte per second."""

    def __init__(self, size: int = 1000, interval: float = 1.0) -> None:
        import socket
        import threading

        self.size, self.interval = size, interval
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: Any) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {self.size}\r\n\r\n".encode())
                for _ in range(self.size):
                    if self.stop.wait(self.interval):
                        return
                    conn.sendall(b"x")
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def test_trickling_server_hits_the_total_deadline(tmp_path: Path) -> None:
    """1 byte/s never trips a 2 s read timeout; the 3 s total deadline must still hold within a read."""
    srv = _Trickle()
    entry = FileEntry(path="model.bin", sha256="0" * 64, size=srv.size)
    limits = DownloadLimits(connect_timeout_s=1, read_timeout_s=2, total_timeout_s=3, retries=2)
    t0 = time.monotonic()
    try:
        with pytest.raises(DownloadError, match="total download timeout"), requests.Session() as s:
            download_file(s, f"http://127.0.0.1:{srv.port}/model.bin", tmp_path / "model.bin", entry, limits,
                          time.monotonic() + limits.total_timeout_s)
    finally:
        srv.close()
    took = time.monotonic() - t0
    assert took <= limits.total_timeout_s + limits.read_timeout_s, f"took {took:.1f} s"
