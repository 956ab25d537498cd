"""One-shot publish from the dashboard: one listed bundle to a target (all | group:G | node:N) at once.
(Staged rollouts are builder.dashboard.rollouts; both use PublishConfig and verified_copy.)

Publishing is builder.fleet.publish's job (check the files, re-target and sign the manifest with the fleet key,
optionally copy the bundle where nodes fetch it, publish the retained Announcement); this module maps the
dashboard's settings onto it and adds the one rule the dashboard enforces: only a bundle already signed by a
trusted key is re-targeted. The check runs on a private copy, and that very copy is what gets published,
so a folder swapped between the check and the signing cannot slip through.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agent.protocol.manifest import MANIFEST_NAME, SIGNATURE_NAME, Target
from agent.protocol.topics import Topics
from agent.security.bundle import BundleError, parse_manifest
from agent.security.signing import Keyring, SignatureError
from builder.dashboard.bundles import BundleInfo, verify


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
    trusted_keys: Path | None = None  # keys a bundle must already be signed by (default: the .pub beside key)

    def problem(self) -> str | None:
        """Why rollout is disabled, or None."""
        if not self.key:
            return "no --key: announcements must be signed with the fleet key"
        if not self.http_base:
            return "no --http-base: the dashboard does not know where nodes fetch bundle files"
        return None

    def keyring(self) -> Keyring | None:
        """The trusted keys (read on every call: an operator may revoke a key without a restart)."""
        source = self.trusted_keys or (self.key.with_suffix(".pub") if self.key else None)
        if source is None or not source.exists():
            return None
        try:
            return Keyring.load(source)
        except SignatureError:
            return None

    def files_base(self, info: BundleInfo) -> str:
        """The URL nodes fetch `info`'s files from: --http-base serves --upload DIR, else the --bundles roots."""
        assert self.http_base is not None
        base = self.http_base.rstrip("/")
        return base if self.upload_dir is not None or info.rel == "." else f"{base}/{info.rel}"


def publish(info: BundleInfo, target: Target, cfg: PublishConfig) -> str:
    """Publish `info` to `target`; return the announce topic. Raises RolloutError."""
    from builder.fleet.publish import PublishError, publish_bundle

    if info.error:
        raise RolloutError(f"bundle {info.rel} is not publishable: {info.error}")
    problem = cfg.problem()
    if problem:
        raise RolloutError(problem)
    assert cfg.key is not None
    with tempfile.TemporaryDirectory(prefix="edge-dashboard-") as tmp:
        checked = verified_copy(Path(info.path), Path(tmp) / "bundle", cfg.keyring())
        try:
            result = publish_bundle(checked, cfg.broker_url, target, cfg.key, http_base=cfg.files_base(info),
                                    upload_dir=cfg.upload_dir, prefix=cfg.topics.prefix, ca_file=cfg.ca_file)
        except PublishError as exc:
            raise RolloutError(str(exc)) from None
    return result.topic


def verified_copy(src: Path, dst: Path, keyring: Keyring | None) -> Path:
    """Copy the manifest, its signature and the files it lists to `dst`, then verify the copy."""
    try:
        m = parse_manifest((src / MANIFEST_NAME).read_bytes())
        dst.mkdir(parents=True)
        for rel in (MANIFEST_NAME, SIGNATURE_NAME, *(f.path for f in m.files)):
            if (src / rel).is_file():  # a missing file is reported by the verification below
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / rel, dst / rel)
    except (OSError, BundleError) as exc:
        raise RolloutError(f"cannot read bundle {src}: {exc}") from None
    why = verify(dst, keyring)
    if why is not None:
        raise RolloutError(f"bundle {src.name} refused: {why}")
    return dst
