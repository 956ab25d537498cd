"""Verifying an announcement before anything is downloaded: who signed it, and may this node take it.

The signature is checked over the exact manifest bytes before they are parsed; the policy checks
(target, expiry present, replay/downgrade, agent version, size, pin; the expiry date once the
clock is synchronized) run on the authenticated manifest.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import ValidationError

from agent.protocol.manifest import Manifest
from agent.protocol.messages import Announcement
from agent.security.bundle import BundleError, parse_manifest
from agent.security.signing import Keyring, SignatureError
from agent.updates.errors import UpdateRejected
from agent.updates.intake import MAX_ANNOUNCEMENT_BYTES
from agent.updates.store import StoreState


def version_tuple(v: str) -> tuple[int, ...]:
    parts = []
    for p in v.split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def authenticate(payload: bytes, keyring: Keyring) -> tuple[Announcement, Manifest]:
    """Signature by a pinned key over the exact manifest bytes, then (only then) parse them."""
    if len(payload) > MAX_ANNOUNCEMENT_BYTES:
        raise UpdateRejected(f"announcement of {len(payload)} bytes, over the limit of {MAX_ANNOUNCEMENT_BYTES}")
    try:
        ann = Announcement.model_validate_json(payload)
        data, sig = ann.manifest_bytes(), ann.signature()
    except (ValidationError, ValueError) as exc:
        raise UpdateRejected(f"malformed announcement: {str(exc).splitlines()[0]}") from None
    try:
        keyring.verify(data, ann.key_id, sig)  # the exact bytes, before any parsing
    except SignatureError as exc:
        raise UpdateRejected(str(exc)) from None
    try:
        return ann, parse_manifest(data)
    except BundleError as exc:
        raise UpdateRejected(str(exc)) from None


def check_manifest(m: Manifest, *, node: str, groups: list[str], state: StoreState, max_bundle_bytes: int,
                   agent_version: str, require_expires: bool = False, backend: str | None = None) -> None:
    """The policy checks on an authenticated manifest that need no clock; raise UpdateRejected.

    Sizes count the files this node fetches (`m.needed_files(backend)`: all of them for a v1 manifest).
    The expiry itself is judged by `check_expiry`, once the clock can be trusted (see ClockGate)."""
    if not m.target.matches(node, groups):
        raise UpdateRejected(f"manifest targets {m.target}, not this node ({node}, groups {groups})")
    if m.expires is None and require_expires:
        raise UpdateRejected("manifest has no expiry (`expires`), required by updates.require_expires; "
                             "re-publish it (edge-builder publish sets one)")
    if m.version <= state.high_water:
        raise UpdateRejected(
            f"version {m.version} is not above the high-water mark {state.high_water} (replay or downgrade)"
        )
    if version_tuple(agent_version) < version_tuple(m.min_agent_version):
        raise UpdateRejected(f"needs agent {m.min_agent_version}, this node runs {agent_version}")
    fetched = m.needed_files(backend)
    total = sum(f.size for f in fetched)
    too_big = [f for f in fetched if f.size > max_bundle_bytes]
    if too_big or total > max_bundle_bytes:
        what = too_big[0].path if too_big else "bundle"
        size = too_big[0].size if too_big else total
        raise UpdateRejected(f"{what} declares {size} bytes, over the limit of {max_bundle_bytes}")
    if state.pinned is not None:
        raise UpdateRejected(f"node is pinned to v{state.pinned}; send `unpin` (edge-builder fleet unpin)")


def preferred_backend(engine: object) -> str | None:
    """The backend a node prefers, from its running engine's config: "edgetpu" when it is set to use an
    Edge TPU (even while degraded to the CPU: the TPU may come back), "cpu" when it runs the CPU only, None
    when unknown (no engine yet, or one without a config: fetch every file, never too few).

    Config, not the hardware of the moment: a TPU unplugged at download time must not leave the node
    without the TPU model once it is back; the CPU fallback is in the Edge TPU list anyway."""
    cfg = getattr(engine, "cfg", None)
    if cfg is None:  # a TPU pool: its members carry the config
        cfg = getattr(next(iter(getattr(engine, "members", None) or []), None), "cfg", None)
    preferred = getattr(getattr(cfg, "backend", None), "preferred", None)
    if not callable(preferred):
        return None
    accel = preferred()
    return (str(getattr(accel, "type", "")) or None) if accel is not None else "cpu"


def check_expiry(m: Manifest, now: datetime | None = None) -> None:
    """Refuse a manifest past its `expires` (a freeze or replay of an old announcement, TUF's rule)."""
    if m.is_expired(now):
        raise UpdateRejected(f"manifest expired at {m.expires.isoformat() if m.expires else '?'}")


__all__ = ["authenticate", "check_expiry", "check_manifest", "preferred_backend", "version_tuple"]
