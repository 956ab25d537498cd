"""Where uploads land: DIR/frames/<node>/<id>.{jpg,png} + <id>.json, checked before anything is written.

An upload is one body: the metadata JSON (agent.capture.meta.CaptureMeta) followed by the image. It is
stored only if it arrived whole (length and sha256), the metadata parses, names this node and this id, and
the image is the JPEG/PNG of the announced size and hash. The same frame again is acknowledged without a
second copy (a retry after a lost acknowledgement); other bytes under the same id are a conflict.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from agent.atomic import atomic_write
from agent.capture.meta import FRAME_ID, CaptureMeta

MAGIC = {"jpg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}


class UploadError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Stored:
    meta: CaptureMeta
    created: bool  # False: the same frame was already here


def frames_dir(root: Path) -> Path:
    return Path(root) / "frames"


def parse_upload(fid: str, node: str, body: bytes, meta_len: int, sha256: str) -> tuple[CaptureMeta, bytes]:
    if not FRAME_ID.match(fid):
        raise UploadError(400, "bad frame id")
    if not hmac.compare_digest(hashlib.sha256(body).hexdigest(), sha256.lower()):
        raise UploadError(400, "body does not match X-Edge-Sha256 (truncated or corrupted)")
    if not 0 < meta_len < len(body):
        raise UploadError(400, "X-Edge-Meta-Length out of range")
    try:
        meta = CaptureMeta.model_validate_json(body[:meta_len])
    except ValidationError as exc:
        raise UploadError(400, f"bad metadata: {exc.errors()[0]['msg']}") from None
    image = body[meta_len:]
    if meta.id != fid or meta.node != node:
        raise UploadError(403, "the metadata names another frame or node")
    if len(image) != meta.image_size or hashlib.sha256(image).hexdigest() != meta.image_sha256:
        raise UploadError(400, "image does not match its metadata (size or sha256)")
    if not image.startswith(MAGIC[meta.image_format]):
        raise UploadError(415, f"not a {meta.image_format} image")
    return meta, image


def store(root: Path, meta: CaptureMeta, image: bytes) -> Stored:
    """Write the frame (image first, metadata last: a frame counts once its metadata exists)."""
    d = frames_dir(root) / meta.node
    d.mkdir(parents=True, exist_ok=True)
    mpath = d / f"{meta.id}.json"
    if mpath.exists():
        old = CaptureMeta.model_validate_json(mpath.read_bytes())
        if old.image_sha256 == meta.image_sha256:
            return Stored(old, False)
        raise UploadError(409, f"frame {meta.id} exists with other content")
    atomic_write(d / f"{meta.id}.{meta.image_format}", image)
    atomic_write(mpath, meta.model_dump_json().encode())
    return Stored(meta, True)


def collected(root: Path) -> list[tuple[CaptureMeta, Path]]:
    """Every complete frame under DIR/frames, oldest first."""
    out = []
    for mpath in sorted(frames_dir(root).glob("*/*.json")):
        try:
            meta = CaptureMeta.model_validate_json(mpath.read_bytes())
        except (OSError, ValidationError):
            continue
        img = mpath.with_suffix(f".{meta.image_format}")
        if img.is_file():
            out.append((meta, img))
    return sorted(out, key=lambda x: x[0].id)
