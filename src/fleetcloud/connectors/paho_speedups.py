"""Speed-ups for the connector's paho-mqtt client (its uplink hot path).

paho reads every packet with at least three ``recv`` calls (the command byte, the length
bytes one by one, the body) and handles a packet or two per readable event. At tens of
thousands of small uplinks a second that is most of the connector's time. ``buffer_reads``
gives one paho client a read buffer: one ``recv`` of up to 64 KiB serves many packets,
and a readable event handles every complete packet in it (a few hundred at most, then it
reschedules itself, so other tasks still run).

``skip_topic_filters`` replaces the client's per-topic callback table, which paho walks
for every message, with an empty one, when nothing is registered in it (the connector
never registers per-topic callbacks).

Both replace attributes on the instance and only when they are what this module expects
(paho 2.x); otherwise they leave the client alone. TLS sockets are left alone.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

log = logging.getLogger("fleetcloud.connectors.mqtt")

READ_SIZE = 65_536
PACKETS_PER_EVENT = 500
SUCCESS = 0  # paho's MQTTErrorCode values
AGAIN = -1
NO_CONNECTION = 4


class _NoFilters:
    """An empty topic-filter table that costs nothing to search."""

    def iter_match(self, topic: str) -> tuple[()]:
        return ()

    def __setitem__(self, key: str, value: object) -> None:
        raise RuntimeError("per-topic callbacks are not used on this client")


def skip_topic_filters(paho: Any) -> bool:
    table = getattr(paho, "_on_message_filtered", None)
    root = getattr(table, "_root", None)
    if root is None or getattr(root, "_children", None) or getattr(root, "_content", None):
        return False
    paho._on_message_filtered = _NoFilters()
    return True


def buffer_reads(paho: Any, loop: asyncio.AbstractEventLoop) -> bool:
    """Install the read buffer on a connected paho client; False if not installed."""
    sock = getattr(paho, "_sock", None)
    needed = ("_packet_read", "_loop_rc_handle", "_sock_recv", "loop_read")
    if sock is None or isinstance(sock, ssl.SSLSocket) or not all(hasattr(paho, n) for n in needed):
        return False
    buffer = bytearray()

    def sock_recv(size: int) -> bytes:
        if not buffer:
            current = paho._sock
            if current is None:
                raise ConnectionError("the socket is closed")
            data = current.recv(READ_SIZE)  # raises BlockingIOError when there is none
            if not data:
                return b""
            buffer.extend(data)
        chunk = bytes(buffer[:size])
        del buffer[:size]
        return chunk

    def loop_read(max_packets: int = 1) -> int:
        for _ in range(PACKETS_PER_EVENT):
            if paho._sock is None:
                return NO_CONNECTION
            rc = paho._packet_read()
            if rc > 0:
                result: int = paho._loop_rc_handle(rc)
                return result
            if rc == AGAIN and not buffer:
                return SUCCESS
        if buffer:  # more complete packets wait in the buffer: come back soon
            loop.call_soon(loop_read)
        return SUCCESS

    paho._sock_recv = sock_recv
    paho.loop_read = loop_read
    return True
