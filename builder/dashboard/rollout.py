"""Rollout from the dashboard: publish one listed bundle to a target (all | group:G | node:N).

Publishing itself belongs to builder.publish (copy the files where nodes fetch them, then the signed,
retained Announcement on Topics.announce(target)); `publish` below is the one place that calls it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from agent.bundle import Bundle, BundleError
from agent.protocol.manifest import MANIFEST_NAME, SIGNATURE_NAME, Target
from agent.protocol.messages import Announcement
from agent.protocol.topics import Topics
from agent.signing import SignatureError, SigningKey, read_signature_file
from builder.dashboard.bundles import BundleInfo
from builder.dashboard.link import FleetLink, LinkError


class RolloutError(RuntimeError):
    """Why a rollout could not be published; shown on the page."""


@dataclass(frozen=True)
class PublishConfig:
    http_base: str | None  # URL at which the --bundles directories are served
    key: Path | None  # signing key; without it the bundle's own manifest.sig is announced
    topics: Topics


def announcement_for(bundle_dir: Path, base_url: str, key: Path | None) -> Announcement:
    """The signed Announcement for a bundle directory (files checked against the manifest first)."""
    try:
        bundle = Bundle.load(bundle_dir)
        data = (bundle_dir / MANIFEST_NAME).read_bytes()
        if key is not None:
            sk = SigningKey.load(key)
            key_id, sig = sk.key_id, sk.sign(data)
        else:
            sf = read_signature_file(bundle_dir / SIGNATURE_NAME)
            key_id, sig = sf.key_id, base64.b64decode(sf.signature_b64)
    except (BundleError, SignatureError, OSError, ValueError) as exc:
        raise RolloutError(str(exc)) from None
    del bundle
    return Announcement(manifest_b64=base64.b64encode(data).decode(), key_id=key_id,
                        signature_b64=base64.b64encode(sig).decode(), base_url=base_url.rstrip("/"))


def publish(link: FleetLink, info: BundleInfo, target: Target, cfg: PublishConfig) -> str:
    """Publish `info` to `target`; return the announce topic. Raises RolloutError."""
    if info.error:
        raise RolloutError(f"bundle {info.rel} is not publishable: {info.error}")
    if not cfg.http_base:
        raise RolloutError("no --http-base: the dashboard does not know where nodes fetch bundle files")
    base = cfg.http_base.rstrip("/")
    base_url = base if info.rel == "." else f"{base}/{info.rel}"
    ann = announcement_for(Path(info.path), base_url, cfg.key)
    topic = cfg.topics.announce(target)
    try:
        link.publish(topic, ann.model_dump_json(), retain=True, qos=1)
    except LinkError as exc:
        raise RolloutError(str(exc)) from None
    return topic
