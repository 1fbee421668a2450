"""Connection status: what ``ping_connection`` writes to the ``doover_connection`` channel.

Each ping is one message (history plus a merge into the aggregate)::

    {"status": {"status": "PeriodicUnknown",        # ConnectionStatus value
                "determination": "Online",          # Online | Offline, at ping time
                "last_online": 1795332781225,       # ms (online_at)
                "last_ping": 1795332781301,         # ms (when the ping was made)
                "offline_at": 1795336381225,        # ms, if given
                "user_agent": "fleetcloud-processor,app_key=…"},
     "config": {"connection_type": "Periodic",      # ConnectionType value, if given
                "offline_after": 3600}}             # s, if offline_at was given

The envelope's ``connection_data`` is this channel's aggregate.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum
from typing import Any

DEFAULT_OFFLINE_AFTER_S = 60 * 60


class ConnectionStatus(Enum):
    continuous_online = "ContinuousOnline"
    continuous_online_no_ping = "ContinuousOnlineNoPing"
    continuous_offline = "ContinuousOffline"
    continuous_pending = "ContinuousPending"
    periodic_unknown = "PeriodicUnknown"
    unknown = "Unknown"


class ConnectionType(Enum):
    continuous = "Continuous"
    periodic_continuous = "PeriodicContinuous"
    periodic = "Periodic"


def to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # a naive time is taken as UTC
    return int(moment.timestamp() * 1000)


def ping_payload(
    *,
    online_at: datetime,
    now: datetime,
    connection_status: ConnectionStatus,
    connection_type: ConnectionType | None,
    offline_at: datetime | None,
    configured_offline_after: Any,
    user_agent: str,
) -> dict[str, Any]:
    """The message a ping publishes (see the module docstring)."""
    if offline_at is not None:
        offline_after = (to_ms(offline_at) - to_ms(online_at)) / 1000
    elif isinstance(configured_offline_after, int | float):
        offline_after = float(configured_offline_after)
    else:
        offline_after = DEFAULT_OFFLINE_AFTER_S
    online = (to_ms(now) - to_ms(online_at)) / 1000 <= offline_after
    status: dict[str, Any] = {
        "status": connection_status.value,
        "determination": "Online" if online else "Offline",
        "last_online": to_ms(online_at),
        "last_ping": to_ms(now),
        "user_agent": user_agent,
    }
    if offline_at is not None:
        status["offline_at"] = to_ms(offline_at)
    payload: dict[str, Any] = {"status": status}
    config: dict[str, Any] = {}
    if connection_type is not None:
        config["connection_type"] = connection_type.value
    if offline_at is not None:
        config["offline_after"] = offline_after
    if config:
        payload["config"] = config
    return payload


def utcnow() -> datetime:
    return datetime.now(UTC)
