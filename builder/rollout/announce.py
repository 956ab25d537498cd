"""Per-node announcements: the bundle's manifest re-targeted to `node:ID`, signed, retained on
{prefix}/announce/node/ID. A node only acts on a manifest whose signed target matches it, so a copy
replayed onto another node's topic or onto announce/all is refused: nodes outside the current wave
never see the new version. Built on builder.fleet.publish's public pieces (prepare, upload,
make_announcement)."""

from __future__ import annotations

from pathlib import Path

from agent.protocol.manifest import SCHEMA_VERSION, Target
from agent.protocol.messages import Announcement
from agent.protocol.topics import Topics
from agent.security.bundle import Bundle
from agent.security.signing import SigningKey
from builder.fleet.publish import PublishError, load_checked, make_announcement, prepare, sign_for, upload
from builder.rollout.link import FleetSide
from builder.rollout.state import RolloutSettings


class Announcer:
    def __init__(self, bundle_dir: Path, key_path: Path, http_base: str, upload_dir: Path | None,
                 topics: Topics, manifest_version: int = SCHEMA_VERSION) -> None:
        self.bundle_dir, self.http_base, self.upload_dir, self.topics = bundle_dir, http_base, upload_dir, topics
        self.manifest_version = manifest_version
        self._checked: Bundle | None = None
        try:
            self.key = SigningKey.load(key_path)
        except Exception as exc:  # noqa: BLE001 - SignatureError or OSError: say which key
            raise PublishError(f"signing key {key_path}: {exc}") from None

    @classmethod
    def for_rollout(cls, s: RolloutSettings) -> Announcer:
        """The announcer a runner (`rollout start` or the dashboard) uses for a recorded rollout."""
        return cls(Path(s.bundle), Path(s.key), s.http_base, Path(s.upload) if s.upload else None, Topics(s.prefix),
                   s.manifest_version)

    def place_files(self, first_node: str) -> str:
        """Copy the files where nodes fetch them (once per rollout); returns the base URL.

        The server's copy of manifest.json is signed for `first_node` only: nodes never fetch it, and a
        copy someone replays can target nobody but a node of wave 1."""
        if self.upload_dir is None:
            return self.http_base.rstrip("/") + "/"
        bundle, data, sig = prepare(self.bundle_dir, Target(kind="node", value=first_node), self.key,
                                    manifest_version=self.manifest_version)
        upload(bundle, data, sig, self.upload_dir)
        m = bundle.manifest
        return f"{self.http_base.rstrip('/')}/{m.name}/{m.version}/"

    def announcement(self, node: str, base_url: str) -> Announcement:
        """The bundle signed for `node` only (what its announcement, or its shadow request, carries). The
        bundle is checked once per runner, not per node: a 900-node wave re-hashed it 900 times."""
        if self._checked is None:
            self._checked = load_checked(self.bundle_dir)
        data, _ = sign_for(self._checked, Target(kind="node", value=node), self.key,
                           manifest_version=self.manifest_version)
        return make_announcement(data, self.key, base_url)

    def announce(self, link: FleetSide, node: str, base_url: str) -> str:
        target = Target(kind="node", value=node)
        ann = self.announcement(node, base_url)
        topic = self.topics.announce(target)
        link.publish(topic, ann.model_dump_json().encode(), retain=True)
        return topic

    def withdraw(self, link: FleetSide, node: str) -> None:
        """Clear the node's retained announcement (an empty retained message deletes it)."""
        link.publish(self.topics.announce(Target(kind="node", value=node)), b"", retain=True)


__all__ = ["Announcer"]
