"""Triggers and dispatch, on SQLite and PostgreSQL: the real API on a loopback socket,
the dispatcher with real worker processes, driven deterministically with
``run_until_idle``."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
from typing import Any

import pytest

from fleetcloud.apps.dispatcher import GROUP, IDLE_PAUSE, Dispatcher
from fleetcloud.bus import memory as memory_bus
from fleetcloud.store import outbox
from tests.test_apps_kit import (
    PROBE_SCHEMA,
    Live,
    apps_settings,
    live,
    make_settings,
    probe_files,
)

__all__ = ["apps_settings", "live"]  # fixtures used below

pytestmark = pytest.mark.slow


async def install_probe(live: Live, config: dict[str, Any] | None = None) -> dict[str, Any]:
    app_id = await live.deploy("probe", probe_files(), schema=PROBE_SCHEMA)
    return await live.install(
        app_id, live.tenant.device_id, config or {"dv_proc_subscriptions": ["sensor_data"]}
    )


def handled(tags: dict[str, Any], handler: str) -> list[dict[str, Any]]:
    return [entry for entry in tags.get("seen", []) if entry["handler"] == handler]


async def test_install_runs_on_deployment_and_messages_run_on_message_create(live: Live) -> None:
    installation = await install_probe(live)
    device = live.tenant.device_id
    message_id = await live.publish(device, "sensor_data", {"temperature": 21.5})
    await live.publish(device, "not_subscribed", {"temperature": 3})
    await live.run()

    tags = await live.tags(device, "probe")
    assert handled(tags, "on_deployment") == [
        {
            "handler": "on_deployment",
            "event_id": f"deployment-{installation['id']}",
            "detail": installation["id"],
        }
    ]
    assert handled(tags, "on_message_create") == [
        {"handler": "on_message_create", "event_id": message_id, "detail": "sensor_data"}
    ]
    log = await live.invocations(installation["id"])
    assert [(i["handler"], i["status"]) for i in log] == [
        ("on_deployment", "OK"),
        ("on_message_create", "OK"),
    ]
    assert log[1]["event_id"] == message_id
    assert log[1]["logs"] == "message on sensor_data\n"
    summary = await live.aggregate(device, f"dv-proc-inv-{installation['app_id']}")
    assert summary["status"] == "OK"
    assert summary["event_id"] == message_id
    assert summary["tags_flushed"] is True


async def test_an_aggregate_change_runs_on_aggregate_update_and_a_publish_does_not(
    live: Live,
) -> None:
    installation = await install_probe(live)
    device = live.tenant.device_id
    await live.publish(device, "sensor_data", {"mode": "auto"})  # a message, not a patch
    response = await live.http.patch(
        f"/api/agents/{device}/channels/sensor_data/aggregate", json={"threshold": 30}
    )
    assert response.status_code == 200
    await live.run()

    tags = await live.tags(device, "probe")
    assert len(handled(tags, "on_message_create")) == 1
    assert [e["detail"] for e in handled(tags, "on_aggregate_update")] == [{"threshold": 30}]
    handlers = [i["handler"] for i in await live.invocations(installation["id"])]
    assert handlers.count("on_aggregate_update") == 1


async def test_a_schedule_runs_on_schedule(live: Live) -> None:
    config = {"dv_proc_subscriptions": [], "dv_proc_schedules": "rate(5 minutes)"}
    installation = await install_probe(live, config)
    await live.run()  # on_deployment
    far = 4_102_444_800_000  # 2100-01-01
    assert await live.scheduler_tick(far) == 1
    assert await live.scheduler_tick(far) == 0  # moved on to the next five minutes
    await live.run()
    seen = handled(await live.tags(live.tenant.device_id, "probe"), "on_schedule")
    assert seen == [
        {
            "handler": "on_schedule",
            "event_id": seen[0]["event_id"],
            "detail": installation["id"],
        }
    ]
    assert seen[0]["event_id"].startswith(f"schedule-{installation['id']}-")
    assert await live.scheduler_tick(far + 5 * 60_000) == 1


async def test_a_manual_invoke_answers_with_its_invocation(live: Live) -> None:
    installation = await install_probe(live)
    request = live.http.post(
        f"/api/apps/installations/{installation['id']}/invoke?wait=60",
        json={"payload": {"note": "from a button"}},
    )
    response, _ = await asyncio.gather(request, _run_soon(live))
    assert response.status_code == 200, response.text
    invocation = response.json()["invocation"]
    assert invocation["handler"] == "on_manual_invoke"
    assert invocation["status"] == "OK"
    seen = handled(await live.tags(live.tenant.device_id, "probe"), "on_manual_invoke")
    assert [entry["detail"] for entry in seen] == [{"note": "from a button"}]


async def _run_soon(live: Live) -> None:
    await asyncio.sleep(0.2)
    await live.run()


async def test_an_ingestion_post_runs_the_integration(live: Live) -> None:
    app_id = await live.deploy("hook", probe_files("hook"), kind="INT")
    config = {"dv_proc_ingestion": {"signing_key": "s3cret", "throttle": 5}}
    installation = await live.install(app_id, None, config)
    assert installation["agent_id"] == str(live.tenant.organisation.agent_id)
    body = json.dumps({"device_id": "pump-7", "level": 3}).encode()
    signature = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    path = installation["ingestion_path"]
    headers = {
        "x-hmac-sha256": signature,
        "Authorization": f"Bearer {installation['ingestion_token']}",
        "Content-Type": "application/json",
    }
    response = await live.post_public(path, body, headers)
    assert response.status_code == 202, response.text
    await live.run()
    tags = await live.tags(live.tenant.organisation.agent_id, "hook")
    seen = handled(tags, "on_ingestion_endpoint")
    assert seen == [
        {
            "handler": "on_ingestion_endpoint",
            "event_id": response.json()["event_id"],
            "detail": {"device_id": "pump-7", "level": 3},
        }
    ]


async def test_each_ingestion_check_refuses_in_order(live: Live) -> None:
    app_id = await live.deploy("hook", probe_files("hook"), kind="INT")
    config = {"dv_proc_ingestion": {"signing_key": "k", "throttle": 2}}
    installation = await live.install(app_id, None, config)
    path, token = installation["ingestion_path"], installation["ingestion_token"]
    body = b'{"a": 1}'
    good = hmac.new(b"k", body, hashlib.sha256).hexdigest()
    bad_signature = await live.post_public(
        path, body, {"x-hmac-sha256": "00" * 32, "x-mini-token": token}
    )
    assert bad_signature.status_code == 401
    no_token = await live.post_public(path, body, {"x-hmac-sha256": good})
    assert no_token.status_code == 401
    assert "missing token" in no_token.json()["message"]
    signed = {"x-hmac-sha256": good, "x-mini-token": token}
    accepted = await live.post_public(path, body, signed)
    assert accepted.status_code == 202
    # At 2 requests/s, ten at once outrun the bucket however slow the machine is.
    burst = await asyncio.gather(*(live.post_public(path, body, signed) for _ in range(10)))
    throttled = [r for r in burst if r.status_code == 429]
    assert throttled, [r.status_code for r in burst]
    assert {r.status_code for r in burst} <= {202, 429}
    assert int(throttled[0].headers["retry-after"]) >= 1
    await live.http.patch(
        f"/api/apps/installations/{installation['id']}",
        json={"config": {"dv_proc_ingestion": {"cidr_ranges": ["203.0.113.0/24"]}}},
    )
    outside = await live.post_public(path, body)
    assert outside.status_code == 403
    assert (await live.post_public("/api/ingestion/12345", body)).status_code == 404


async def test_a_redelivered_event_reaches_the_app_with_the_same_id(live: Live) -> None:
    """At least once: after a crash before the bus offset was saved, the events come
    again with the same ids, and an app that remembers ids handles each once."""
    installation = await install_probe(live)
    await live.run()
    position = await live.platform.store.read(outbox.get_offset(GROUP))
    assert position is not None
    message_id = await live.publish(live.tenant.device_id, "sensor_data", {"n": 1})
    await live.run()
    await live.platform.store.write(outbox.set_offset(GROUP, position))  # forget the commit
    again = Dispatcher(live.platform, api_url=live.url, settings=live.settings)
    async with again.opened():
        await again.run_until_idle(timeout=90)

    tags = await live.tags(live.tenant.device_id, "probe")
    assert [e["event_id"] for e in handled(tags, "on_message_create")] == [message_id]
    assert tags["duplicates"] == 1
    attempts = [
        i for i in await live.invocations(installation["id"]) if i["event_id"] == message_id
    ]
    assert [i["status"] for i in attempts] == ["OK", "OK"]


async def test_a_failing_event_is_retried_then_kept_as_a_dead_letter(live: Live) -> None:
    installation = await install_probe(live)
    message_id = await live.publish(live.tenant.device_id, "sensor_data", {"do": "raise"})
    flaky_id = await live.publish(live.tenant.device_id, "sensor_data", {"do": "flaky"})
    await live.run()

    log = [i for i in await live.invocations(installation["id"]) if i["event_id"] == message_id]
    assert [(i["attempt"], i["status"]) for i in log] == [(1, "ERROR"), (2, "ERROR"), (3, "ERROR")]
    assert log[0]["error"] == "RuntimeError: asked to fail"
    assert "RuntimeError: asked to fail" in log[0]["logs"]
    gaps = [b["started_ms"] - a["started_ms"] for a, b in itertools.pairwise(log)]
    assert gaps[0] >= 50  # backoff 0.05 s …
    assert gaps[1] >= 100  # … doubling
    flaky = [i for i in await live.invocations(installation["id"]) if i["event_id"] == flaky_id]
    assert [i["status"] for i in flaky] == ["ERROR", "OK"]

    base = f"/api/apps/installations/{installation['id']}/dead-letters"
    letters = (await live.http.get(base)).json()
    assert [(d["event_id"], d["attempts"], d["error"]) for d in letters] == [
        (message_id, 3, "RuntimeError: asked to fail")
    ]
    retried = await live.http.post(f"{base}/{letters[0]['id']}/retry")
    assert retried.status_code == 202
    assert (await live.http.get(base)).json() == []
    await live.run()
    log = [i for i in await live.invocations(installation["id"]) if i["event_id"] == message_id]
    assert len(log) == 6
    assert len((await live.http.get(base)).json()) == 1


GUARD = """
import httpx


def handler(event, context):
    upgrade = event["d"]["upgrade"]
    url, agent, key = upgrade["api_url"], upgrade["agent_id"], upgrade["app_key"]
    data = event["d"]["message"]["data"]
    channel = event["d"]["channel_name"]
    http = httpx.Client(base_url=url, headers={"Authorization": "Bearer " + upgrade["token"]})

    def post(agent_id, name, body):
        path = f"/api/agents/{agent_id}/channels/{name}/messages"
        return http.post(path, json={"data": body}).status_code

    def patch(agent_id, name, body, replace=None):
        params = {"replace": replace} if replace else {}
        path = f"/api/agents/{agent_id}/channels/{name}/aggregate"
        return http.patch(path, json=body, params=params).status_code

    other = data["other"]
    results = {
        "invoking_message": post(agent, channel, {"echo": 1}),
        "invoking_aggregate": patch(agent, channel, {"echo": 1}),
        "invoking_batch": http.post("/api/agents/messages", json={"items": [
            {"agent_id": agent, "channel_name": channel, "data": {"echo": 1}}]}).status_code,
        "own_tags": post(agent, "tag_values", {key: {"checked": True}}),
        "other_tags": post(agent, "tag_values", {"someone_else": {"x": 1}}),
        "own_ui": patch(agent, "ui_state", {"state": {"children": {key: {"name": key}}}},
                        f"state.children.{key}"),
        "another_channel": post(agent, "scratch", {"ok": True}),
        "other_device_write": post(other, "scratch", {"x": 1}),
        "other_device_private_read": http.get(f"/api/agents/{other}/channels/secret").status_code,
    }
    post(agent, "guard_results", {channel: results})
"""


async def test_the_server_refuses_writes_to_the_invoking_channel_and_other_devices(
    live: Live,
) -> None:
    device, other = live.tenant.device_id, live.tenant.other_device_id
    secret = await live.http.put(f"/api/agents/{other}/channels/secret", json={"is_private": True})
    assert secret.status_code in (200, 201)
    app_id = await live.deploy("guard", {"src/guard/__init__.py": GUARD})
    await live.install(app_id, device, {"dv_proc_subscriptions": ["commands", "tag_values"]})
    await live.publish(device, "commands", {"other": str(other)})
    await live.publish(device, "tag_values", {"device_app": {"x": 1}, "other": str(other)})
    await live.run()

    results = await live.aggregate(device, "guard_results")
    forbidden, allowed = 403, 200
    assert results["commands"] == {
        "invoking_message": forbidden,
        "invoking_aggregate": forbidden,
        "invoking_batch": forbidden,
        "own_tags": allowed,
        "other_tags": allowed,  # tag_values did not invoke it this time
        "own_ui": allowed,
        "another_channel": allowed,
        "other_device_write": forbidden,
        "other_device_private_read": forbidden,
    }
    by_tags = results["tag_values"]
    assert by_tags["own_tags"] == allowed  # its own key in the invoking tag_values
    assert by_tags["other_tags"] == forbidden
    assert by_tags["invoking_message"] == forbidden
    assert (await live.aggregate(device, "commands")) == {"other": str(other)}


SLOW = """
import time

from fleetcloud.sdk.processor import Application, run_app


class Slow(Application):
    async def on_message_create(self, event):
        time.sleep(0.005)  # slower than the events come
        n = event.message.data["n"]
        if n != await self.get_tag("last", -1) + 1:
            await self.set_tag("out_of_order", await self.get_tag("out_of_order", 0) + 1)
        await self.set_tag("last", n)
        await self.set_tag("count", await self.get_tag("count", 0) + 1)


def handler(event, context):
    run_app(Slow(), event, context)
"""


async def test_backpressure_stops_reading_and_loses_nothing(live: Live, tmp_path: Any) -> None:
    """A burst far larger than the app can take: reading stops with ``max_pending`` in
    hand (plus the one batch being read: at most ``READ_CHUNK`` outbox rows when catching
    up), and every event runs once, in order."""
    device, events, max_pending = live.tenant.device_id, 400, 20
    app_id = await live.deploy("slow", {"src/slow/__init__.py": SLOW})
    installation = await live.install(app_id, device, {"dv_proc_subscriptions": ["burst"]})
    await live.run()
    for n in range(events):  # one transaction each: the bus hands them over in chunks
        await live.publish(device, "burst", {"n": n})
    settings = make_settings(tmp_path, max_pending=max_pending)
    busy = Dispatcher(live.platform, api_url=live.url, settings=settings)
    async with busy.running():  # it finds the burst waiting in the bus
        for _ in range(1800):
            if (await live.tags(device, "slow")).get("count") == events:
                break
            await asyncio.sleep(0.1)
    tags = await live.tags(device, "slow")
    assert (tags["count"], tags["last"], tags.get("out_of_order")) == (events, events - 1, None)
    assert busy.counters.waits > 0  # it stopped reading, with max_pending in hand
    assert busy.counters.peak <= max_pending + memory_bus.READ_CHUNK < events  # bounded
    log = await live.invocations(installation["id"])
    runs = [i["event_id"] for i in log if i["handler"] == "on_message_create"]
    assert len(runs) == len(set(runs)) == events  # each event once: none dropped, none twice


async def test_with_no_app_installed_it_reads_in_gulps_and_routes_a_new_one(
    live: Live, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing on the bus concerns an app while none is installed anywhere: the
    dispatcher reads about twice a second instead of at every event. An app installed
    then gets the events that follow, and at most those of the last gulp before it."""
    device = live.tenant.device_id
    idle = Dispatcher(live.platform, api_url=live.url, settings=make_settings(tmp_path))
    async with idle.running():
        assert not idle.routing.by_id
        subscription = idle._opened().subscription
        reads = 0
        read = subscription.next_batch

        async def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal reads
            reads += 1
            return await read(*args, **kwargs)

        monkeypatch.setattr(subscription, "next_batch", counted)
        before = []
        started = asyncio.get_running_loop().time()
        for n in range(40):  # an event every 25 ms for a second (longer on a busy machine)
            before.append(await live.publish(device, "sensor_data", {"n": n}))
            await asyncio.sleep(0.025)
        took = asyncio.get_running_loop().time() - started
        assert reads <= took / IDLE_PAUSE + 3  # a read per event would be 40
        await install_probe(live)
        message_id = await live.publish(device, "sensor_data", {"temperature": 4})
        for _ in range(300):
            seen = [
                e["event_id"]
                for e in handled(await live.tags(device, "probe"), "on_message_create")
            ]
            if message_id in seen:
                break
            await asyncio.sleep(0.1)
    assert message_id in seen
    assert len(seen) == len(set(seen))
    assert set(seen) <= {message_id, *before[10:]}  # read and skipped before the install
