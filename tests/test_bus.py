"""The bus suite: every test runs on the in-process bus and on Kafka (a real broker),
each over SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from fleetcloud.bus.base import Bus, Subscription
from fleetcloud.connectors.base import Committer
from fleetcloud.core.errors import StoreError
from fleetcloud.core.types import CHANNEL_EVENTS, AgentKind, Event
from fleetcloud.store.base import Store
from fleetcloud.store.channels import PublishItem

WAIT = 20.0


async def devices(store: Store, count: int = 2) -> list[int]:
    organisation = await store.create_organisation("org")
    return [
        (await store.create_agent(organisation.id, AgentKind.DEVICE, f"d{i}")).id
        for i in range(count)
    ]


async def collect(subscription: Subscription, count: int, kind: str | None = None) -> list[Event]:
    """Events from ``subscription`` until ``count`` of ``kind`` have arrived (or time runs out)."""
    got: list[Event] = []
    matching = 0
    loop_deadline = WAIT
    while matching < count and loop_deadline > 0:
        batch = await subscription.next_batch(timeout=1.0)
        loop_deadline -= 1.0 if not batch else 0.0
        got.extend(batch)
        matching = sum(1 for e in got if kind is None or e.value["t"] == kind)
    return got


def numbers(events: list[Event], agent_id: int) -> list[int]:
    return [
        e.value["d"]["data"]["n"]
        for e in events
        if e.value["t"] == "MessageCreate" and e.key == str(agent_id)
    ]


async def test_publishes_reach_subscribers_in_per_agent_order(store: Store, bus: Bus) -> None:
    first, second = await devices(store)
    subscription = await bus.subscribe([CHANNEL_EVENTS])
    async with subscription:
        for n in range(20):
            await store.publish(
                [
                    PublishItem(first, "c", {"n": n}, first),
                    PublishItem(second, "c", {"n": n}, second),
                ]
            )
        events = await collect(subscription, 40, "MessageCreate")
    assert numbers(events, first) == list(range(20))
    assert numbers(events, second) == list(range(20))
    updates = [e for e in events if e.value["t"] == "AggregateUpdate" and e.key == str(first)]
    assert updates
    assert updates[-1].value["d"]["aggregate"]["data"] == {"n": 19}


async def test_a_group_resumes_after_its_commit(store: Store, bus: Bus) -> None:
    [agent] = await devices(store, 1)
    group = "g-" + secrets.token_hex(4)
    async with await bus.subscribe([CHANNEL_EVENTS], group) as subscription:
        await store.publish([PublishItem(agent, "c", {"n": n}, agent) for n in range(5)])
        handled = await collect(subscription, 5, "MessageCreate")
        assert numbers(handled, agent) == list(range(5))
        await subscription.commit()
    await store.publish([PublishItem(agent, "c", {"n": n}, agent) for n in range(5, 10)])
    async with await bus.subscribe([CHANNEL_EVENTS], group) as resumed:
        events = await collect(resumed, 5, "MessageCreate")
    assert numbers(events, agent) == list(range(5, 10))


async def test_a_mark_commits_what_was_returned_before_it_and_never_goes_back(
    store: Store, bus: Bus
) -> None:
    """A consumer that handles events in the background commits a mark taken earlier:
    the group resumes right after the mark, not after what was read since, and an
    older mark committed late does not move the group back."""
    [agent] = await devices(store, 1)
    group = "g-" + secrets.token_hex(4)
    async with await bus.subscribe([CHANNEL_EVENTS], group) as subscription:
        await store.publish([PublishItem(agent, "c", {"n": n}, agent) for n in range(3)])
        assert numbers(await collect(subscription, 3, "MessageCreate"), agent) == [0, 1, 2]
        early = subscription.mark()
        await store.publish([PublishItem(agent, "c", {"n": n}, agent) for n in range(3, 6)])
        assert numbers(await collect(subscription, 3, "MessageCreate"), agent) == [3, 4, 5]
        await subscription.commit(early)
    async with await bus.subscribe([CHANNEL_EVENTS], group) as resumed:
        assert numbers(await collect(resumed, 3, "MessageCreate"), agent) == [3, 4, 5]
        later = resumed.mark()
        await resumed.commit(later)
        await resumed.commit(early)  # late and older: changes nothing
    await store.publish([PublishItem(agent, "c", {"n": 6}, agent)])
    async with await bus.subscribe([CHANNEL_EVENTS], group) as last:
        assert numbers(await collect(last, 1, "MessageCreate"), agent) == [6]


async def test_a_committer_commits_only_what_is_written_and_raises_a_failed_write(
    store: Store, bus: Bus
) -> None:
    [agent] = await devices(store, 1)
    group = "g-" + secrets.token_hex(4)
    loop = asyncio.get_running_loop()
    first_write, failed_write = loop.create_future(), loop.create_future()
    async with await bus.subscribe([CHANNEL_EVENTS], group) as subscription:
        committer = Committer(subscription, interval=0)
        await store.publish([PublishItem(agent, "c", {"n": n}, agent) for n in range(2)])
        assert numbers(await collect(subscription, 2, "MessageCreate"), agent) == [0, 1]
        committer.taken([first_write])
        await store.publish([PublishItem(agent, "c", {"n": n}, agent) for n in range(2, 4)])
        assert numbers(await collect(subscription, 2, "MessageCreate"), agent) == [2, 3]
        committer.taken([])
        committer.poll()  # nothing is written yet: nothing to commit
        await committer.close()
    async with await bus.subscribe([CHANNEL_EVENTS], group) as again:
        assert numbers(await collect(again, 4, "MessageCreate"), agent) == [0, 1, 2, 3]
        committer = Committer(again, interval=0)
        committer.taken([first_write])
        first_write.set_result(None)
        committer.poll()  # commits up to here: both marks are written
        await committer.close()
    await store.publish([PublishItem(agent, "c", {"n": 4}, agent)])
    async with await bus.subscribe([CHANNEL_EVENTS], group) as resumed:
        assert numbers(await collect(resumed, 1, "MessageCreate"), agent) == [4]
        committer = Committer(resumed, interval=0)
        committer.taken([failed_write])
        failed_write.set_exception(StoreError("disk full"))
        with pytest.raises(StoreError, match="disk full"):
            committer.poll()


async def test_uncommitted_events_are_delivered_again(store: Store, bus: Bus) -> None:
    [agent] = await devices(store, 1)
    group = "g-" + secrets.token_hex(4)
    async with await bus.subscribe([CHANNEL_EVENTS], group) as subscription:
        await store.publish([PublishItem(agent, "c", {"n": n}, agent) for n in range(3)])
        assert numbers(await collect(subscription, 3, "MessageCreate"), agent) == [0, 1, 2]
        # no commit: a crash here must not lose these events
    async with await bus.subscribe([CHANNEL_EVENTS], group) as again:
        assert numbers(await collect(again, 3, "MessageCreate"), agent) == [0, 1, 2]


async def test_publish_without_a_data_write(store: Store, bus: Bus) -> None:
    topic = "custom_" + secrets.token_hex(4)
    async with await bus.subscribe([topic]) as subscription:
        await bus.publish([Event(topic, "k1", {"t": "Ping", "n": 1})])
        [event] = await collect(subscription, 1)
    assert event == Event(topic, "k1", {"t": "Ping", "n": 1})


async def test_subscribers_only_see_their_topics(store: Store, bus: Bus) -> None:
    [agent] = await devices(store, 1)
    topic = "other_" + secrets.token_hex(4)
    async with await bus.subscribe([topic]) as subscription:
        await store.publish([PublishItem(agent, "c", {"n": 1}, agent)])
        await bus.publish([Event(topic, "k", {"t": "Mine"})])
        events = await collect(subscription, 1)
    assert [e.value["t"] for e in events] == ["Mine"]


async def test_a_key_filter_leaves_events_out_and_can_give_them_back(
    store: Store, bus: Bus
) -> None:
    """``keep`` leaves other keys' events out (``skipped`` counts them); ``passed_over``
    gives back, in order, those a changed filter accepts; a commit covers them all."""
    first, second = await devices(store, 2)
    group = "filtered_" + secrets.token_hex(4)
    wanted = str(first)
    kept: list[Event] = []
    given_back: list[Event] = []
    skipped = 0
    subscription = await bus.subscribe([CHANNEL_EVENTS], group)
    try:
        items = [PublishItem(a, "c", {"n": n}, a) for n in range(3) for a in (first, second)]
        await store.publish(items)
        async with asyncio.timeout(WAIT):
            while len(numbers(kept, first)) < 3 or len(numbers(given_back, second)) < 3:
                kept += await subscription.next_batch(1.0, keep=lambda _, key: key == wanted)
                skipped += subscription.skipped
                given_back += subscription.passed_over(lambda _, key: key != wanted)
        await subscription.commit()
    finally:
        await subscription.close()
    assert numbers(kept, first) == [0, 1, 2]
    assert {e.key for e in kept} == {wanted}
    assert numbers(given_back, second) == [0, 1, 2]
    assert {e.key for e in given_back} == {str(second)}
    assert skipped >= 1
    async with await bus.subscribe([CHANNEL_EVENTS], group) as again:
        await store.publish([PublishItem(second, "c", {"n": 9}, second)])
        events = await collect(again, 1, "MessageCreate")
    assert numbers(events, first) == []
    assert numbers(events, second) == [9]
