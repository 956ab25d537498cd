"""The operator's commands to a node's updater: inventory, status, rollback, pin (see docs/UPDATES.md).

They run on the update worker thread like announcements, so they never race an update in progress.
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
        elif req.command == "rollback":
            prev = self.state.previous
            if prev is None or prev.version not in self.store.installed_versions():
                ok, err = False, "no previous version on disk to roll back to"
            else:
                err = self._manual_switch(prev.name, prev.version, "rollback")
                ok = err is None
            result = self.status()
        elif req.command == "pin":
            if req.version is None:
                with self._lock:
                    self.state.pinned = None
                self._save()
                self._notify()
            else:
                installed = self.store.installed_versions()
                if req.version not in installed:
                    ok, err = False, f"v{req.version} is not on disk (have {installed})"
                elif self.state.current and self.state.current.version == req.version:
                    with self._lock:
                        self.state.pinned = req.version
                    self._save()
                    self._notify()
                else:
                    name = self.state.current.name if self.state.current else "model"
                    err = self._manual_switch(name, req.version, "pin")
                    ok = err is None
            result = self.status()
        return CommandResponse(node=self.node, command=req.command, ok=ok, result=result, error=err)


__all__ = ["ManualControl"]
