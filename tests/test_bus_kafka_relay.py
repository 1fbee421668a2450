"""The Kafka bus against a real Kafka-protocol broker (tansu): the outbox relay, anonymous
and group subscribers, commits and resumption."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from fleetcloud.bus import kafka
from fleetcloud.bus.base import Subscription
from fleetcloud.bus.kafka import RECORD_BYTES, KafkaBus, decode_record, encode_records
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
    await publish_rounds(store, agents, range(3))
    await eventually_empty(store)
    async with await bus.subscribe([CHANNEL_EVENTS]) as anonymous:
        await publish_rounds(store, agents, range(3, 5))
        events = await collect(anonymous, agents, len(expected(range(3, 5))))
    assert by_agent(events, agents) == {agents[0]: expected(range(3, 5))}


async def test_a_late_subscriber_skips_the_rest_of_a_record_batch(
    store: SqliteStore, bus: KafkaBus
) -> None:
    # A topic whose events are one record each: every outbox row below is relayed as one
    # three-record batch. tansu answers ListOffsets(latest) inside such a batch, so this
    # checks that a new subscriber starts at the high watermark instead.
    topic = unique("plain")
    await bus.publish([Event(topic, "k", {"n": n}) for n in range(3)])
    await eventually_empty(store)
    async with await bus.subscribe([topic]) as anonymous:
        await bus.publish([Event(topic, "k", {"n": n}) for n in range(3, 6)])
        events: list[Event] = []
        while len(events) < 3:
            batch = await anonymous.next_batch(10)
            assert batch, "the events published after subscribing did not arrive"
            events += batch
        events += await anonymous.next_batch(QUIET)
    assert [event.value["n"] for event in events] == [3, 4, 5]


def test_a_keys_channel_events_share_records_and_decode_in_order() -> None:
    other = Event("device_commands", "7", {"request_id": "r1"})
    events = [
        Event(CHANNEL_EVENTS, "1", {"t": "MessageCreate", "n": 0}),
        other,
        Event(CHANNEL_EVENTS, "2", {"t": "MessageCreate", "n": 1}),
        Event(CHANNEL_EVENTS, "1", {"t": "AggregateUpdate", "n": 2}),
    ]
    records = encode_records(events)
    # one record per key on the channel topic, one per event elsewhere
    assert sorted((topic, key) for topic, key, _ in records) == [
        (CHANNEL_EVENTS, b"1"),
        (CHANNEL_EVENTS, b"2"),
        ("device_commands", b"7"),
    ]
    decoded = [
        event
        for topic, key, value in records
        for event in decode_record(SimpleNamespace(topic=topic, key=key, value=value))
    ]
    assert [e for e in decoded if e.key == "1"] == [events[0], events[3]]
    assert [e for e in decoded if e.key == "2"] == [events[2]]
    assert [e for e in decoded if e.topic == "device_commands"] == [other]


def test_grouped_records_stay_below_the_size_limit() -> None:
    big = "x" * (RECORD_BYTES // 5)
    events = [Event(CHANNEL_EVENTS, "1", {"n": n, "pad": big}) for n in range(12)]
    records = encode_records(events)
    assert len(records) > 1
    assert all(len(value) <= RECORD_BYTES + 64 for _, _, value in records)
    decoded = [
        event.value["n"]
        for topic, key, value in records
        for event in decode_record(SimpleNamespace(topic=topic, key=key, value=value))
    ]
    assert decoded == list(range(12))


def test_records_that_hold_no_events_are_skipped() -> None:
    for value in (b"not json", b"[1, 2]", b'"text"', b"[]"):
        record = SimpleNamespace(topic="t", key=b"k", value=value, partition=0, offset=1)
        assert decode_record(record) == []


async def test_many_events_for_one_key_arrive_whole_and_in_order(
    store: SqliteStore, bus: KafkaBus
) -> None:
    agents = await devices(store, 2)
    items = [
        PublishItem(agent, "telemetry", {"seq": seq, "pad": "y" * 400}, author_id=agent)
        for seq in range(1500)  # more JSON per key than one record holds
        for agent in agents
    ]
    async with await bus.subscribe([CHANNEL_EVENTS], unique("group")) as group:
        assert all(result.success for result in await store.publish(items))
        events = await collect(group, agents, 2 * 1501)
    for agent, seen in by_agent(events, agents).items():
        created = [seq for kind, seq in seen if kind == "MessageCreate"]
        assert created == list(range(1500)), agent
        assert seen[-1] == ("AggregateUpdate", 1499)
    await eventually_empty(store)


async def test_rows_another_process_wrote_are_relayed_alongside_this_ones(
    store: SqliteStore, bus: KafkaBus
) -> None:
    agents = await devices(store, 2)
    async with (
        await bus.subscribe([CHANNEL_EVENTS]) as anonymous,
        SqliteStore(store.path) as other_process,  # its commits reach no listener here
    ):
        await publish_rounds(other_process, agents[1:], range(3))
        await publish_rounds(store, agents[:1], range(3))
        events = await collect(anonymous, agents, 2 * len(expected(range(3))))
    assert by_agent(events, agents) == {agent: expected(range(3)) for agent in agents}
    await eventually_empty(store)


async def test_a_commit_heard_after_the_table_poll_saw_its_row_is_relayed_once_in_order(
    store: SqliteStore, bus: KafkaBus
) -> None:
    """The fast path hears of each commit through a callback, which can come after the
    once-a-second table poll has already listed the row. Here the callbacks are held and
    handed over at chosen moments: the first row's just before a poll, the second's after
    it. The poll relays both in id order (the first from what the fast path holds, the
    second read from the table), the late callback relays nothing again, and every event
    arrives once, in order."""
    agents = await devices(store, 1)
    await eventually_empty(store)
    held: list[tuple[int, Any]] = []

    def hold(position: int, events: Any) -> None:
        held.append((position, events))

    async with await bus.subscribe([CHANNEL_EVENTS]) as anonymous:
        store.remove_commit_listener(bus._on_commit)
        store.add_commit_listener(hold)
        try:
            await publish_rounds(store, agents, range(2))  # two outbox rows, nobody told
            assert [position for position, _ in held] == sorted(p for p, _ in held)
            first, second = held
            bus._table_at = float("-inf")  # the poll is due at the relay's next wake-up
            bus._on_commit(*first)
            await eventually_empty(store)
            bus._on_commit(*second)  # its row went with the poll
        finally:
            store.remove_commit_listener(hold)
            store.add_commit_listener(bus._on_commit)
        await publish_rounds(store, agents, range(2, 3))  # the fast path as usual
        events = await collect(anonymous, agents, len(expected(range(3))))
    assert by_agent(events, agents) == {agents[0]: expected(range(3))}
    await eventually_empty(store)


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


async def test_a_resting_subscription_fetches_nothing_and_then_reads_what_came_meanwhile(
    store: SqliteStore, bus: KafkaBus
) -> None:
    agents = await devices(store, 1)
    async with await bus.subscribe([CHANNEL_EVENTS], unique("group")) as group:
        await publish_rounds(store, agents, range(1))
        assert await collect(group, agents, len(expected(range(1))))  # assigned and reading
        consumer = group.consumer  # type: ignore[attr-defined]
        assigned = consumer.assignment()
        resting = asyncio.ensure_future(group.rest(1.5))
        await asyncio.sleep(0.2)
        assert assigned
        assert consumer.paused() == assigned  # so no fetch requests meanwhile
        await publish_rounds(store, agents, range(1, 4))
        await resting
        assert not consumer.paused()
        events = await collect(group, agents, len(expected(range(1, 4))))
    assert by_agent(events, agents) == {agents[0]: expected(range(1, 4))}


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


async def test_a_relay_that_does_not_give_way_cannot_hold_the_close(
    store: SqliteStore, bootstrap: str, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    monkeypatch.setattr(kafka, "RELAY_STOP_TIMEOUT", 0.5)
    monkeypatch.setattr(kafka, "FINAL_DRAIN_TIMEOUT", 0.5)
    bus = KafkaBus(store, bootstrap)
    await bus.start()
    inside, released = asyncio.Event(), asyncio.Event()

    async def swallows_its_cancellation() -> None:  # a client call that does not give way
        inside.set()
        while not released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await released.wait()
        raise asyncio.CancelledError  # let go at last

    monkeypatch.setattr(bus, "_relay_due", swallows_its_cancellation)
    relay = bus._relay
    assert relay is not None
    try:
        bus._wakeup.set()
        await asyncio.wait_for(inside.wait(), QUIET * 10)
        await asyncio.wait_for(bus.close(), 5.0)  # it would wait for the relay forever
        assert not relay.done()
        assert "not stopped 0.5 s after it was cancelled" in caplog.text
        assert "swallows_its_cancellation" in caplog.text  # where it was stuck
    finally:
        released.set()
        await asyncio.wait({relay}, timeout=5.0)
    assert relay.cancelled()
