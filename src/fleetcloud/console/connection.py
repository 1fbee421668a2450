"""Is a device online? Read from its ``doover_connection`` aggregate (pure).

The aggregate is what ``ping_connection`` writes (docs/sdk.md, "Connection status")::

    {"status": {"status": "ContinuousOnline", "determination": "Online",
                "last_online": ms, "last_ping": ms, "offline_at"?: ms},
     "config": {"connection_type": "Continuous", "offline_after": s}}

``determination`` was decided when the ping was made, so a device that went silent
still says ``Online``: the console also requires ``last_online`` to be younger than
``offline_after`` (from ``offline_at``, else ``config.offline_after``, else one hour).
The older flat shape ``{"status": "online", "last_seen": ms}`` is read too.
``static/console.js`` (``connectionOf``) applies the same rules to live updates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_OFFLINE_AFTER_MS = 60 * 60 * 1000


@dataclass(frozen=True, slots=True)
class ConnectionState:
    state: str  # "online" | "offline" | "unknown" (never reported)
    last_seen_ms: int | None = None
    detail: str | None = None  # the reported status, e.g. "ContinuousOnline"

    @property
    def online(self) -> bool:
        return self.state == "online"


UNKNOWN = ConnectionState("unknown")


def _ms(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _offline_after_ms(status: dict[str, Any], config: Any, last_online: int) -> int:
    offline_at = _ms(status.get("offline_at"))
    if offline_at is not None and offline_at > last_online:
        return offline_at - last_online
    seconds = config.get("offline_after") if isinstance(config, dict) else None
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds > 0:
        return int(seconds * 1000)
    return DEFAULT_OFFLINE_AFTER_MS


def connection_state(aggregate: Any, now_ms: int) -> ConnectionState:
    """The device's state from its ``doover_connection`` aggregate data."""
    if not isinstance(aggregate, dict):
        return UNKNOWN
    status = aggregate.get("status")
    if isinstance(status, str):  # the flat shape
        seen = _ms(aggregate.get("last_seen"))
        fresh = seen is not None and now_ms - seen <= DEFAULT_OFFLINE_AFTER_MS
        state = "online" if status.lower() == "online" and fresh else "offline"
        return ConnectionState(state, seen, status)
    if not isinstance(status, dict):
        return UNKNOWN
    last_online = _ms(status.get("last_online"))
    last_ping = _ms(status.get("last_ping"))
    seen = last_online if last_online is not None else last_ping
    detail = status.get("status") if isinstance(status.get("status"), str) else None
    if seen is None:
        return ConnectionState("unknown", None, detail)
    window = _offline_after_ms(status, aggregate.get("config"), seen)
    online = status.get("determination") != "Offline" and now_ms - seen <= window
    return ConnectionState("online" if online else "offline", seen, detail)
