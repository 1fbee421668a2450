"""Request and response helpers: bounded body reading, gzip, JSON in and out."""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from fleetcloud.core.errors import BadRequest, PayloadTooLarge
from fleetcloud.core.jsonish import parse_body


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def max_body(request: Request) -> int:
    return int(request.app.state.platform.settings.max_body_bytes)


async def read_body(request: Request) -> bytes:
    """The raw request body, refused with 413 past the configured limit (also after gzip)."""
    limit = max_body(request)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding == "gzip" and body:
        body = gunzip(body, limit)
    elif encoding not in ("", "identity"):
        raise BadRequest(f"Content-Encoding {encoding!r} is not supported; send gzip or none")
    return body


def gunzip(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"the gzip-encoded body could not be decompressed: {exc}") from exc
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed request body exceeds the {limit}-byte limit")
    if not inflater.eof:
        raise BadRequest("the gzip-encoded body is truncated")
    return data


async def read_json(request: Request) -> Any:
    return parse_body(await read_body(request))


async def read_object(request: Request, *, optional: bool = False) -> dict[str, Any]:
    """The body as a JSON object; with ``optional``, an empty body is ``{}``."""
    raw = await read_body(request)
    if optional and not raw:
        return {}
    body = parse_body(raw)
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def is_digits(text: str) -> bool:
    """Only ASCII digits (``str.isdigit`` also takes ``²``, which ``int`` refuses)."""
    return text.isascii() and text.isdigit()


def query_int(
    request: Request, name: str, default: int | None = None, *, low: int = 0, high: int = 2**63 - 1
) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not is_digits(raw):
        raise BadRequest(f"query parameter {name!r} must be a non-negative integer, not {raw!r}")
    value = int(raw)
    if not low <= value <= high:
        raise BadRequest(f"query parameter {name!r} must be between {low} and {high}")
    return value
