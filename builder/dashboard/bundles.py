"""The bundles the dashboard offers for rollout: every directory holding a manifest.json under --bundles.

The page only ever names a bundle by the id listed here, never by a path, so a browser cannot make the
server publish an arbitrary directory. A bundle is offered only if its manifest is signed by a trusted
key and every file matches it (Bundle.load with the keyring): the dashboard re-targets what a trusted
builder signed, it never vouches for a folder someone dropped into --bundles. Others are listed with
`refused` saying why.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel

from agent.protocol.manifest import MANIFEST_NAME, SIGNATURE_NAME
from agent.security.bundle import Bundle, BundleError, parse_manifest
from agent.security.signing import Keyring, SignatureError


class BundleInfo(BaseModel):
    id: str
    path: str
    root: str  # the --bundles directory it was found under
    rel: str  # path relative to that root ("." when the root is the bundle)
    name: str | None = None
    version: int | None = None
    created: str | None = None
    size_bytes: int = 0
    signed: bool = False
    key_id: str | None = None
    models: dict[str, str | None] = {}
    metrics: dict[str, dict[str, float | int | None]] = {}
    error: str | None = None  # unreadable manifest: listed, but not publishable
    refused: str | None = None  # not signed by a trusted key, or files do not match: not publishable


def _bundle_id(path: Path) -> str:
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]


def verify(path: Path, keyring: Keyring | None) -> str | None:
    """Why the bundle at `path` must not be published (None: a trusted key signed it and every file matches)."""
    if keyring is None:
        return "no trusted keys to check it against (--trusted-keys)"
    try:
        Bundle.load(path, keyring, complete=True)
    except (BundleError, SignatureError) as exc:
        return f"not signed by a trusted key or altered: {exc}"
    return None


def describe(path: Path, root: Path, keyring: Keyring | None = None) -> BundleInfo:
    rel = path.relative_to(root).as_posix() if path != root else "."
    info = BundleInfo(id=_bundle_id(path), path=str(path), root=str(root), rel=rel)
    sig = path / SIGNATURE_NAME
    if sig.exists():
        info.signed = True
        try:
            info.key_id = json.loads(sig.read_bytes()).get("key_id")
        except (OSError, ValueError, AttributeError):
            info.error = f"{SIGNATURE_NAME} is unreadable"
    try:
        m = parse_manifest((path / MANIFEST_NAME).read_bytes())
    except (OSError, BundleError) as exc:
        info.error = str(exc)
        return info
    info.name, info.version, info.created = m.name, m.version, m.created.isoformat()
    info.size_bytes = m.total_size()
    info.models = {"cpu": m.models.cpu, "edgetpu": m.models.edgetpu}
    info.metrics = {k: v.model_dump(exclude_none=True) for k, v in m.metrics.items()}
    info.refused = verify(path, keyring)
    return info


def find_bundles(roots: list[Path], depth: int = 2, *, keyring: Keyring | None = None) -> list[BundleInfo]:
    """Bundle directories under each root (the root itself, or up to `depth` levels below), newest first."""
    found: dict[str, BundleInfo] = {}
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        candidates = [root]
        frontier = [root]
        for _ in range(depth):
            frontier = sorted(p for d in frontier for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
            candidates += frontier
        for c in candidates:
            if (c / MANIFEST_NAME).is_file():
                info = describe(c, root, keyring)
                found.setdefault(info.id, info)
    return sorted(found.values(), key=lambda b: (b.name or "", -(b.version or 0), b.path))
