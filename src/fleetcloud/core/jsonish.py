"""JSON encoding helpers: one fast codec for the whole code base, and id conversion."""

from __future__ import annotations

from typing import Any

import orjson

from fleetcloud.core.errors import BadRequest

dumps = orjson.dumps
loads = orjson.loads


def dumps_str(value: Any) -> str:
    return orjson.dumps(value).decode()


def loads_or_none(text: str | bytes | None) -> Any:
    return None if text is None else orjson.loads(text)


def parse_body(body: bytes) -> Any:
    """Decode a request body, or raise a 400 that says what is wrong with it."""
    if not body:
        raise BadRequest("the request body is empty; send a JSON document")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from exc


def to_id(value: Any, what: str = "id") -> int:
    """An id given as an int or a decimal string (JavaScript clients send strings)."""
    if isinstance(value, bool):
        raise BadRequest(f"{what} must be an integer id, not {value!r}")
    if isinstance(value, int):
        result = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        result = int(value)
    else:
        raise BadRequest(f"{what} must be an integer id, not {value!r}")
    if not 0 < result < 2**63:
        raise BadRequest(f"{what} {result} is out of range")
    return result
