"""The retained, root-signed keyring on {prefix}/keyring (docs/KEYS.md, "Delivering a new keyring over MQTT").

Each message is verified against the trust in use and installed into the state directory (crash-safe); the
running `Keyring` (the one the updater holds) adopts the new trust in place. A message not newer than the
installed document (`StaleKeyring`: the retained message again after a reconnect) is ignored quietly. Any
other refusal (bad or missing signatures, expired, malformed, not JSON) is logged and reported: `error`
(for the node's state) and a retained KeyringStatus on {prefix}/node/{node}/keyring. Runs in paho's
callback thread; never raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from agent.security.keyring_store import KeyringMessage
from agent.security.signing import Keyring, SignatureError
from agent.security.trust import StaleKeyring

log = logging.getLogger(__name__)

MAX_KEYRING_BYTES = 256 * 1024  # a keyring document with its chain is a few KiB


class KeyringStatus(BaseModel):
    version: int | None
    error: str | None = None


class KeyringLink:
    def __init__(self, keys_dir: Path, keyring: Keyring,
                 report: Callable[[KeyringStatus], None] | None = None) -> None:
        self.keys_dir = keys_dir
        self.keyring = keyring
        self.report = report
        self.error: str | None = None
        self.installed = 0  # documents installed since start

    def status(self) -> KeyringStatus:
        return KeyringStatus(version=self.keyring.version, error=self.error)

    def on_message(self, msg: Any) -> None:
        """One paho MQTTMessage from {prefix}/keyring; an empty retained payload (topic cleared) is ignored."""
        payload = bytes(getattr(msg, "payload", b"") or b"")
        if payload:
            self.handle(payload)

    def handle(self, payload: bytes) -> None:
        try:
            if len(payload) > MAX_KEYRING_BYTES:
                raise SignatureError(f"keyring message of {len(payload)} bytes (max {MAX_KEYRING_BYTES})")
            doc = KeyringMessage.model_validate_json(payload).install(self.keys_dir, current=self.keyring)
        except StaleKeyring:
            return
        except (SignatureError, ValidationError, ValueError, OSError) as exc:
            self.error = f"keyring refused: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            log.error("%s", self.error)
        except Exception as exc:  # noqa: BLE001 - whatever a hostile payload triggers, the node keeps running
            self.error = f"keyring refused: {type(exc).__name__}: {exc}"
            log.exception("keyring message failed")
        else:
            self.error = None
            self.installed += 1
            log.warning("keyring v%s installed (signers: %s)", doc.version, ", ".join(sorted(self.keyring.keys)))
        if self.report is not None:
            try:
                self.report(self.status())
            except Exception:  # noqa: BLE001 - a lost report must not break the subscription
                log.exception("reporting the keyring status failed")


__all__ = ["MAX_KEYRING_BYTES", "KeyringLink", "KeyringStatus"]
