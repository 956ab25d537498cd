"""MQTT v5 request/response commands on {prefix}/node/{node}/cmd: rollback, pin VERSION, unpin, inventory, status.

The request carries a Response Topic and Correlation Data (MQTT v5 properties); the response
(CommandResponse JSON) goes to that topic with the same correlation data. Without a response topic
the answer goes to {prefix}/node/{node}/cmd/response. A response topic elsewhere than the node's own
cmd/response or an admin tool's reply subtree ({prefix}/admin/{client}/replies/...) is refused: the
answer goes to the node's own cmd/response instead (the request itself is authorized: only the node and
the operators may write its cmd topic), so a command can never make a node write on someone else's topic.
Runs in paho's callback thread, so anything slow (a rollback swaps engines) is handed to the updater's
worker; reads answer at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from agent.protocol.messages import CommandRequest, CommandResponse
from agent.protocol.topics import Topics
from agent.updates.updater import Updater

log = logging.getLogger(__name__)

# topic, payload, correlation data (None when the request had none)
Respond = Callable[[str, bytes, bytes | None], None]


class CommandsHandler:
    def __init__(self, node: str, topics: Topics, updater: Updater, respond: Respond) -> None:
        self.node = node
        self.topics = topics
        self.updater = updater
        self.respond = respond

    @property
    def topic(self) -> str:
        return self.topics.command(self.node)

    def on_message(self, msg: Any) -> None:
        """Handle one paho MQTTMessage (v5). Never blocks: slow commands go to the updater worker."""
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) or self.topics.response(self.node)
        correlation = getattr(props, "CorrelationData", None)
        if not isinstance(response_topic, str) or not self.topics.is_reply_topic(response_topic, self.node):
            log.warning("command: response topic %r refused (not under %s/...): answering on %s",
                        response_topic, self.topics.admin_replies("CLIENT"), self.topics.response(self.node))
            response_topic = self.topics.response(self.node)
        correlation = bytes(correlation) if isinstance(correlation, bytes | bytearray) else None
        self.handle(bytes(msg.payload), response_topic, correlation)

    def handle(self, payload: bytes, response_topic: str, correlation: bytes | None) -> None:
        def reply(resp: CommandResponse) -> None:
            try:
                self.respond(response_topic, resp.model_dump_json().encode(), correlation)
            except Exception:  # noqa: BLE001 - a lost reply must not kill the worker
                log.exception("sending the command response failed")

        try:
            req = CommandRequest.model_validate_json(payload)
        except (ValidationError, ValueError) as exc:
            command = "?"
            with contextlib.suppress(ValueError, AttributeError):
                command = str(json.loads(payload).get("command", "?"))
            reply(CommandResponse(node=self.node, command=command, ok=False,
                                  error=f"bad command request: {str(exc).splitlines()[0]}"))
            return
        if req.command == "inventory":
            reply(CommandResponse(node=self.node, command="inventory", ok=True, result=self.updater.inventory()))
        elif req.command == "status":
            reply(CommandResponse(node=self.node, command="status", ok=True, result=self.updater.status()))
        else:
            self.updater.submit_command(req, reply)


def paho_responder(client: Any) -> Respond:
    """A Respond for a paho v2 client: QoS 1, correlation data copied into the v5 properties."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    def respond(topic: str, payload: bytes, correlation: bytes | None) -> None:
        props = Properties(PacketTypes.PUBLISH)
        if correlation is not None:
            props.CorrelationData = correlation
        client.publish(topic, payload, qos=1, retain=False, properties=props)

    return respond


__all__ = ["CommandsHandler", "Respond", "paho_responder"]
