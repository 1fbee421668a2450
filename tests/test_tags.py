"""Tags in the tag_values channel, on SQLite and PostgreSQL."""

from __future__ import annotations

from fleetcloud.core.types import AgentKind
from fleetcloud.store import channels as repo
from fleetcloud.store.base import Store
from fleetcloud.store.tags import TAG_CHANNEL, get_tag, get_tags, set_tags


async def test_tags_merge_per_app_and_null_clears(store: Store) -> None:
    organisation = await store.create_organisation("org")
    agent = await store.create_agent(organisation.id, AgentKind.DEVICE, "pump")
    await store.write(set_tags(agent.id, "pump_app", {"state": "running", "count": 1}, agent.id))
    await store.write(set_tags(agent.id, "sim_app", {"reading": 3.5}, agent.id))
    tags = await store.write(set_tags(agent.id, "pump_app", {"count": 2, "state": None}, agent.id))
    assert tags == {"count": 2}
    assert await store.read(get_tags(agent.id, "sim_app")) == {"reading": 3.5}
    assert await store.read(get_tag(agent.id, "pump_app", "state", "unknown")) == "unknown"
    assert await store.read(get_tag(agent.id, "sim_app", "reading")) == 3.5
    channel = await store.read(repo.require_channel(agent.id, TAG_CHANNEL))
    assert channel.aggregate == {"pump_app": {"count": 2}, "sim_app": {"reading": 3.5}}
    history = await store.read(repo.list_messages(channel))
    assert len(history) == 3  # every change is in the history too


async def test_tags_of_an_agent_without_any(store: Store) -> None:
    organisation = await store.create_organisation("org")
    agent = await store.create_agent(organisation.id, AgentKind.DEVICE, "new")
    assert await store.read(get_tags(agent.id, "app")) == {}
    assert await store.read(get_tag(agent.id, "app", "x", default=5)) == 5
