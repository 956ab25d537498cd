"""Uploads on request: the node pushes its ring to the builder's collector over HTTP(S), frame by frame.

    PUT {collector_url}/api/v1/frames/{id}
        Authorization: Bearer <node token>      X-Edge-Node: <node id>
        X-Edge-Meta-Length: <n>                 X-Edge-Sha256: <sha256 of the body>
        body: <n bytes of metadata JSON><image bytes>

201 stored, 200 already stored (same bytes): the frame is deleted from the ring only then. A dropped
connection or a 5xx is retried (with backoff) a few times, then the round stops and the rest waits for the
next request: nothing leaves the ring without the collector's acknowledgement. 401/403 stop the round (a
wrong credential does not improve by retrying); another 4xx leaves that frame in the ring, counted as refused.

Requests come as a retained MQTT message on `{prefix}/node/{node}/capture/upload` or `{prefix}/capture/upload`
(`{"request_id": "...", "max_frames": N}`); a request id is served once, also across restarts.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, ValidationError

from agent.atomic import atomic_write
from agent.capture.ring import CaptureRing
from agent.protocol.topics import Topics

log = logging.getLogger(__name__)
UPLOAD_PATH = "/api/v1/frames/"
STATE_FILE = "upload_state.json"


class UploadRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    request_id: str = ""
    max_frames: int | None = None


@dataclass
class UploadReport:
    request_id: str = ""
    sent: int = 0  # acknowledged and deleted from the ring
    refused: int = 0  # a 4xx for that frame: kept in the ring
    remaining: int = 0
    error: str | None = None  # why the round stopped early
    finished_at: float = 0.0


class _Stop(Exception):
    """The round cannot go on (credential refused, collector unreachable)."""


class Uploader:
    def __init__(self, ring: CaptureRing, url: str, node: str, token: str, ca_file: Path | None = None,
                 timeout_s: float = 30.0, attempts: int = 3, backoff_s: float = 1.0) -> None:
        self.ring, self.node, self.token = ring, node, token
        u = urlparse(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"collector url must be http(s)://host:port, not {url!r}")
        self.url, self.timeout_s, self.attempts, self.backoff_s = u, timeout_s, attempts, backoff_s
        self.tls = ssl.create_default_context(cafile=str(ca_file) if ca_file else None) if u.scheme == "https" else None
        self.last: UploadReport | None = None
        self.on_report: list[Callable[[UploadReport], None]] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pending: UploadRequest | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # ---- one frame ----------------------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        port = self.url.port
        if self.tls is not None:
            return http.client.HTTPSConnection(self.url.hostname or "", port, timeout=self.timeout_s,
                                               context=self.tls)
        return http.client.HTTPConnection(self.url.hostname or "", port, timeout=self.timeout_s)

    def _put(self, fid: str, body: bytes, meta_len: int) -> int:
        conn = self._connection()
        try:
            conn.request("PUT", f"{self.url.path.rstrip('/')}{UPLOAD_PATH}{fid}", body=body, headers={
                "Authorization": f"Bearer {self.token}", "X-Edge-Node": self.node,
                "X-Edge-Meta-Length": str(meta_len), "X-Edge-Sha256": hashlib.sha256(body).hexdigest(),
                "Content-Type": "application/octet-stream"})
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def send(self, fid: str) -> bool:
        """Upload one frame; True when acknowledged (and deleted), False when refused (kept)."""
        item = self.ring.read(fid)
        if item is None:
            return False
        meta, image = item
        head = meta.model_dump_json().encode()
        error = ""
        for attempt in range(self.attempts):
            try:
                status = self._put(fid, head + image, len(head))
            except (OSError, http.client.HTTPException) as exc:
                error = f"collector unreachable: {exc}"
            else:
                if status in (200, 201):
                    self.ring.delete(fid)
                    return True
                if status in (401, 403):
                    raise _Stop(f"collector refused the credential of {self.node} (HTTP {status})")
                if status < 500 and status not in (408, 429):
                    log.warning("collector refused frame %s: HTTP %d", fid, status)
                    return False
                error = f"collector answered HTTP {status}"
            if attempt + 1 < self.attempts and self._stop.wait(self.backoff_s * 2**attempt):
                break
        raise _Stop(error or "stopped")

    # ---- a round ------------------------------------------------------------------------------------
    def upload_all(self, max_frames: int | None = None, request_id: str = "") -> UploadReport:
        rep = UploadReport(request_id=request_id)
        ids = self.ring.ids()
        for fid in ids[:max_frames] if max_frames else ids:
            if self._stop.is_set():
                rep.error = "stopped"
                break
            try:
                if self.send(fid):
                    rep.sent += 1
                else:
                    rep.refused += 1
            except _Stop as exc:
                rep.error = str(exc)
                break
        rep.remaining, rep.finished_at = self.ring.count, time.time()
        self.last = rep
        for fn in self.on_report:
            fn(rep)
        return rep

    # ---- requests (MQTT) and the worker thread ------------------------------------------------------
    def _served(self) -> list[str]:
        try:
            return [str(x) for x in json.loads((self.ring.root / STATE_FILE).read_text()).get("served", [])]
        except (OSError, ValueError, AttributeError):
            return []

    def request(self, req: UploadRequest | None = None) -> bool:
        """Queue an upload round; False when this request id was served already."""
        req = req or UploadRequest()
        if req.request_id and req.request_id in self._served():
            return False
        with self._lock:
            self._pending = req
        self._wake.set()
        return True

    def on_message(self, msg: Any) -> None:
        """MQTT handler (paho's thread): parse and queue, never block. An empty payload clears the retained
        request: nothing to do."""
        if not msg.payload:
            return
        try:
            self.request(UploadRequest.model_validate_json(msg.payload))
        except ValidationError as exc:
            log.warning("capture upload request on %s ignored: %s", getattr(msg, "topic", "?"), exc)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._wake.wait(0.5):
                continue
            self._wake.clear()
            with self._lock:
                req, self._pending = self._pending, None
            if req is None:
                continue
            rep = self.upload_all(req.max_frames, req.request_id)
            if req.request_id and rep.error is None:
                served = [*self._served(), req.request_id][-50:]  # the last 50 request ids
                atomic_write(self.ring.root / STATE_FILE, json.dumps({"served": served}).encode())
            log.info("capture upload: %s", asdict(rep))

    def start(self) -> Uploader:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="capture-upload", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 1)


def status_topic(prefix: str, node: str) -> str:
    """Where the daemon may publish each round's UploadReport (retained JSON, `report_json`)."""
    return Topics(prefix).capture_status(node)


def report_json(rep: UploadReport) -> str:
    return json.dumps(asdict(rep))


def upload_topics(prefix: str, node: str) -> list[str]:
    """Where upload requests arrive (retained): this node's topic and the fleet-wide one."""
    t = Topics(prefix)
    return [t.capture_upload(node), t.capture_upload()]


def read_token(path: Path) -> str:
    token = Path(path).read_text().strip()
    if not token:
        raise ValueError(f"{path}: empty collector credential")
    return token
