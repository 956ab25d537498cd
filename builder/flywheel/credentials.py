"""Per-node collector credentials: a random token per node, stored only as its sha256 in DIR/nodes.json.

`edge-builder collect add-node NODE` prints the token once (it goes into the node's `credential_file`);
adding the node again replaces it (a lost or leaked token is revoked that way, or with remove-node).
Tokens are 256-bit random, so one sha256 is enough (no password stretching needed); comparisons are
constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path

from agent.atomic import atomic_write
from agent.protocol.topics import check_segment

NODES_FILE = "nodes.json"


class CredentialError(Exception):
    """The credential store is unreadable."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class NodeCredentials:
    def __init__(self, root: Path) -> None:
        self.path = Path(root) / NODES_FILE

    def _load(self) -> dict[str, dict[str, str]]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            return {str(k): dict(v) for k, v in data.get("nodes", {}).items()}
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            raise CredentialError(f"{self.path}: unreadable credential store: {exc}") from exc

    def _save(self, nodes: dict[str, dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps({"nodes": nodes}, indent=1, sort_keys=True).encode())
        self.path.chmod(0o600)

    def add(self, node: str) -> str:
        """A new token for `node` (replacing any previous one); only its hash is kept."""
        check_segment(node, "node id")
        token = secrets.token_urlsafe(32)
        nodes = self._load()
        nodes[node] = {"sha256": _digest(token), "created": datetime.now(UTC).isoformat()}
        self._save(nodes)
        return token

    def remove(self, node: str) -> bool:
        nodes = self._load()
        if nodes.pop(node, None) is None:
            return False
        self._save(nodes)
        return True

    def nodes(self) -> list[str]:
        return sorted(self._load())

    def verify(self, node: str, token: str) -> bool:
        entry = self._load().get(node)
        # Compare even for an unknown node, so timing does not tell which node ids exist.
        want = entry["sha256"] if entry else _digest("")
        return hmac.compare_digest(_digest(token), want) and entry is not None
