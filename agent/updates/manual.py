"""The operator's commands to a node's updater: inventory, status, rollback, pin, unpin (see docs/UPDATES.md).

They run on the update worker thread like announcements, so they never race an update in progress.
`pin` without a version is the old spelling of `unpin`, kept for builders that predate it.
"""

from __future__ import annotations

from agent.protocol.messages import CommandRequest, CommandResponse
from agent.updates.switch import ModelSwitch


class ManualControl(ModelSwitch):
    """The command part of the `Updater` (agent.updates.updater)."""

    def _handle_command(self, req: CommandRequest) -> CommandResponse:
        ok, err, result = True, None, {}
        if req.command == "inventory":
            result = self.inventory()
        elif req.command == "status":
            result = self.status()
        else:
            if req.command == "rollback":
                err = self._rollback()
            elif req.command == "unpin" or req.version is None:
                self._set_pin(None)
            else:
                err = self._pin(req.version)
            ok = err is None
            result = self.status()
        return CommandResponse(node=self.node, command=req.command, ok=ok, result=result, error=err)

    def _rollback(self) -> str | None:
        prev = self.state.previous
        if prev is None or prev.version not in self.store.installed_versions():
            return "no previous version on disk to roll back to"
        return self._manual_switch(prev.name, prev.version, "rollback")

    def _pin(self, version: int) -> str | None:
        installed = self.store.installed_versions()
        if version not in installed:
            return f"v{version} is not on disk (have {installed})"
        if self.state.current and self.state.current.version == version:
            self._set_pin(version)
            return None
        name = self.state.current.name if self.state.current else "model"
        return self._manual_switch(name, version, "pin")

    def _set_pin(self, version: int | None) -> None:
        with self._lock:
            self.state.pinned = version
        self._save()
        self._notify()


__all__ = ["ManualControl"]
