"""The pipe protocol between the server and an app worker: length-prefixed JSON frames.

    frame = u32 big-endian length | JSON object

It runs on a socket of its own (a ``socketpair`` end passed to the worker), never on the
worker's standard output or error: those are the invocation's captured logs, so whatever
an app prints cannot corrupt the protocol.

Requests and answers, one answer per request::

    {"op": "load", "root", "handler", "memory_mb"}   → {"ok": true} | {"ok": false, "error"}
    {"op": "invoke", "envelope", "api_url"}          → {"ok": true, "started", "duration_ms",
                                                         "summary", "error", "memory_error"}
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import orjson

HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024


class ProtocolError(Exception):
    """The other side closed the channel, or sent something that is not a frame."""


def encode(message: dict[str, Any]) -> bytes:
    body = orjson.dumps(message, default=str, option=orjson.OPT_NON_STR_KEYS)
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> dict[str, Any]:
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"a frame that is not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise ProtocolError("a frame that is not a JSON object")
    return message


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            raise ProtocolError("the channel was closed")
        chunks += chunk
    return bytes(chunks)


def receive(sock: socket.socket) -> dict[str, Any]:
    """Read one frame (blocking); ``ProtocolError`` if the channel is closed."""
    (size,) = HEADER.unpack(_read_exactly(sock, HEADER.size))
    if size > MAX_FRAME:
        raise ProtocolError(f"a frame of {size} bytes is too large")
    return decode(_read_exactly(sock, size))


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(encode(message))
