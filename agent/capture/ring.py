"""The capture ring: frames on disk, bounded by count and bytes, oldest dropped first, survives restarts.

Each frame is `<id>.jpg` (or .png) + `<id>.json` (agent.capture.meta.CaptureMeta), both written with
agent.atomic; the metadata goes last, so a frame without one (a power cut between the two) is debris and
removed at the next start. Ids begin with the capture time in ns, so sorted names are oldest first.
Room is made *before* a frame is written, under one lock, so the ring never holds more than its caps.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

from agent.atomic import atomic_write
from agent.capture.meta import FRAME_ID, CaptureMeta

log = logging.getLogger(__name__)


class RingError(Exception):
    """A frame that can never fit (bigger than the whole ring)."""


class CaptureRing:
    def __init__(self, root: Path, max_frames: int, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self._lock = threading.Lock()
        self._sizes: OrderedDict[str, int] = OrderedDict()  # id -> bytes on disk (image + metadata)
        self._image: dict[str, str] = {}  # id -> image file name
        self.dropped = 0  # frames evicted to make room
        self.root.mkdir(parents=True, exist_ok=True)
        self._scan()

    # ---- state ------------------------------------------------------------------------------------
    def _scan(self) -> None:
        """Index what a previous run left; remove debris (temp files, images without metadata)."""
        names = sorted(os.listdir(self.root))
        metas = {n[:-5] for n in names if n.endswith(".json") and FRAME_ID.match(n[:-5])}
        for n in names:
            stem, _, ext = n.partition(".")
            p = self.root / n
            if (n.startswith(".") and n.endswith(".tmp")) or (ext in ("jpg", "png") and stem not in metas):
                p.unlink(missing_ok=True)
        for fid in sorted(metas):
            img = next((f"{fid}.{e}" for e in ("jpg", "png") if (self.root / f"{fid}.{e}").exists()), None)
            if img is None:
                (self.root / f"{fid}.json").unlink(missing_ok=True)
                continue
            self._image[fid] = img
            self._sizes[fid] = (self.root / img).stat().st_size + (self.root / f"{fid}.json").stat().st_size
        with self._lock:
            self._make_room(0, 0)  # the caps may have shrunk since

    @property
    def count(self) -> int:
        return len(self._sizes)

    def size(self) -> int:
        """Bytes held (images + metadata)."""
        with self._lock:
            return sum(self._sizes.values())

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._sizes)

    # ---- writes -----------------------------------------------------------------------------------
    def _make_room(self, n_frames: int, n_bytes: int) -> None:
        while self._sizes and (len(self._sizes) + n_frames > self.max_frames
                               or sum(self._sizes.values()) + n_bytes > self.max_bytes):
            oldest = next(iter(self._sizes))
            self._remove(oldest)
            self.dropped += 1

    def _remove(self, fid: str) -> None:
        (self.root / f"{fid}.json").unlink(missing_ok=True)  # metadata first: the frame is gone
        (self.root / self._image.pop(fid, f"{fid}.jpg")).unlink(missing_ok=True)
        self._sizes.pop(fid, None)

    def put(self, meta: CaptureMeta, image: bytes) -> None:
        body = meta.model_dump_json().encode()
        size = len(image) + len(body)
        if size > self.max_bytes:
            raise RingError(f"frame {meta.id} ({size} bytes) exceeds the ring ({self.max_bytes} bytes)")
        img_name = f"{meta.id}.{meta.image_format}"
        with self._lock:
            self._make_room(1, size)
            atomic_write(self.root / img_name, image)
            atomic_write(self.root / f"{meta.id}.json", body)
            self._image[meta.id] = img_name
            self._sizes[meta.id] = size

    def read(self, fid: str) -> tuple[CaptureMeta, bytes] | None:
        """A frame's metadata and image bytes, or None when it is gone (evicted, deleted)."""
        with self._lock:
            img = self._image.get(fid)
            if img is None:
                return None
            try:
                meta = CaptureMeta.model_validate_json((self.root / f"{fid}.json").read_bytes())
                return meta, (self.root / img).read_bytes()
            except (OSError, ValueError) as exc:
                log.warning("capture ring: dropping unreadable frame %s: %s", fid, exc)
                self._remove(fid)
                return None

    def delete(self, fid: str) -> None:
        with self._lock:
            if fid in self._sizes:
                self._remove(fid)
