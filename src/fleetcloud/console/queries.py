"""Store work the console needs beyond the data API's: channels of many devices at once,
and its own session tokens."""

from __future__ import annotations

from collections.abc import Sequence

from fleetcloud.core.types import Channel
from fleetcloud.store.agents import hash_token
from fleetcloud.store.channels import CHANNEL_COLUMNS, channel_from_row
from fleetcloud.store.ops import Execute, Fetch, Work, placeholders

SESSION_LABEL = "console"
"""The label of the tokens the console mints for its sessions (see ``sessions``)."""
CHUNK = 500


def channels_of(agent_ids: Sequence[int]) -> Work[dict[int, list[Channel]]]:
    """Every channel (with its aggregate) of each agent, by agent id."""
    found: dict[int, list[Channel]] = {agent_id: [] for agent_id in agent_ids}
    for start in range(0, len(agent_ids), CHUNK):
        chunk = list(agent_ids[start : start + CHUNK])
        rows = yield Fetch(
            f"SELECT {CHANNEL_COLUMNS} FROM channels "  # noqa: S608 - constant columns
            f"WHERE agent_id IN ({placeholders(len(chunk))}) ORDER BY name",
            chunk,
        )
        for row in rows:
            channel = channel_from_row(row)
            found[channel.agent_id].append(channel)
    return found


def end_session(token: str) -> Work[int]:
    """Delete one console session token (never any other kind of token)."""
    count: int = yield Execute(
        "DELETE FROM tokens WHERE hash = ? AND label = ?", (hash_token(token), SESSION_LABEL)
    )
    return count


def purge_sessions(now_ms: int) -> Work[int]:
    """Delete the console session tokens that have expired."""
    count: int = yield Execute(
        "DELETE FROM tokens WHERE label = ? AND expires_ms IS NOT NULL AND expires_ms < ?",
        (SESSION_LABEL, now_ms),
    )
    return count
