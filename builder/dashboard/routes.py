"""The dashboard's API in one table: every route, what it answers, and (for a POST) its audit-log action.

server.py speaks HTTP (access checks, JSON bodies, the audit line of every POST, SSE); the handlers here
only compute an answer from `FleetApi` (the dashboard's state, links, bundles, rollouts). A new API route is
one function and one line in ROUTES: it gets the token, Host/Origin and audit rules with no further code.

    GET  /api/state              the snapshot as plain JSON (scripts, the terminal twin, tests)
    GET  /api/bundles            bundles found under --bundles (untrusted ones listed as refused)
    GET  /api/rollouts           staged rollouts of the state directory (builder.dashboard.rollouts)
    GET  /api/snapshot/NODE      the node's last JPEG snapshot (raw)
    GET  /api/events             SSE (served by server.py)
    POST /api/rollout            {"bundle", "target"}: one-shot publish to every targeted node at once
    POST /api/rollouts/start     {"bundle", "waves", "target", "soak", thresholds...}: a staged rollout
    POST /api/rollouts/pause     {"id"}; /resume {"id"}; /abort {"id", "rollback": bool}
    POST /api/command            {"command", "nodes": [...] | "group": G, "version"?}: per-node replies
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.protocol.manifest import Target
from builder.dashboard.audit import AuditLog
from builder.dashboard.bundles import BundleInfo, find_bundles
from builder.dashboard.fleet_commands import CommandRequest, CommandsError, resolve, send
from builder.dashboard.link import FleetLink
from builder.dashboard.rollout import PublishConfig, RolloutError, publish
from builder.dashboard.rollouts import RolloutsError, StagedRollouts, StartRequest
from builder.dashboard.state import FleetState

NO_STAGED = "staged rollouts are off (the dashboard has no rollout engine)"


@dataclass
class Reply:
    """A handler's answer: JSON `body` (or `raw` bytes of `ctype`), and what the audit line records."""

    status: int = 200
    body: Any = None
    raw: bytes | None = None
    ctype: str = "application/json"
    target: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> str | None:
        return self.body.get("error") if self.status >= 400 and isinstance(self.body, dict) else None


def fail(status: int, message: str, target: str | None = None, **detail: Any) -> Reply:
    return Reply(status, {"ok": False, "error": message}, target=target, detail=detail)


def _why(exc: ValidationError) -> str:
    e = exc.errors()[0]
    where = ".".join(str(x) for x in e["loc"])
    return f"{where + ': ' if where else ''}{e['msg'].removeprefix('Value error, ')}"


class FleetApi:
    """What the API acts on (the HTTP part is server.Dashboard, which is one of these)."""

    def __init__(self, state: FleetState, link: FleetLink | None, bundle_roots: list[Path],
                 publish_cfg: PublishConfig, audit: AuditLog | None = None,
                 rollouts: StagedRollouts | None = None) -> None:
        self.state, self.link, self.publish_cfg = state, link, publish_cfg
        self.bundle_roots = [Path(p) for p in bundle_roots]
        self.audit, self.rollouts = audit, rollouts
        self._bundles: dict[str, BundleInfo] = {}
        self._publish_lock = threading.Lock()

    def bundles(self) -> list[BundleInfo]:
        found = find_bundles(self.bundle_roots, keyring=self.publish_cfg.keyring())
        self._bundles = {b.id: b for b in found}
        return found

    def bundle(self, bundle_id: str) -> BundleInfo:
        """A listed bundle a trusted key signed (RolloutError otherwise: the page only names listed ids)."""
        if bundle_id not in self._bundles:
            self.bundles()
        info = self._bundles.get(bundle_id)
        if info is None:
            raise RolloutError(f"unknown bundle id {bundle_id!r}; reload the bundle list")
        if info.refused:
            raise RolloutError(f"bundle {info.rel} refused: {info.refused}")
        if info.error:
            raise RolloutError(f"bundle {info.rel} is not publishable: {info.error}")
        return info

    def rollout(self, bundle_id: str, target_text: str) -> dict[str, Any]:
        """One-shot publish of a listed bundle to a target."""
        if self.link is None:
            raise RolloutError("not connected to a broker")
        try:
            target = Target.parse(target_text.strip())
            self.publish_cfg.topics.announce(target)  # validates the group/node name as a topic segment
        except ValueError as exc:
            raise RolloutError(str(exc).splitlines()[-1]) from None
        info = self.bundle(bundle_id)
        with self._publish_lock:  # one publish at a time: two clicks must not interleave announcements
            topic = publish(info, target, self.publish_cfg)
            assert info.name is not None and info.version is not None
            r = self.state.add_rollout(info.rel, info.name, info.version, target)
        return {"ok": True, "topic": topic, "rollout": r.model_dump()}

    def record(self, who: str, remote: str, action: str, outcome: str, target: str | None = None,
               **detail: Any) -> None:
        if self.audit is not None:
            self.audit.record(who, remote, action, outcome, target, **detail)


# ---- GET -----------------------------------------------------------------------------------------------
def get_state(api: FleetApi, path: str) -> Reply:
    return Reply(body=api.state.snapshot())


def get_bundles(api: FleetApi, path: str) -> Reply:
    return Reply(body={"bundles": [b.model_dump() for b in api.bundles()],
                       "roots": [str(r) for r in api.bundle_roots], "http_base": api.publish_cfg.http_base,
                       "problem": api.publish_cfg.problem()})


def get_rollouts(api: FleetApi, path: str) -> Reply:
    if api.rollouts is None:
        return Reply(body={"ok": True, "rollouts": [], "problem": NO_STAGED})
    return Reply(body=api.rollouts.view())


def get_snapshot(api: FleetApi, path: str) -> Reply:
    jpeg = api.state.snapshot_jpeg(path.rpartition("/")[2])
    return fail(404, "no snapshot from that node") if jpeg is None else Reply(raw=jpeg, ctype="image/jpeg")


# ---- POST (the server writes the audit line of each) ---------------------------------------------------
def post_publish(api: FleetApi, body: dict[str, Any]) -> Reply:
    try:
        bundle_id, target = str(body["bundle"]), str(body.get("target", "all"))
    except KeyError:
        return fail(400, 'body must be {"bundle": ID, "target": "all|group:G|node:N"}')
    try:
        out = api.rollout(bundle_id, target)
    except RolloutError as exc:
        return fail(400, str(exc), target, bundle=bundle_id)
    r = out["rollout"]
    return Reply(body=out, target=target, detail={"bundle": bundle_id, "path": r["bundle"], "name": r["name"],
                                                   "version": r["version"], "topic": out["topic"]})


def post_start(api: FleetApi, body: dict[str, Any]) -> Reply:
    try:
        req = StartRequest.model_validate(body)
    except ValidationError as exc:
        return fail(400, _why(exc), str(body.get("target", "all")), bundle=body.get("bundle"))
    if api.rollouts is None:
        return fail(503, NO_STAGED, req.target, bundle=req.bundle)
    try:
        st = api.rollouts.begin(api.bundle(req.bundle), req)
    except RolloutError as exc:
        return fail(400, str(exc), req.target, bundle=req.bundle)
    except RolloutsError as exc:
        return fail(exc.status, str(exc), req.target, bundle=req.bundle)
    return Reply(body={"ok": True, "id": st.id, "waves": st.waves}, target=req.target,
                 detail={"bundle": req.bundle, "rollout": st.id, "name": st.name, "version": st.version,
                         "waves": req.waves, "settings": req.model_dump(exclude={"bundle", "target"})})


def _control(action: str) -> Callable[[FleetApi, dict[str, Any]], Reply]:
    def handle(api: FleetApi, body: dict[str, Any]) -> Reply:
        rid, rollback = str(body.get("id") or ""), body.get("rollback", False) is True
        if api.rollouts is None:
            return fail(503, NO_STAGED, rollout=rid)
        try:
            message = api.rollouts.control(rid, action, rollback)
        except RolloutsError as exc:
            return fail(exc.status, str(exc), rollout=rid, rollback=rollback)
        return Reply(body={"ok": True, "message": message}, detail={"rollout": rid, "rollback": rollback})

    return handle


def post_command(api: FleetApi, body: dict[str, Any]) -> Reply:
    try:
        req = CommandRequest.model_validate(body)
    except ValidationError as exc:
        return fail(400, _why(exc), command=body.get("command"))
    target = f"group:{req.group}" if req.group else ",".join(req.nodes or [])
    side = api.rollouts.link if api.rollouts is not None else None
    if side is None:
        return fail(503, "fleet commands need the engine's broker link", target, command=req.command)
    try:
        nodes = resolve(req, side.known())
        outcomes = send(side, req, nodes)
    except CommandsError as exc:
        return fail(exc.status, str(exc), target, command=req.command)
    answered = sum(o["ok"] is not None for o in outcomes)
    return Reply(body={"ok": True, "command": req.command, "outcomes": outcomes}, target=target,
                 detail={"command": req.command, "version": req.version, "nodes": nodes,
                         "replies": {o["node"]: o["ok"] for o in outcomes}, "answered": answered})


# ---- the table -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    method: str
    path: str  # exact, or a prefix when it ends with "/"
    handler: Callable[[FleetApi, Any], Reply] | None  # None: served by server.py itself (SSE)
    action: str | None = None  # the audit log's name for a POST


ROUTES = (
    Route("GET", "/api/state", get_state),
    Route("GET", "/api/bundles", get_bundles),
    Route("GET", "/api/rollouts", get_rollouts),
    Route("GET", "/api/snapshot/", get_snapshot),
    Route("GET", "/api/events", None),
    Route("POST", "/api/rollout", post_publish, "publish"),
    Route("POST", "/api/rollouts/start", post_start, "rollout-start"),
    Route("POST", "/api/rollouts/pause", _control("pause"), "rollout-pause"),
    Route("POST", "/api/rollouts/resume", _control("resume"), "rollout-resume"),
    Route("POST", "/api/rollouts/abort", _control("abort"), "rollout-abort"),
    Route("POST", "/api/command", post_command, "command"),
)


def find(method: str, path: str) -> Route | None:
    for r in ROUTES:
        if r.method == method and (path == r.path or (r.path.endswith("/") and path.startswith(r.path))):
            return r
    return None


__all__ = ["ROUTES", "FleetApi", "Reply", "Route", "fail", "find"]
