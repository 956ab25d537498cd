"""Ask a node to run a candidate bundle in shadow, stop it, read its report (see docs/SHADOW.md).

The candidate is signed exactly like a published update (builder.fleet.publish.prepare: re-targeted to
`node:ID`, an expiry, the fleet key) and served the same way (--upload DIR or --http-base URL); the request
goes retained to `{prefix}/node/{node}/shadow`. The node reports on `{prefix}/node/{node}/shadow/report`.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from agent.protocol.manifest import Target
from agent.protocol.shadow import ShadowReport, ShadowRequest, ShadowSampling
from agent.protocol.topics import DEFAULT_PREFIX, Topics
from agent.security.signing import SignatureError, SigningKey
from builder.fleet.publish import (
    DEFAULT_EXPIRES_DAYS,
    PublishError,
    make_announcement,
    mqtt_publish,
    mqtt_retained,
    prepare,
    upload,
)


def shadow_request(bundle_dir: Path, node: str, key_path: Path, http_base: str, upload_dir: Path | None = None,
                   sampling: ShadowSampling | None = None, max_frames: int | None = None,
                   duration_s: float | None = None, request_id: str | None = None, report_every_s: float = 5.0,
                   expires_days: float = DEFAULT_EXPIRES_DAYS) -> ShadowRequest:
    """Sign the candidate for `node` (and copy it under upload_dir/<name>/<version>/ if given)."""
    try:
        key = SigningKey.load(key_path)
    except SignatureError as exc:
        raise PublishError(str(exc)) from None
    bundle, data, sig = prepare(bundle_dir, Target(kind="node", value=node), key, expires_days)
    base_url = http_base.rstrip("/") + "/"
    if upload_dir is not None:
        upload(bundle, data, sig, upload_dir)
        m = bundle.manifest
        base_url = f"{http_base.rstrip('/')}/{m.name}/{m.version}/"
    return ShadowRequest(request_id=request_id or uuid.uuid4().hex[:12], candidate=make_announcement(data, key, base_url),
                         sampling=sampling or ShadowSampling(), max_frames=max_frames, duration_s=duration_s,
                         report_every_s=report_every_s)


def send_request(broker_url: str, node: str, request: ShadowRequest | None, prefix: str = DEFAULT_PREFIX,
                 **auth: object) -> str:
    """Publish the request retained (None: the empty message that stops the run); returns the topic."""
    topic = Topics(prefix).shadow(node)
    payload = request.model_dump_json().encode() if request is not None else b""
    mqtt_publish(broker_url, topic, payload, retain=True, **auth)  # type: ignore[arg-type]
    return topic


def read_report(broker_url: str, node: str, prefix: str = DEFAULT_PREFIX, timeout: float = 5.0,
                **auth: object) -> ShadowReport | None:
    """The node's retained ShadowReport (None: none yet)."""
    raw = mqtt_retained(broker_url, Topics(prefix).shadow_report(node), timeout=timeout, **auth)  # type: ignore[arg-type]
    return ShadowReport.model_validate_json(raw) if raw else None


def wait_report(broker_url: str, node: str, request_id: str, states: set[str], timeout: float,
                prefix: str = DEFAULT_PREFIX, **auth: object) -> ShadowReport:
    """Poll the retained report until it is about `request_id` and in one of `states`."""
    deadline = time.monotonic() + timeout
    last: ShadowReport | None = None
    while time.monotonic() < deadline:
        last = read_report(broker_url, node, prefix, timeout=2.0, **auth)
        if last is not None and last.request_id == request_id and last.state.value in states:
            return last
        time.sleep(0.5)
    seen = f"{last.state.value} ({last.request_id})" if last else "no report"
    raise PublishError(f"node {node}: shadow run {request_id} not {'/'.join(sorted(states))} within {timeout:.0f} s; "
                       f"last: {seen}")


__all__ = ["read_report", "send_request", "shadow_request", "wait_report"]
