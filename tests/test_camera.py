"""Camera sources and the capture thread, on real video files, image directories and a real MJPEG-over-HTTP
stream (OpenCV's FFmpeg reads it like an IP camera) served from loopback: freshest-frame dropping,
reconnect loops when the source disappears, resumption when it returns, and timeouts that keep a hanging
stream from hanging the agent."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import wait_for

from agent.camera.capture import Camera
from agent.camera.frame import CameraState, LatestFrame
from agent.config import CameraConfig
from builder.data.synth import make_video


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("cam") / "clip.avi"
    make_video(p, n_frames=12, size=(160, 120), fps=30, seed=3)
    return p


def fast(**kw: object) -> CameraConfig:
    base: dict[str, object] = dict(open_timeout_s=2.0, read_timeout_s=1.0, backoff_initial_s=0.05, backoff_max_s=0.2)
    base.update(kw)
    return CameraConfig(**base)  # type: ignore[arg-type]


class MjpegServer:
    """A minimal IP camera: multipart/x-mixed-replace JPEG stream over HTTP on loopback. `mode`:
    "stream" sends frames until stopped, "hang" sends `n` frames then goes silent with the socket open,
    "silent" accepts and never answers, "close" sends `n` frames then closes the connection."""

    def __init__(self, mode: str = "stream", n: int = 5) -> None:
        self.mode, self.n = mode, n
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/video.mjpg"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        try:
            conn.recv(4096)
            if self.mode == "silent":
                self._stop.wait(30)
                return
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n")
            i = 0
            while not self._stop.is_set() and (self.mode == "stream" or i < self.n):
                img = np.full((120, 160, 3), (i * 20) % 255, np.uint8)
                jpg = cv2.imencode(".jpg", img)[1].tobytes()
                conn.sendall(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg) + jpg
                             + b"\r\n")
                i += 1
                time.sleep(0.03)
            if self.mode == "hang":
                self._stop.wait(30)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(2)


@pytest.fixture
def mjpeg() -> Iterator[Callable[..., MjpegServer]]:
    made: list[MjpegServer] = []

    def make(mode: str = "stream", n: int = 5) -> MjpegServer:
        s = MjpegServer(mode, n)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def test_latest_frame_slot_keeps_freshest_and_counts_drops() -> None:
    from agent.camera.frame import Frame

    slot = LatestFrame()
    for i in range(1, 6):
        slot.put(Frame(np.zeros((2, 2, 3), np.uint8), time.time(), time.monotonic(), i))
    f = slot.get(0.1)
    assert f is not None and f.index == 5
    assert slot.dropped == 4
    assert slot.get(0.05) is None  # nothing new


def test_video_file_frames_and_loop(video: Path) -> None:
    cam = Camera(fast(source=str(video), realtime=False, loop=True)).start()
    try:
        got = []
        while len(got) < 30:  # more than the 12 frames in the file: it loops
            f = cam.get(timeout=3)
            assert f is not None, cam.status()
            got.append(f)
            time.sleep(0.001)
        assert got[0].image.shape == (120, 160, 3)
        assert cam.state == CameraState.STREAMING
        assert cam.reconnects == 0
        assert [g.index for g in got] == sorted(g.index for g in got)
    finally:
        cam.stop()
    assert cam.state == CameraState.STOPPED


def test_slow_consumer_gets_fresh_frames_and_drops_are_counted(video: Path) -> None:
    cam = Camera(fast(source=str(video), realtime=False, loop=True)).start()
    try:
        a = cam.get(timeout=3)
        time.sleep(0.3)  # a slow inference
        b = cam.get(timeout=3)
        assert a is not None and b is not None
        assert b.index > a.index + 1  # skipped the backlog
        assert cam.dropped >= b.index - a.index - 1 > 0
    finally:
        cam.stop()


def test_non_looping_file_ends_without_reconnecting(video: Path) -> None:
    cam = Camera(fast(source=str(video), realtime=False, loop=False)).start()
    try:
        assert wait_for(lambda: cam.state == CameraState.ENDED, 5), cam.status()
        assert cam.frames == 12 and cam.reconnects == 0
    finally:
        cam.stop()


def test_removed_file_reconnect_loop_then_resumes(video: Path, tmp_path: Path) -> None:
    clip = tmp_path / "cam.avi"
    shutil.copy(video, clip)
    cam = Camera(fast(source=str(clip), realtime=True, loop=True)).start()
    try:
        assert cam.get(timeout=3) is not None
        clip.unlink()  # the camera "disappears": noticed when the loop reopens the path
        assert wait_for(lambda: cam.reconnects >= 2, 5), cam.status()
        assert cam.state in (CameraState.RECONNECTING, CameraState.CONNECTING)
        assert "does not exist" in (cam.last_error or "")
        cam.get(timeout=0)  # drain
        assert cam.get(timeout=0.3) is None  # no frames while it is gone
        shutil.copy(video, clip)  # it comes back
        f = cam.get(timeout=5)
        assert f is not None, cam.status()
        assert wait_for(lambda: cam.state == CameraState.STREAMING, 3)
    finally:
        cam.stop()


def test_missing_usb_device_is_a_reconnect_loop() -> None:
    cam = Camera(fast(source="/dev/video97")).start()
    try:
        assert wait_for(lambda: cam.reconnects >= 3, 5), cam.status()
        assert "does not exist" in (cam.last_error or "")
        assert cam.get(timeout=0.1) is None
    finally:
        t0 = time.monotonic()
        cam.stop()
        assert time.monotonic() - t0 < 2.5


def test_image_directory_source(tmp_path: Path) -> None:
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i:02d}.png"), np.full((40, 50, 3), i * 80, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    cam = Camera(fast(source=str(tmp_path), fps=50)).start()
    try:
        means = []
        for _ in range(5):
            f = cam.get(timeout=2)
            assert f is not None
            means.append(int(f.image.mean()))
            time.sleep(0.05)
        assert cam.description.startswith("images:")
        assert set(means) <= {0, 80, 160}
    finally:
        cam.stop()


def test_network_stream_closed_then_back(mjpeg: Callable[..., MjpegServer]) -> None:
    srv = mjpeg("close", n=10)
    cam = Camera(fast(source=srv.url)).start()
    try:
        assert cam.get(timeout=5) is not None, cam.status()
        assert cam.description.startswith("rtsp:")  # network streams share the RTSP path
        assert wait_for(lambda: cam.reconnects >= 1 and srv.connections >= 2, 8), cam.status()
        srv.mode = "stream"  # the camera is healthy again
        assert wait_for(lambda: cam.state == CameraState.STREAMING, 8), cam.status()
        cam.get(timeout=0)
        assert cam.get(timeout=3) is not None
    finally:
        cam.stop()


def test_stalled_stream_is_detected_and_reconnected(mjpeg: Callable[..., MjpegServer]) -> None:
    srv = mjpeg("hang", n=5)
    cam = Camera(fast(source=srv.url, read_timeout_s=0.8)).start()
    try:
        assert cam.get(timeout=5) is not None
        # The server keeps the socket open and sends nothing: a stall, then a new session.
        assert wait_for(lambda: srv.connections >= 2, 8), cam.status()
        assert cam.reconnects >= 1
        assert "stalled" in (cam.last_error or "") or "closed" in (cam.last_error or "") or cam.stalls >= 1
    finally:
        cam.stop()


def test_silent_server_open_times_out_without_hanging(mjpeg: Callable[..., MjpegServer]) -> None:
    srv = mjpeg("silent")
    cam = Camera(fast(source=srv.url.replace("http", "rtsp"), open_timeout_s=0.7)).start()
    try:
        assert wait_for(lambda: cam.reconnects >= 1, 6), cam.status()
        assert cam.last_error
    finally:
        t0 = time.monotonic()
        cam.stop()
        assert time.monotonic() - t0 < 2.5  # an abandoned session never blocks shutdown


def test_backoff_is_exponential_capped_and_jittered() -> None:
    cam = Camera(CameraConfig(source="x.mp4", backoff_initial_s=0.5, backoff_max_s=8.0), seed=1)
    for attempt, nominal in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0)]:
        delays = [cam.backoff_delay(attempt) for _ in range(50)]
        assert all(nominal / 2 <= d <= nominal for d in delays)
        assert max(delays) - min(delays) > nominal * 0.1  # jittered, not lockstep


def test_source_kind_resolution(tmp_path: Path) -> None:
    assert CameraConfig(source="rtsp://u:p@cam/stream").resolved_kind() == "rtsp"
    assert CameraConfig(source="/dev/video2").resolved_kind() == "usb"
    assert CameraConfig(source="0").resolved_kind() == "usb"
    assert CameraConfig(source=str(tmp_path)).resolved_kind() == "images"
    assert CameraConfig(source="clip.mp4").resolved_kind() == "file"
    assert CameraConfig(source="picamera2").resolved_kind() == "picamera2"
    cam = Camera(CameraConfig(source="rtsp://admin:secret@10.0.0.5/h264"))
    assert "secret" not in cam.description
