"""``app.api``: the data API as an app sees it, with the invoking-channel rule.

An app may not write to the channel whose message or aggregate change invoked it: that
write would invoke it again, forever. The one exception is the app's own namespace in a
reserved channel — its key in ``tag_values`` (tags are flushed at the end of every
invocation), its child in ``ui_state`` and its ``<app_key>_…`` entries in ``ui_cmds`` —
which the runtime never turns back into an invocation of the same app.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetcloud.sdk.errors import InvokingChannelWrite
from fleetcloud.sdk.events import Aggregate, Message
from fleetcloud.sdk.transport import Transport

TAG_CHANNEL = "tag_values"
UI_STATE_CHANNEL = "ui_state"
UI_CMDS_CHANNEL = "ui_cmds"
CONNECTION_CHANNEL = "doover_connection"
ALERT_CHANNEL = "significantEvent"


@dataclass(frozen=True, slots=True)
class WriteGuard:
    """Refuses writes to ``(agent_id, channel)``, the channel that invoked the app."""

    agent_id: int | None
    channel: str | None
    app_key: str

    def check(self, agent_id: int, channel: str, data: Any) -> None:
        if channel != self.channel or agent_id != self.agent_id:
            return
        if self.own_namespace(channel, data):
            return
        raise InvokingChannelWrite(
            f"this invocation was triggered by channel {channel!r} of agent {agent_id}, so the "
            "app may not write to it (that would invoke it again, in a loop); write to another "
            f"channel — only the app's own key {self.app_key!r} in tag_values (and its own "
            "ui_state / ui_cmds entries) may be written"
        )

    def own_namespace(self, channel: str, data: Any) -> bool:
        if not isinstance(data, Mapping):
            return False
        if channel == TAG_CHANNEL:
            return set(data) == {self.app_key}
        if channel == UI_CMDS_CHANNEL:
            return all(str(key).startswith(f"{self.app_key}_") for key in data)
        if channel == UI_STATE_CHANNEL:
            state = data.get("state")
            children = state.get("children") if isinstance(state, Mapping) else None
            return (
                set(data) == {"state"}
                and isinstance(state, Mapping)
                and set(state) == {"children"}
                and isinstance(children, Mapping)
                and set(children) == {self.app_key}
            )
        return False


NO_GUARD = WriteGuard(None, None, "")


class DataClient:
    """The data API for one invocation (``self.api`` in an app)."""

    def __init__(self, transport: Transport, guard: WriteGuard = NO_GUARD) -> None:
        self.transport = transport
        self.guard = guard
        self.published: list[Message] = []

    async def publish_message(self, agent_id: int | str, channel_name: str, data: Any) -> Message:
        """Publish ``data`` to ``channel_name`` of ``agent_id``; returns the stored message."""
        target = _agent(agent_id)
        self.guard.check(target, channel_name, data)
        message = Message.from_dict(await self.transport.publish(target, channel_name, data))
        self.published.append(message)
        return message

    async def update_aggregate(
        self, agent_id: int | str, channel_name: str, data: Any, *, replace: str | None = None
    ) -> Aggregate:
        """Merge-patch a channel's aggregate (``replace="a.b"`` swaps that subtree)."""
        target = _agent(agent_id)
        self.guard.check(target, channel_name, data)
        return Aggregate.from_dict(
            await self.transport.update_aggregate(target, channel_name, data, replace)
        )

    async def get_aggregate(self, agent_id: int | str, channel_name: str) -> Aggregate:
        return Aggregate.from_dict(
            await self.transport.get_aggregate(_agent(agent_id), channel_name)
        )

    async def list_agents(self, kind: str | None = None) -> list[dict[str, Any]]:
        return await self.transport.list_agents(kind)


def _agent(agent_id: int | str) -> int:
    if isinstance(agent_id, int) and not isinstance(agent_id, bool):
        return agent_id
    if isinstance(agent_id, str) and agent_id.strip().isdigit():
        return int(agent_id)
    raise ValueError(f"agent_id must be an integer id (or its decimal string), not {agent_id!r}")
