"""The node's side of hard-example capture (docs/FLYWHEEL.md): the `[capture]` sink on the pipeline's frame
hooks, the uploader's retained request topics and its status, and a running shadow's per-frame disagreement
(a frame where the candidate and the live model disagree is a hard example too)."""

from __future__ import annotations

from typing import Any

from agent.capture import build_capture
from agent.capture.sink import CaptureSink
from agent.capture.uploader import UploadReport, report_json, status_topic, upload_topics
from agent.inference.agreement import disagreement
from agent.inference.frames import FrameResult
from agent.protocol.messages import Detection


def attach(service: Any) -> CaptureSink | None:
    """Wire capture into a started AgentService (agent.service.daemon); None when `[capture]` is off."""
    sink = build_capture(service.cfg)
    if sink is None:
        return None
    service.pipeline.add_frame_hook(sink)
    prefix, node = service.topics.prefix, service.node
    if sink.uploader is not None:
        for topic in upload_topics(prefix, node):
            service.mqtt.subscribe(topic, sink.uploader.on_message, qos=1)

        def report(rep: UploadReport) -> None:
            service.mqtt.publish(status_topic(prefix, node), report_json(rep), qos=1, retain=True)

        sink.uploader.on_report.append(report)
    if getattr(service, "shadow", None) is not None:
        def compared(result: FrameResult, live: list[Detection], candidate: list[Detection]) -> None:
            sink.observe(result.frame.image, result, result.camera, disagreement(live, candidate))

        service.shadow.on_compared.append(compared)
    service.on_stop.append(sink.close)
    return sink
