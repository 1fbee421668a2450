"""What only the in-process bus has: its log is the outbox table."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from fleetcloud.bus.memory import READ_CHUNK, MemoryBus
from fleetcloud.core.types import Event
from fleetcloud.store import outbox
from fleetcloud.store.base import Store
from fleetcloud.store.channels import PublishItem
from tests.test_bus import devices


@pytest.fixture
async def memory_bus(store: Store) -> AsyncIterator[MemoryBus]:
    async with MemoryBus(store) as bus:
        assert isinstance(bus, MemoryBus)
        yield bus


async def test_a_group_catching_up_skips_other_topics_without_waiting(
    store: Store, memory_bus: MemoryBus
) -> None:
    [agent] = await devices(store, 1)
    group = "g-" + secrets.token_hex(4)
    async with await memory_bus.subscribe(["mine"], group):
        pass  # registered at the current end
    for n in range(READ_CHUNK + 20):  # more than one read chunk of other topics' rows
        await store.publish([PublishItem(agent, "c", {"n": n}, agent)])
    await memory_bus.publish([Event("mine", "k", {"t": "Mine"})])
    async with await memory_bus.subscribe(["mine"], group) as resumed:
        events = await resumed.next_batch(timeout=0.5)
    assert [e.value["t"] for e in events] == ["Mine"]


async def test_prune_without_groups_empties_the_outbox(store: Store, memory_bus: MemoryBus) -> None:
    [agent] = await devices(store, 1)
    await store.publish([PublishItem(agent, "c", {"n": 1}, agent)])
    assert await memory_bus.prune() >= 1
    assert await store.read(outbox.read_after(0)) == []


async def test_prune_keeps_what_a_group_has_not_committed(
    store: Store, memory_bus: MemoryBus
) -> None:
    [agent] = await devices(store, 1)
    async with await memory_bus.subscribe(["channel_events"], "slow"):
        await store.publish([PublishItem(agent, "c", {"n": 1}, agent)])
        await memory_bus.prune()
        assert len(await store.read(outbox.read_after(0))) == 1
