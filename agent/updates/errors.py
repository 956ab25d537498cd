"""How an update ends when it does not commit; each maps to one UpdateState the node reports."""

from __future__ import annotations


class UpdateRejected(Exception):
    """Verification refused an announcement (state `rejected`)."""


class UpdateFailed(Exception):
    """A step failed before anything changed (state `failed`)."""


class ActivationFailed(Exception):
    """The new model could not be loaded or failed its self-test (state `rolled_back`)."""


__all__ = ["ActivationFailed", "UpdateFailed", "UpdateRejected"]
