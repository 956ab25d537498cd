"""Streaming bundle download: staging dir, HTTP Range resume, timeouts, size cap, sha256 on the fly.

Nothing downloaded is trusted until its sha256 matches the signed manifest; a file is written as
`<name>.part` and renamed only after its size and digest check out. A `.part` left by a crash or a
broken connection is resumed with `Range: bytes=N-` (its first N bytes are re-hashed from disk).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import requests
import urllib3

from agent.atomic import fsync_dir
from agent.protocol.manifest import MANIFEST_NAME, SIGNATURE_NAME, FileEntry, Manifest
from agent.updates.store import describe_os_error

log = logging.getLogger(__name__)

CHUNK = 64 * 1024


class DownloadError(Exception):
    """A download failed; the message names the file and the cause (for the update status)."""


@dataclass(frozen=True)
class DownloadLimits:
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    total_timeout_s: float = 600.0
    retries: int = 2


ProgressFn = Callable[[int, int], None]  # (bytes done, bytes total)


def _join(base_url: str, rel: str) -> str:
    return base_url.rstrip("/") + "/" + rel


def _hash_prefix(path: Path) -> tuple[hashlib._Hash, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            n += len(block)
    return h, n


def download_file(
    session: requests.Session,
    url: str,
    dest: Path,
    entry: FileEntry,
    limits: DownloadLimits,
    deadline: float,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Fetch `url` into `dest`, resuming `dest.part`; raise DownloadError unless size and sha256 match."""
    if dest.is_file() and dest.stat().st_size == entry.size:
        return  # finished before a restart; the bundle check re-hashes it
    part = dest.with_name(dest.name + ".part")
    attempts = 0
    while True:
        attempts += 1
        try:
            _fetch_once(session, url, part, entry, limits, deadline, progress)
            break
        except _Retryable as exc:
            if attempts > limits.retries or time.monotonic() >= deadline:
                raise DownloadError(f"{entry.path}: {exc}") from None
            log.warning("%s: %s; resuming (attempt %d)", entry.path, exc, attempts + 1)
            time.sleep(min(0.2 * attempts, 1.0))
    os.replace(part, dest)


class _Retryable(Exception):
    """A transfer broke off mid-way (truncated, connection reset, read timeout): resume with Range."""


def _fetch_once(
    session: requests.Session,
    url: str,
    part: Path,
    entry: FileEntry,
    limits: DownloadLimits,
    deadline: float,
    progress: Callable[[int], None] | None,
) -> None:
    """One GET of `url` into `part`, from where a previous attempt left off."""
    have, h = _resume_point(part, entry)
    if have == entry.size:
        _check_digest(part, entry, h)
        return
    resp = _request(session, url, entry, limits, deadline, have)
    with resp:
        mode, have, h = _accept_response(resp, url, part, entry, have, h)
        got = _stream_to(part, mode, resp, entry, limits, deadline, have, h, progress)
    if got < entry.size:
        raise _Retryable(f"truncated download: got {got} of {entry.size} bytes")
    _check_digest(part, entry, h)


def _resume_point(part: Path, entry: FileEntry) -> tuple[int, hashlib._Hash]:
    """Bytes already in `part` and their running sha256 (a `.part` longer than the file starts over)."""
    have = part.stat().st_size if part.exists() else 0
    if have > entry.size:
        part.unlink()
        have = 0
    if have:
        h, have = _hash_prefix(part)
    else:
        h = hashlib.sha256()
    return have, h


def _request(
    session: requests.Session, url: str, entry: FileEntry, limits: DownloadLimits, deadline: float, have: int
) -> requests.Response:
    headers = {"Range": f"bytes={have}-"} if have else {}
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DownloadError(f"{entry.path}: total download timeout ({limits.total_timeout_s:.0f} s) exceeded")
    try:
        return session.get(
            url, headers=headers, stream=True,
            timeout=(min(limits.connect_timeout_s, remaining), min(limits.read_timeout_s, remaining)),
        )
    except requests.ConnectTimeout:
        raise DownloadError(f"{entry.path}: connect timeout ({limits.connect_timeout_s:.0f} s) to {url}") from None
    except requests.ConnectionError as exc:
        raise DownloadError(f"{entry.path}: cannot connect to {url}: {_short(exc)}") from None
    except requests.RequestException as exc:
        raise DownloadError(f"{entry.path}: request failed: {_short(exc)}") from None


def _accept_response(
    resp: requests.Response, url: str, part: Path, entry: FileEntry, have: int, h: hashlib._Hash
) -> tuple[str, int, hashlib._Hash]:
    """How to write the body (append to a resumed `.part` or start over), or why not to."""
    if resp.status_code == 206 and have:
        mode = "ab"
    elif resp.status_code == 200:
        if have:
            log.info("%s: server ignored Range; downloading from the start", entry.path)
        mode, have, h = "wb", 0, hashlib.sha256()
    elif resp.status_code == 416 and have:
        part.unlink(missing_ok=True)  # our partial file is not a prefix of theirs: start over
        raise _Retryable("server refused the resume range")
    else:
        raise DownloadError(f"{entry.path}: HTTP {resp.status_code} {resp.reason or ''} from {url}".rstrip())
    declared = resp.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and have + int(declared) > entry.size:
        raise DownloadError(
            f"{entry.path}: server offers {have + int(declared)} bytes, manifest declares {entry.size}"
        )
    return mode, have, h


def _stream_to(
    part: Path,
    mode: str,
    resp: requests.Response,
    entry: FileEntry,
    limits: DownloadLimits,
    deadline: float,
    have: int,
    h: hashlib._Hash,
    progress: Callable[[int], None] | None,
) -> int:
    """Write the body into `part`, hashing on the way; returns the bytes now in `part`."""
    got = have
    try:
        with open(part, mode) as f:
            for chunk in _body_chunks(resp, limits, deadline):
                if got + len(chunk) > entry.size:
                    # Hard cap: never store more than the signed manifest declares.
                    raise DownloadError(f"{entry.path}: server sent more than the declared {entry.size} bytes")
                f.write(chunk)
                h.update(chunk)
                got += len(chunk)
                if progress:
                    progress(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    except _PastDeadline:
        raise DownloadError(_total_timeout(entry, limits, got)) from None
    except urllib3.exceptions.ReadTimeoutError:
        if time.monotonic() >= deadline:
            raise DownloadError(_total_timeout(entry, limits, got)) from None
        raise _Retryable(f"read timeout ({limits.read_timeout_s:.0f} s) after {got} of {entry.size} bytes") from None
    except (urllib3.exceptions.HTTPError, requests.RequestException) as exc:  # (subclasses of OSError or not)
        raise _Retryable(f"truncated download: connection broken after {got} of {entry.size} bytes "
                         f"({_short(exc)})") from None
    except OSError as exc:
        raise DownloadError(f"{entry.path}: {describe_os_error(exc, 'writing the download')}") from None
    return got


class _PastDeadline(Exception):
    """The total download deadline passed between two reads."""


def _body_chunks(resp: requests.Response, limits: DownloadLimits, deadline: float) -> Iterator[bytes]:
    """The body as it arrives, one socket read at a time, each bounded by min(read timeout, time left).

    requests' iter_content fills a whole chunk before returning, so a server trickling a byte now and
    then would never hit the read timeout nor reach a deadline check: read1 returns after one recv.
    """
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _PastDeadline
        conn = resp.raw.connection
        if conn is not None and conn.sock is not None:
            conn.sock.settimeout(min(limits.read_timeout_s, remaining))
        chunk = resp.raw.read1(CHUNK, decode_content=True)
        if not chunk:
            return
        yield chunk


def _total_timeout(entry: FileEntry, limits: DownloadLimits, got: int) -> str:
    return (f"{entry.path}: total download timeout ({limits.total_timeout_s:.0f} s) exceeded "
            f"after {got} of {entry.size} bytes")


def _check_digest(part: Path, entry: FileEntry, h: hashlib._Hash) -> None:
    digest = h.hexdigest()
    if digest != entry.sha256:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{entry.path}: sha256 mismatch: got {digest[:12]}…, manifest says {entry.sha256[:12]}…"
        )


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + "…"


def download_bundle(
    base_url: str,
    manifest: Manifest,
    manifest_bytes: bytes,
    signature_json: bytes,
    staging: Path,
    limits: DownloadLimits,
    progress: ProgressFn | None = None,
    session: requests.Session | None = None,
    files: list[FileEntry] | None = None,
) -> Path:
    """Download `files` (default: every file of `manifest`) into `staging` (resuming), plus the exact
    signed manifest. A node passes `manifest.needed_files(its backend)`: a v2 manifest's list for it.

    Returns `staging`, a bundle directory whose downloaded files match the manifest's sizes and digests.
    """
    entries = list(manifest.files) if files is None else files
    try:
        staging.mkdir(parents=True, exist_ok=True)
        # The manifest and signature come from the announcement, not the server: write the exact bytes.
        (staging / MANIFEST_NAME).write_bytes(manifest_bytes)
        (staging / SIGNATURE_NAME).write_bytes(signature_json)
    except OSError as exc:
        raise DownloadError(describe_os_error(exc, "preparing the staging directory")) from None
    total = sum(e.size for e in entries)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    deadline = time.monotonic() + limits.total_timeout_s
    own = session is None
    sess = session or requests.Session()
    try:
        for entry in entries:
            dest = staging / entry.path
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DownloadError(describe_os_error(exc, "preparing the staging directory")) from None
            if dest.is_file() and dest.stat().st_size == entry.size:
                tick(entry.size)
                continue
            download_file(sess, _join(base_url, entry.path), dest, entry, limits, deadline, tick)
    finally:
        if own:
            sess.close()
    with contextlib.suppress(OSError):
        fsync_dir(staging)
    return staging


__all__ = ["DownloadError", "DownloadLimits", "download_bundle", "download_file"]
