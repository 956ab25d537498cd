"""Read one node payload (JSON) into its protocol model, or say in one short line why not.

Every JSON leaf the dashboard draws goes through `parse_model`: the caller marks that node faulty with the
reason and every other node keeps updating. Numbers must be finite: Python's JSON may carry NaN/Infinity,
the page's JSON cannot (`state.dumps` refuses them), so one such payload would otherwise break every
stream, not just its node's row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
REASON_CHARS = 200  # a reason is shown on the node's row and logged: keep it one line


class MalformedPayload(ValueError):
    """A node sent something we cannot read. The message is shown on the node's row."""


def _floats(d: Any, path: str = "") -> Iterator[tuple[str, float]]:
    if isinstance(d, float):
        yield path or "payload", d
    elif isinstance(d, dict):
        for k, v in d.items():
            yield from _floats(v, f"{path}.{k}" if path else str(k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _floats(v, f"{path}[{i}]")


def parse_model(cls: type[M], payload: bytes, what: str, max_bytes: int | None = None) -> M:
    """Size (when capped), JSON object, the model's validation, finite numbers; else MalformedPayload."""
    try:
        return _parse(cls, payload, what, max_bytes)
    except RecursionError:  # [[[[...: raised, it would end the MQTT thread that called us
        raise MalformedPayload(f"{what} is nested too deeply") from None


def _parse(cls: type[M], payload: bytes, what: str, max_bytes: int | None) -> M:
    if max_bytes is not None and len(payload) > max_bytes:
        raise MalformedPayload(f"{what} rejected: {len(payload)} bytes, over the {max_bytes}-byte limit")
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedPayload(f"{what} is not JSON: {exc}"[:REASON_CHARS]) from None
    if not isinstance(data, dict):
        raise MalformedPayload(f"{what} is a JSON {type(data).__name__}, not an object")
    try:
        model = cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "payload"
        raise MalformedPayload(
            f"{what} rejected ({exc.error_count()} error(s)): {where}: {err['msg']}"[:REASON_CHARS]) from None
    bad = [k for k, v in _floats(data) if not math.isfinite(v)]
    if bad:
        raise MalformedPayload(f"{what} has non-finite numbers at {', '.join(bad[:3])}"[:REASON_CHARS])
    return model
