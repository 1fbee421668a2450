"""Delivery on both buses (in-process and Kafka).

- ``on_aggregate_update``: an aggregate change says what made it (``source``) and who
  (``author_id``), so the dispatcher runs the handler for a PATCH or PUT and never for a
  publish's change, and an app's own aggregate writes never invoke it again — whatever
  order or batches the bus hands the events over in.
- Redelivery: events read again reach the app with the same event ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from fleetcloud.apps.dispatcher import GROUP, Dispatcher, Publishes, Routing
from fleetcloud.apps.model import Installation
from fleetcloud.apps.repo import Route
from fleetcloud.core.types import CHANNEL_EVENTS, Event
from fleetcloud.platform import Platform
from fleetcloud.settings import Settings
from fleetcloud.store import outbox
from tests.test_apps_kit import PROBE_SCHEMA, Live, apps_settings, live, probe_files

__all__ = ["apps_settings", "live"]  # fixtures used below

pytestmark = pytest.mark.slow

WATCHER = """
from fleetcloud.sdk.processor import Application, run_app


class Watcher(Application):
    async def on_aggregate_update(self, event):
        seen = await self.get_tag("updates", [])
        author = None if event.author_id is None else str(event.author_id)
        seen.append({"diff": event.diff, "author_id": author, "event_id": event.event_id})
        await self.set_tag("updates", seen)

    async def on_message_create(self, event):
        await self.set_tag("messages", await self.get_tag("messages", 0) + 1)

    async def on_manual_invoke(self, event):
        # its own write to a channel it is subscribed to: must not invoke it again
        await self.api.update_aggregate(self.agent_id, "settings", event.payload)


def handler(event, context):
    run_app(Watcher(), event, context)
"""


@pytest.fixture
async def platform(database_url: str, bus_url: str) -> AsyncIterator[Platform]:
    """The platform on the bus under test (memory or Kafka)."""
    settings = Settings(database_url=database_url, bus_url=bus_url)
    async with Platform.from_settings(settings) as running:
        yield running


async def run_until(live: Live, check: Callable[[], Awaitable[bool]]) -> None:
    """Run the dispatcher until ``check`` holds: on Kafka, events reach the consumer a
    little after they were written (the relay produces them from the outbox)."""
    async with asyncio.timeout(90):
        while True:
            await live.run()
            if await check():
                await live.run()
                return
            await asyncio.sleep(0.1)


async def install(live: Live, app_id: str, key: str) -> dict[str, Any]:
    config = {"dv_proc_subscriptions": ["settings"]}
    return await live.install(app_id, live.tenant.device_id, config, app_key=key)


async def test_patches_invoke_publishes_do_not_and_an_app_never_invokes_itself(
    live: Live,
) -> None:
    device = live.tenant.device_id
    app_id = await live.deploy("watcher", {"src/watcher/__init__.py": WATCHER})
    first = await install(live, app_id, "first")
    await install(live, app_id, "second")
    await live.run()  # on_deployment (the app has none: SKIPPED)

    await live.publish(device, "settings", {"mode": "auto"})  # a message, not a patch
    patched = await live.http.patch(
        f"/api/agents/{device}/channels/settings/aggregate", json={"threshold": 30}
    )
    assert patched.status_code == 200, patched.text
    put = await live.http.put(
        f"/api/agents/{device}/channels/settings/aggregate", json={"threshold": 40}
    )
    assert put.status_code == 200, put.text
    invoked = await live.http.post(
        f"/api/apps/installations/{first['id']}/invoke", json={"payload": {"limit": 7}}
    )
    assert invoked.status_code == 202, invoked.text

    async def second_saw_all() -> bool:
        tags = await live.tags(device, "second")
        return len(tags.get("updates", [])) == 3 and tags.get("messages") == 1

    await run_until(live, second_saw_all)  # events routed for both installations at once
    admin = str(live.tenant.organisation.agent_id)
    by_user = [{"threshold": 30}, {"mode": None, "threshold": 40}]
    first_tags = await live.tags(device, "first")
    second_tags = await live.tags(device, "second")
    assert first_tags["messages"] == second_tags["messages"] == 1
    assert [(u["diff"], u["author_id"]) for u in first_tags["updates"]] == [
        (diff, admin) for diff in by_user
    ]  # not its own {"limit": 7}
    assert [(u["diff"], u["author_id"]) for u in second_tags["updates"]] == [
        *((diff, admin) for diff in by_user),
        ({"limit": 7}, first["app_agent_id"]),  # the other installation's write
    ]
    handlers = [i["handler"] for i in await live.invocations(first["id"])]
    assert handlers.count("on_aggregate_update") == 2
    assert await live.aggregate(device, "settings") == {"threshold": 40, "limit": 7}


# ---------------------------------------------------------------- routing, without a bus


def installation(installation_id: int, agent_id: int, app_agent_id: int) -> Installation:
    config = {"dv_proc_subscriptions": ["settings"]}
    return Installation(
        installation_id, 1, 2, agent_id, app_agent_id, "k", config, None, None, 0, 0
    )


def update(agent_id: int, **extra: Any) -> Event:
    body = {
        "agent_id": str(agent_id),
        "channel": {"agent_id": str(agent_id), "name": "settings"},
        "aggregate": {"data": {"a": 1}},
        "diff": {"a": 1},
        **extra,
    }
    return Event(CHANNEL_EVENTS, str(agent_id), {"t": "AggregateUpdate", "id": "9", "d": body})


@pytest.mark.parametrize(
    ("extra", "invoked"),
    [
        ({"source": "update", "author_id": "55"}, True),
        ({"source": "update", "author_id": None}, True),  # the platform's own change
        ({"source": "update", "author_id": "77"}, False),  # the installation's app agent
        ({"source": "publish", "author_id": "55"}, False),  # a publish, message unseen
        ({}, True),  # an event from before source existed, with no message before it
    ],
)
def test_an_aggregate_change_is_routed_by_what_it_says(
    extra: dict[str, Any], invoked: bool
) -> None:
    """A dispatcher that starts reading between a publish's message and its aggregate
    change (a restart, a rebalance) still knows the change is the publish's."""
    route = Route(installation(5, 10, 77), None, None)  # type: ignore[arg-type]
    routing = Routing([route])
    found = routing.deliveries([update(10, **extra)], Publishes())
    assert [d.op for d in found] == (["on_aggregate_update"] if invoked else [])


# ---------------------------------------------------------------- redelivery


async def rewind(live: Live) -> Callable[[], Awaitable[Dispatcher]]:
    """Note the dispatcher group's committed bus position; the function returned puts
    the group back there — as when a dispatcher stops after storing deliveries and before
    committing — and gives the dispatcher that reads on from it."""
    if live.platform.bus.name == "kafka":
        subscription = live.dispatcher._opened().subscription
        consumer = subscription.consumer  # type: ignore[attr-defined]
        saved = {tp: await consumer.committed(tp) for tp in consumer.assignment()}
        saved = {tp: offset for tp, offset in saved.items() if offset is not None}

        async def back_on_kafka() -> Dispatcher:
            await consumer.commit(saved)
            for tp, offset in saved.items():
                consumer.seek(tp, offset)  # the group's next reader starts there
            return live.dispatcher

        return back_on_kafka
    position = await live.platform.store.read(outbox.get_offset(GROUP))
    assert position is not None

    async def back_in_process() -> Dispatcher:
        await live.platform.store.write(outbox.set_offset(GROUP, position))
        return Dispatcher(live.platform, api_url=live.url, settings=live.settings)

    return back_in_process


PROBE_CONFIG = {"dv_proc_subscriptions": ["sensor_data"]}


async def test_a_redelivered_event_comes_with_the_same_id(live: Live) -> None:
    """At least once, on either bus: events read again after the bus position was lost
    reach the app with the ids they had, and an app that remembers ids acts once."""
    device = live.tenant.device_id
    app_id = await live.deploy("probe", probe_files(), schema=PROBE_SCHEMA)
    installation = await live.install(app_id, device, PROBE_CONFIG)
    await live.run()
    back = await rewind(live)
    message_id = await live.publish(device, "sensor_data", {"n": 1})

    async def seen_once() -> bool:
        return len((await live.tags(device, "probe")).get("seen", [])) == 2  # + on_deployment

    await run_until(live, seen_once)
    again = await back()

    async def seen_twice() -> bool:
        return (await live.tags(device, "probe")).get("duplicates") == 1

    if again is live.dispatcher:
        await run_until(live, seen_twice)
    else:
        async with again.opened():
            await again.run_until_idle(timeout=90)
    tags = await live.tags(device, "probe")
    assert tags["duplicates"] == 1
    assert [e["event_id"] for e in tags["seen"] if e["handler"] == "on_message_create"] == [
        message_id
    ]
    attempts = [
        i for i in await live.invocations(installation["id"]) if i["event_id"] == message_id
    ]
    assert [i["status"] for i in attempts] == ["OK", "OK"]


async def test_events_of_an_agent_installed_on_meanwhile_are_not_left_out(live: Live) -> None:
    """The dispatcher's subscription leaves the channel events of agents without an
    installation undecoded, by the routes the dispatcher had when it fetched. An agent
    installed on since then is found when the routes are reloaded, and its events that
    were left out are taken back: none of them is lost."""
    device, other = live.tenant.device_id, live.tenant.other_device_id
    app_id = await live.deploy("probe", probe_files(), schema=PROBE_SCHEMA)
    await live.run()
    await live.install(app_id, device, PROBE_CONFIG)  # the dispatcher has not reloaded
    message_id = await live.publish(device, "sensor_data", {"n": 1})
    await live.publish(other, "sensor_data", {"n": 2}, token=live.tenant.other_device_token)
    consumed = await live.dispatcher._read(5.0)  # a fetch by the old routes
    if live.platform.bus.name == "memory":  # all of it in that one fetch
        assert consumed >= 3
        assert live.dispatcher.counters.routed == 1

    async def seen() -> bool:
        tags = await live.tags(device, "probe")
        return any(e["handler"] == "on_message_create" for e in tags.get("seen", []))

    await run_until(live, seen)
    tags = await live.tags(device, "probe")
    assert [e["event_id"] for e in tags["seen"] if e["handler"] == "on_message_create"] == [
        message_id
    ]
    assert live.dispatcher.counters.skipped >= 1  # the other device's events
