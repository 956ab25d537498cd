"""The update state a node persists in its model store's state.json (agent.updates.store)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.protocol.messages import UpdateStatus


class ModelRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    version: int


class PendingUpdate(BaseModel):
    """An update between announcement and commit, persisted so a restart knows what to undo."""

    model_config = ConfigDict(extra="ignore")
    name: str
    version: int
    phase: Literal["downloading", "activating", "trial"]
    reason: str = "update"  # "update" | "rollback" | "pin"
    started: datetime = Field(default_factory=lambda: datetime.now(UTC))


class StoreState(BaseModel):
    model_config = ConfigDict(extra="ignore")

    current: ModelRecord | None = None
    previous: ModelRecord | None = None
    # Committed versions, oldest first; the last one is `current`.
    committed: list[ModelRecord] = Field(default_factory=list)
    high_water: int = 0
    pinned: int | None = None
    pending: PendingUpdate | None = None
    last_result: UpdateStatus | None = None


__all__ = ["ModelRecord", "PendingUpdate", "StoreState"]
