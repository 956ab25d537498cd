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
    if max_bytes is not None and len(payload) > max_bytes:
        raise MalformedPayload(f"{what} rejected: {len(payload)} bytes, over the {max_bytes}-byte limit")
    try:  # pydantic's own JSON parser: ~4x faster than json.loads + validate (1,000 nodes: docs/SCALE.md)
        model = cls.model_validate_json(payload)
    except ValidationError as exc:
        err = exc.errors()[0]
        if err["type"] == "json_invalid":  # also invalid UTF-8 and nesting past the parser's limit
            raise MalformedPayload(f"{what} is not JSON: {err['msg']}"[:REASON_CHARS]) from None
        if err["type"] == "model_type" and not err["loc"]:
            kind = type(json.loads(payload)).__name__  # valid JSON, as the parser just said
            raise MalformedPayload(f"{what} is a JSON {kind}, not an object") from None
        where = ".".join(str(p) for p in err["loc"]) or "payload"
        raise MalformedPayload(
            f"{what} rejected ({exc.error_count()} error(s)): {where}: {err['msg']}"[:REASON_CHARS]) from None
    # The parser takes NaN and ±Infinity; only a payload spelling one can hold one (a match in a string
    # costs one extra parse that finds nothing).
    if b"NaN" in payload or b"Infinity" in payload:
        bad = [k for k, v in _floats(json.loads(payload)) if not math.isfinite(v)]
        if bad:
            raise MalformedPayload(f"{what} has non-finite numbers at {', '.join(bad[:3])}"[:REASON_CHARS])
    return model
