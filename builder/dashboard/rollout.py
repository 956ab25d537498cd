"""Rollout from the dashboard: publish one listed bundle to a target (all | group:G | node:N).

Publishing is builder.fleet.publish's job (check the files, re-target and sign the manifest with the fleet key,
optionally copy the bundle where nodes fetch it, publish the retained Announcement); this module only maps
the dashboard's settings onto it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.protocol.manifest import Target
from agent.protocol.topics import Topics
from builder.dashboard.bundles import BundleInfo


class RolloutError(RuntimeError):
    """Why a rollout could not be published; shown on the page."""


@dataclass(frozen=True)
class PublishConfig:
    broker_url: str
    topics: Topics
    http_base: str | None = None  # URL serving --upload DIR, else serving the --bundles directories
    key: Path | None = None  # fleet signing key (publishing re-signs the re-targeted manifest)
    upload_dir: Path | None = None  # copy bundles here (as NAME/VERSION/) before announcing
    ca_file: Path | None = None

    def problem(self) -> str | None:
        """Why rollout is disabled, or None."""
        if not self.key:
            return "no --key: announcements must be signed with the fleet key"
        if not self.http_base:
            return "no --http-base: the dashboard does not know where nodes fetch bundle files"
        return None


def publish(info: BundleInfo, target: Target, cfg: PublishConfig) -> str:
    """Publish `info` to `target`; return the announce topic. Raises RolloutError."""
    from builder.fleet.publish import PublishError, publish_bundle

    if info.error:
        raise RolloutError(f"bundle {info.rel} is not publishable: {info.error}")
    problem = cfg.problem()
    if problem:
        raise RolloutError(problem)
    assert cfg.http_base is not None and cfg.key is not None
    base = cfg.http_base.rstrip("/")
    # Without an upload dir, the --bundles directory itself is what --http-base serves.
    http_base = base if cfg.upload_dir is not None or info.rel == "." else f"{base}/{info.rel}"
    try:
        result = publish_bundle(Path(info.path), cfg.broker_url, target, cfg.key, http_base=http_base,
                                upload_dir=cfg.upload_dir, prefix=cfg.topics.prefix, ca_file=cfg.ca_file)
    except PublishError as exc:
        raise RolloutError(str(exc)) from None
    return result.topic
