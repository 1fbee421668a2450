"""The Kafka bus against a real Kafka-protocol broker (tansu): the outbox relay, anonymous
and group subscribers, commits and resumption."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from fleetcloud.bus.base import Subscription
from fleetcloud.bus.kafka import KafkaBus
from fleetcloud.core.errors import BusError
from fleetcloud.core.types import CHANNEL_EVENTS, AgentKind, Event
from fleetcloud.store import outbox
from fleetcloud.store.base import PublishItem, Store
from fleetcloud.store.postgres import PostgresStore
from fleetcloud.store.sqlite import SqliteStore
from tests.servers.kafka import free_port, tansu_broker

pytestmark = pytest.mark.kafka

QUIET = 0.5  # seconds of silence that count as "nothing more is coming"
_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


@pytest.fixture(scope="module")
def bootstrap() -> Iterator[str]:
    with tansu_broker() as url:
        yield url.removeprefix("kafka://")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(str(tmp_path / "fleet.db"))
    await store.start()
    yield store
    await store.close()


@pytest.fixture
async def bus(store: SqliteStore, bootstrap: str) -> AsyncIterator[KafkaBus]:
    bus = KafkaBus(store, bootstrap)
    await bus.start()
    yield bus
    await bus.close()


async def devices(store: Store, count: int) -> list[int]:
    organisation = await store.create_organisation(unique("org"))
    return [
        (await store.create_agent(organisation.id, AgentKind.DEVICE, f"device-{n}")).id
        for n in range(count)
    ]


async def publish_rounds(store: Store, agents: list[int], rounds: range) -> None:
    """One ``store.publish`` (one outbox row) per round, one message per agent in each."""
    for seq in rounds:
        items = [PublishItem(agent, "telemetry", {"seq": seq}, author_id=agent) for agent in agents]
        results = await store.publish(items)
        assert all(result.success for result in results)


def expected(rounds: range) -> list[tuple[str, int]]:
    """What one agent's events look like: each message, then its aggregate update."""
    return [(kind, seq) for seq in rounds for kind in ("MessageCreate", "AggregateUpdate")]


def summary(event: Event) -> tuple[str, int]:
    kind = event.value["t"]
    data: dict[str, Any] = event.value["d"]
    seq = data["data"]["seq"] if kind == "MessageCreate" else data["aggregate"]["data"]["seq"]
    return kind, int(seq)


def by_agent(events: list[Event], agents: list[int]) -> dict[int, list[tuple[str, int]]]:
    per_agent: dict[int, list[tuple[str, int]]] = {agent: [] for agent in agents}
    for event in events:
        assert event.topic == CHANNEL_EVENTS
        assert event.value["d"]["channel"]["agent_id"] == event.key  # keyed by its agent
        per_agent[int(event.key)].append(summary(event))
    return per_agent


async def collect(
    subscription: Subscription, agents: list[int], count: int, timeout: float = 30
) -> list[Event]:
    """``agents``' events until ``count`` have arrived (or ``timeout``), then any more that
    follow within ``QUIET`` seconds, so that duplicates show. The topic is shared with the
    other tests in this module; their events are left out."""
    keys = {str(agent) for agent in agents}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    events: list[Event] = []

    async def more(wait: float) -> None:
        events.extend(e for e in await subscription.next_batch(wait) if e.key in keys)

    while len(events) < count and loop.time() < deadline:
        await more(deadline - loop.time())
    await more(QUIET)
    return events


async def outbox_rows(store: Store) -> int:
    return len(await store.read(outbox.read_after(0, 10_000)))


async def eventually_empty(store: Store, timeout: float = 10) -> None:
    """Wait for the relay to have deleted every outbox row."""
    for _ in range(int(timeout / 0.05)):
        if not await outbox_rows(store):
            return
        await asyncio.sleep(0.05)
    assert await outbox_rows(store) == 0


async def test_published_events_reach_anonymous_and_group_subscribers_in_order(
    store: SqliteStore, bus: KafkaBus
) -> None:
    agents = await devices(store, 3)
    rounds = range(10)
    async with (
        await bus.subscribe([CHANNEL_EVENTS]) as anonymous,
        await bus.subscribe([CHANNEL_EVENTS], unique("group")) as group,
    ):
        await publish_rounds(store, agents, rounds)
        total = len(agents) * len(expected(rounds))
        for subscription in (anonymous, group):
            events = await collect(subscription, agents, total)
            assert by_agent(events, agents) == {agent: expected(rounds) for agent in agents}


async def test_anonymous_subscriber_sees_only_what_is_published_after_it_subscribed(
    store: SqliteStore, bus: KafkaBus
) -> None:
    agents = await devices(store, 1)
    # relayed before the subscriber exists, each row as one two-record batch: tansu answers
    # ListOffsets(latest) inside such a batch, so this also checks the high-watermark fix
    await publish_rounds(store, agents, range(3))
    await eventually_empty(store)
    async with await bus.subscribe([CHANNEL_EVENTS]) as anonymous:
        await publish_rounds(store, agents, range(3, 5))
        events = await collect(anonymous, agents, len(expected(range(3, 5))))
    assert by_agent(events, agents) == {agents[0]: expected(range(3, 5))}


async def test_group_resumes_after_its_last_commit(store: SqliteStore, bus: KafkaBus) -> None:
    agents = await devices(store, 1)
    name = unique("group")
    async with await bus.subscribe([CHANNEL_EVENTS], name) as group:
        await publish_rounds(store, agents, range(4))
        first = await collect(group, agents, len(expected(range(4))))
        assert by_agent(first, agents)[agents[0]] == expected(range(4))
        await group.commit()
        await publish_rounds(store, agents, range(4, 6))
        handled = await collect(group, agents, len(expected(range(4, 6))))
        assert by_agent(handled, agents)[agents[0]] == expected(range(4, 6))
        # closed without committing rounds 4-5: they must come again
    await publish_rounds(store, agents, range(6, 8))  # while the group is away
    async with await bus.subscribe([CHANNEL_EVENTS], name) as group:
        resumed = await collect(group, agents, len(expected(range(4, 8))))
    assert by_agent(resumed, agents)[agents[0]] == expected(range(4, 8))


async def test_new_group_starts_at_the_end_unless_from_beginning(
    store: SqliteStore, bus: KafkaBus
) -> None:
    agents = await devices(store, 1)
    await publish_rounds(store, agents, range(2))
    await eventually_empty(store)
    async with (
        await bus.subscribe([CHANNEL_EVENTS], unique("latest")) as latest,
        await bus.subscribe([CHANNEL_EVENTS], unique("earliest"), from_beginning=True) as early,
    ):
        await publish_rounds(store, agents, range(2, 3))
        tail = await collect(latest, agents, len(expected(range(2, 3))))
        assert by_agent(tail, agents) == {agents[0]: expected(range(2, 3))}
        everything = await collect(early, agents, len(expected(range(3))))
    assert by_agent(everything, agents) == {agents[0]: expected(range(3))}


async def test_outbox_rows_are_deleted_once_relayed(store: SqliteStore, bus: KafkaBus) -> None:
    agents = await devices(store, 2)
    async with await bus.subscribe([CHANNEL_EVENTS]) as anonymous:
        await publish_rounds(store, agents, range(5))
        events = await collect(anonymous, agents, 2 * len(expected(range(5))))
    assert len(events) == 2 * len(expected(range(5)))
    await eventually_empty(store)
    assert await bus.lag() == {"kafka-relay": 0}


async def test_rows_written_while_the_relay_is_stopped_are_relayed_on_start(
    store: SqliteStore, bootstrap: str
) -> None:
    agents = await devices(store, 2)
    bus = KafkaBus(store, bootstrap)
    try:
        async with await bus.subscribe([CHANNEL_EVENTS]) as anonymous:
            await publish_rounds(store, agents, range(6))
            await asyncio.sleep(QUIET)
            assert await outbox_rows(store) == 6  # nothing relays them yet
            assert await bus.lag() == {"kafka-relay": 6}
            assert await collect(anonymous, agents, 0) == []
            await bus.start()
            events = await collect(anonymous, agents, 2 * len(expected(range(6))))
    finally:
        await bus.close()
    assert by_agent(events, agents) == {agent: expected(range(6)) for agent in agents}
    assert await outbox_rows(store) == 0


async def test_a_restarted_bus_relays_what_was_written_while_it_was_closed(
    store: SqliteStore, bootstrap: str
) -> None:
    agents = await devices(store, 1)
    name = unique("group")
    async with KafkaBus(store, bootstrap) as bus, await bus.subscribe([CHANNEL_EVENTS], name):
        pass  # the group now exists and starts here
    await publish_rounds(store, agents, range(3))
    async with KafkaBus(store, bootstrap) as bus:
        async with await bus.subscribe([CHANNEL_EVENTS], name) as group:
            events = await collect(group, agents, len(expected(range(3))))
        assert await bus.lag() == {"kafka-relay": 0}
    assert by_agent(events, agents) == {agents[0]: expected(range(3))}


async def test_relay_keeps_rows_while_kafka_is_down_and_delivers_them_later(
    store: SqliteStore,
) -> None:
    port = free_port()
    agents = await devices(store, 1)
    async with broker_on(port):
        bus = KafkaBus(store, f"127.0.0.1:{port}")
        await bus.start()
    try:
        await publish_rounds(store, agents, range(3))  # the broker is gone
        await asyncio.sleep(1)
        assert await outbox_rows(store) == 3
        async with (
            broker_on(port),
            await bus.subscribe([CHANNEL_EVENTS], unique("group"), from_beginning=True) as group,
        ):
            # the restarted broker is empty: the events must come from the outbox
            events = await collect(group, agents, len(expected(range(3))), timeout=60)
            await eventually_empty(store)
    finally:
        await bus.close()
    assert by_agent(events, agents) == {agents[0]: expected(range(3))}


@pytest.mark.postgres
async def test_two_processes_share_a_postgres_outbox_without_duplicates(
    postgres_url: str, bootstrap: str
) -> None:
    database = await fresh_database(postgres_url)
    async with (
        PostgresStore(database) as first_store,
        PostgresStore(database) as second_store,
        KafkaBus(first_store, bootstrap) as first,
        KafkaBus(second_store, bootstrap),
    ):
        agents = [*await devices(first_store, 1), *await devices(second_store, 1)]
        async with await first.subscribe([CHANNEL_EVENTS]) as anonymous:
            await asyncio.gather(
                publish_rounds(first_store, agents[:1], range(30)),
                publish_rounds(second_store, agents[1:], range(30)),
            )
            events = await collect(anonymous, agents, 2 * len(expected(range(30))))
        assert by_agent(events, agents) == {agent: expected(range(30)) for agent in agents}
        await eventually_empty(first_store)


async def fresh_database(server_url: str) -> str:
    name = "fc_kafka_" + secrets.token_hex(6)
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server_url.rsplit("/", 1)[0] + "/" + name


async def test_start_raises_bus_error_when_kafka_is_unreachable(store: SqliteStore) -> None:
    bus = KafkaBus(store, f"127.0.0.1:{free_port()}")
    with pytest.raises(BusError):
        await bus.start()
    await bus.close()


@contextlib.asynccontextmanager
async def broker_on(port: int) -> AsyncIterator[str]:
    manager = tansu_broker(port)
    url = await asyncio.to_thread(manager.__enter__)
    try:
        yield url
    finally:
        await asyncio.to_thread(manager.__exit__, None, None, None)
