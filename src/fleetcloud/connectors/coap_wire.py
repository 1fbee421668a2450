"""The CoAP resources devices use and the command envelope (pure functions, no I/O).

What the CoAP connector serves (every request carries the device key as ``?k=KEY``)::

    POST|PUT /c/<channel name>    uplink → a message on that channel (the name may have /)
    POST|PUT /ack                 the device acknowledges a command
    GET      /cmd                 poll: nothing to say, just "anything for me?"

The response to any of them carries the device's oldest pending command, if it has one,
in the **envelope** ``<request_id> LF <command bytes>``: the request id (printable, so
never a line feed), one ``0x0a`` byte, then exactly what the parser's ``format_command``
returned. An empty payload means nothing is waiting. A command sent straight to a
device's own CoAP server (its ``coap_url``) carries the same envelope.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from fleetcloud.commands.core.models import CommandStatus
from fleetcloud.commands.lifecycle import COMMANDS_CHANNEL
from fleetcloud.core.errors import BadRequest, ConfigError, NotFound

UPLINK = "c"
ACK = "ack"
POLL = "cmd"
KEY = "k"
DEFAULT_PORT = 5683
DEFAULT_PATH = "/cmd"  # where a device's own CoAP server takes commands, unless metadata.path
URL_SETTING = "coap_url"  # the device's own CoAP server, in its parser config
SEPARATOR = b"\n"
MAX_REASON = 500

ACK_STATUSES = {
    "DELIVERED": CommandStatus.DELIVERED,
    "SUCCEEDED": CommandStatus.SUCCEEDED,
    "FAILED": CommandStatus.FAILED,
}

Kind = Literal["uplink", "ack", "poll"]


@dataclass(frozen=True, slots=True)
class Target:
    kind: Kind
    channel: str = ""


@dataclass(frozen=True, slots=True)
class Ack:
    request_id: str
    status: CommandStatus
    reason: str | None = None


def parse_path(segments: Sequence[str]) -> Target:
    """Which resource ``/seg/seg/…`` is (``NotFound`` or ``BadRequest`` if none)."""
    if tuple(segments) == (ACK,):
        return Target("ack")
    if tuple(segments) == (POLL,):
        return Target("poll")
    if not segments or segments[0] != UPLINK:
        raise NotFound(f"no resource /{'/'.join(segments)}: use /c/<channel>, /ack or /cmd")
    names = segments[1:]
    if not names or not all(names):
        raise BadRequest("an uplink goes to /c/<channel name> (no empty path segments)")
    channel = "/".join(names)
    if channel == COMMANDS_CHANNEL:
        raise BadRequest(f"the {COMMANDS_CHANNEL!r} channel is written by fleetcloud only")
    return Target("uplink", channel)


def device_key(queries: Sequence[str]) -> str | None:
    """The ``k=KEY`` URI query, if there is one (percent-decoded)."""
    for query in queries:
        name, _, value = query.partition("=")
        if name == KEY and value:
            return unquote(value)
    return None


def envelope(request_id: str, data: bytes) -> bytes:
    return request_id.encode() + SEPARATOR + data


def open_envelope(payload: bytes) -> tuple[str, bytes] | None:
    """``(request_id, command bytes)``, or None for an empty payload (no command)."""
    if not payload:
        return None
    head, found, data = payload.partition(SEPARATOR)
    if not found or not head:
        raise ValueError("not a command envelope: no request id before the first line feed")
    return head.decode(), data


def ack_from(value: Any) -> Ack:
    """A device's acknowledgement ``{"request_id", "status"?, "reason"?}`` (status
    DELIVERED by default); ``BadRequest`` for anything else."""
    if not isinstance(value, dict) or not isinstance(value.get("request_id"), str):
        raise BadRequest('an ack is {"request_id": "…", "status": "SUCCEEDED"|…}')
    status = ACK_STATUSES.get(str(value.get("status", "DELIVERED")).upper())
    if status is None:
        raise BadRequest(f"an ack's status is one of {', '.join(ACK_STATUSES)}")
    reason = value.get("reason")
    return Ack(value["request_id"], status, None if reason is None else str(reason)[:MAX_REASON])


def bind_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT``, ``HOST`` or ``:PORT`` → (host, port)."""
    value = text.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":")
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""
    try:
        number = int(port) if port else DEFAULT_PORT
        ip_address(host or "::")
    except ValueError as exc:
        raise ConfigError(
            f"bad CoAP bind address {text!r}: use IP:PORT, e.g. 0.0.0.0:5683"
        ) from exc
    if not 0 <= number < 65536:
        raise ConfigError(f"bad CoAP bind address {text!r}: port out of range")
    return host or "::", number


def direct_uri(coap_url: Any, path: Any) -> str | None:
    """Where to send a command straight to a device: its ``coap_url`` plus the command's
    ``metadata.path`` (``/cmd`` by default); None if the URL is not a CoAP URL."""
    if not isinstance(coap_url, str):
        return None
    parts = urlsplit(coap_url)
    if parts.scheme != "coap" or not parts.hostname or parts.query or parts.fragment:
        return None
    where = path if isinstance(path, str) and path.startswith("/") else DEFAULT_PATH
    return coap_url.rstrip("/") + where
