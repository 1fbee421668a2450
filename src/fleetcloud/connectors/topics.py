"""The MQTT topic layout devices use (pure functions, no I/O).

Everything a device may touch is under ``fleetcloud/<agent_id>/`` — the broker's ACL
(``pattern readwrite fleetcloud/%u/#``, see ``mosquitto.py``) confines each device there::

    fleetcloud/<agent_id>/channels/<channel name>   uplink → a message on that channel
    fleetcloud/<agent_id>/commands/ack              the device acknowledges a command
    fleetcloud/<agent_id>/status                    "online": send waiting commands now
    fleetcloud/<agent_id>/commands                  the suggested command topic
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PREFIX = "fleetcloud"
RESERVED_CHANNELS = frozenset({"commands"})  # written by fleetcloud only

Kind = Literal["uplink", "ack", "status"]


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    agent_id: int
    kind: Kind
    channel: str = ""


def subscriptions(prefix: str = PREFIX) -> list[str]:
    """What the connector subscribes to."""
    return [f"{prefix}/+/channels/#", f"{prefix}/+/commands/ack", f"{prefix}/+/status"]


def command_topic(agent_id: int | str, prefix: str = PREFIX) -> str:
    return f"{prefix}/{agent_id}/commands"


def ack_topic(agent_id: int | str, prefix: str = PREFIX) -> str:
    return f"{prefix}/{agent_id}/commands/ack"


def uplink_topic(agent_id: int | str, channel: str, prefix: str = PREFIX) -> str:
    return f"{prefix}/{agent_id}/channels/{channel}"


def status_topic(agent_id: int | str, prefix: str = PREFIX) -> str:
    return f"{prefix}/{agent_id}/status"


def owns(agent_id: int, topic: str, prefix: str = PREFIX) -> bool:
    """Whether ``topic`` is inside the device's own namespace."""
    return topic.startswith(f"{prefix}/{agent_id}/")


def parse_topic(topic: str, prefix: str = PREFIX) -> DeviceTopic | None:
    """What a device's publish is, or None for a topic outside the layout."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != prefix or not parts[1].isdigit():
        return None
    agent_id = int(parts[1])
    if not 0 < agent_id < 2**63:
        return None
    rest = parts[2:]
    if rest == ["commands", "ack"]:
        return DeviceTopic(agent_id, "ack")
    if rest == ["status"]:
        return DeviceTopic(agent_id, "status")
    if rest[0] == "channels" and len(rest) > 1 and all(rest[1:]):
        channel = "/".join(rest[1:])
        if channel in RESERVED_CHANNELS:
            return None
        return DeviceTopic(agent_id, "uplink", channel)
    return None
