"""The terminal twin of the page: the node table as text, and change events for `fleet watch`."""

from __future__ import annotations

import time
from datetime import datetime

from builder.dashboard.shadow_view import summary
from builder.dashboard.state import CameraView, NodeView

COLUMNS = ("NODE", "STATUS", "MODEL", "BACKEND", "FPS", "P50/P95 ms", "POWER W", "TEMP C", "LAST UPDATE", "SHADOW",
           "SEEN")


def node_status(n: NodeView, now: float) -> str:
    """Same rule as the page: faulty beats offline beats silent beats the node's own status."""
    if n.faults:
        return "faulty"
    if n.online is False:
        return "offline"
    if n.online is None:
        return "unknown"
    t = n.telemetry
    if t is not None and n.telemetry_rx is not None and now - n.telemetry_rx > max(10.0, 3 * t.interval_s):
        return "silent"
    return n.status or "online"


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _age(t: float | None, now: float) -> str:
    if t is None:
        return "never"
    s = max(0.0, now - t)
    return f"{s:.0f}s" if s < 90 else f"{s / 60:.0f}m" if s < 5400 else f"{s / 3600:.1f}h"


def row(n: NodeView, now: float) -> tuple[str, ...]:
    t = n.telemetry
    model = f"{n.model_name} v{n.model_version}" if n.model_version is not None else "-"
    power = "-"
    if t is not None and t.power_w is not None:
        power = f"{t.power_w:.2f}" + (" est" if t.power_estimated else "")
    upd = "-"
    if n.update is not None:
        u = n.update
        upd = (f"v{u.version} " if u.version is not None else "") + u.state.value
        if u.state.value == "downloading" and u.progress is not None:
            upd += f" {u.progress:.0%}"
    return (
        n.id, node_status(n, now), model, n.backend or (t.backend if t else None) or "-",
        _f(t.fps if t else None), f"{_f(t.p50_ms if t else None)}/{_f(t.p95_ms if t else None)}", power,
        _f(t.temp_c if t else None, 0), upd, _shadow(n), _age(n.last_seen, now),
    )


def _shadow(n: NodeView) -> str:
    """The latest shadow run in a few words: state, agreement (F1) and frames compared (docs/SHADOW.md)."""
    return "-" if n.shadow is None else summary(n.shadow, candidate=False)



def camera_row(name: str, c: CameraView) -> tuple[str, ...]:
    """A camera under its node, indented: state (STALLED in capitals), device, FPS (dropped), model latency."""
    state = (c.state or "-").upper() if c.state == "stalled" else c.state or "-"
    fps = f"{c.fps:.1f}" + (f" ({c.dropped_fps:.1f} drop)" if c.dropped_fps else "")
    return (f"  └ {name}", state, f"cam {c.camera_fps:.1f} fps", c.device or "-", fps,
            f"{_f(c.p50_ms)}/{_f(c.p95_ms)}", "", "", "", "", "")


def format_table(nodes: list[NodeView], now: float | None = None) -> str:
    now = time.time() if now is None else now
    rows: list[tuple[str, ...]] = [COLUMNS]
    for n in nodes:  # a node without cameras in its telemetry (older agents) is one row, as before
        rows += [row(n, now), *(camera_row(name, c) for name, c in sorted(n.cameras.items()))]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    faults = [f"  {n.id}: {leaf}: {why}" for n in nodes for leaf, why in n.faults.items()]
    if faults:
        lines += ["", "faults:", *faults]
    if not nodes:
        lines.append("(no nodes seen)")
    return "\n".join(lines)


def _key(n: NodeView) -> dict[str, object]:
    return {
        "online": n.online,
        "model": (n.model_name, n.model_version),
        "update": (n.update.version, n.update.state.value, n.update.reason) if n.update else None,
        "faults": tuple(sorted(n.faults.items())),
        "status": n.status,
        "shadow": (n.shadow.request_id, n.shadow.state) if n.shadow else None,
    }


def changes(before: dict[str, NodeView], after: list[NodeView], now: float | None = None) -> list[str]:
    """Human-readable event lines for what changed between two looks at the fleet."""
    stamp = datetime.fromtimestamp(time.time() if now is None else now).strftime("%H:%M:%S")
    out = []
    for n in after:
        old = before.get(n.id)
        k = _key(n)
        if old is None:
            out.append(f"{stamp} {n.id} seen: {row(n, now or time.time())[1]}, model "
                       f"{n.model_name or '-'} v{n.model_version if n.model_version is not None else '-'}")
            continue
        o = _key(old)
        if k["online"] != o["online"]:
            out.append(f"{stamp} {n.id} {'online' if n.online else 'offline'}")
        if k["status"] != o["status"] and n.status:
            out.append(f"{stamp} {n.id} status {n.status}" + (f": {n.reason}" if n.reason else ""))
        if k["model"] != o["model"]:
            out.append(f"{stamp} {n.id} now runs {n.model_name} v{n.model_version}")
        if k["update"] != o["update"] and n.update is not None:
            u = n.update
            out.append(f"{stamp} {n.id} update v{u.version} {u.state.value}" + (f": {u.reason}" if u.reason else ""))
        if k["shadow"] != o["shadow"] and n.shadow is not None:  # a run started, finished, failed
            out.append(f"{stamp} {n.id} shadow {summary(n.shadow)}" + (f": {n.shadow.reason}" if n.shadow.reason else ""))
        for name, cam_state in n.cameras.items():  # a camera's state change (stalled, back to streaming)
            if cam_state.state != (old.cameras[name].state if name in old.cameras else None) and cam_state.state:
                out.append(f"{stamp} {n.id} camera {name} {cam_state.state}")
        if k["faults"] != o["faults"]:
            for leaf, why in n.faults.items():
                if old.faults.get(leaf) != why:
                    out.append(f"{stamp} {n.id} FAULT {leaf}: {why}")
            if not n.faults and old.faults:
                out.append(f"{stamp} {n.id} faults cleared")
    return out
