"""Bad input: every refusal is a JSON error that says what is wrong, and harms nothing."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from fleetcloud.platform import Platform
from tests.conftest import Tenant
from tests.test_api import assert_error, channel_url, history, publish

MESSAGES = "{device}/channels/sensors/messages"
CHANNEL = "{device}/channels/sensors"


def url_for(tenant: Tenant, template: str) -> str:
    return "/api/agents/" + template.format(device=tenant.device_id)


async def still_serving(api: httpx.AsyncClient, tenant: Tenant) -> None:
    """After a refusal, an ordinary publish and read still work."""
    message = await publish(api, tenant, {"ok": True}, "after")
    found = await history(api, tenant, "after")
    assert [m["id"] for m in found] == [message["id"]]


async def refused(
    api: httpx.AsyncClient,
    tenant: Tenant,
    response: httpx.Response,
    status: int,
    *words: str,
) -> None:
    assert_error(response, status, *words)
    await still_serving(api, tenant)


@pytest.mark.parametrize(
    ("method", "template", "content", "status", "words"),
    [
        ("POST", MESSAGES, b'{"data": ', 400, ["not valid JSON"]),
        ("POST", MESSAGES, b"", 400, ["empty"]),
        ("POST", MESSAGES, b"[1, 2]", 400, ["JSON object"]),
        ("POST", MESSAGES, b'{"value": 1}', 400, ['"data" is missing']),
        ("POST", MESSAGES, b'{"data": 1, "ts": "yesterday"}', 400, ["ts must be"]),
        ("POST", MESSAGES, b'{"data": 1, "ts": true}', 400, ["ts must be"]),
        ("POST", MESSAGES, b'{"data": 1, "ts": -5}', 400, ["ts must be"]),
        ("POST", MESSAGES, b'{"data": 1, "ts": 1000}', 400, ["ts must be"]),
        ("POST", MESSAGES, b'{"data": 1, "ts": 1e300}', 400, ["ts must be"]),
        ("POST", MESSAGES, b'{"data": 1, "message_id": "x1"}', 400, ["message_id"]),
        ("POST", MESSAGES, b'{"data": 1, "message_id": -3}', 400, ["message_id"]),
        ("POST", "abc/channels/sensors/messages", b'{"data": 1}', 400, ["agent"]),
        ("GET", MESSAGES + "/99999999999999999999999", None, 400, ["out of range"]),
        ("DELETE", MESSAGES + "/0", None, 400, ["out of range"]),
        ("GET", "abc/channels", None, 400, ["agent"]),
        ("GET", "0/channels", None, 400, ["agent"]),
        ("GET", "99999999999999999999999/channels", None, 400, ["agent"]),
        ("PUT", CHANNEL, b'{"is_private": "yes"}', 400, ["is_private"]),
        ("PUT", CHANNEL, b'{"aggregate_schema": []}', 400, ["schema"]),
        ("PUT", CHANNEL, b"[]", 400, ["JSON object"]),
        ("PATCH", CHANNEL + "/aggregate", b"{nope", 400, ["not valid JSON"]),
        ("PUT", CHANNEL + "/aggregate", b"", 400, ["empty"]),
        ("POST", "messages", b'{"items": {"a": 1}}', 400, ["items"]),
        ("POST", "messages", b'{"things": []}', 400, ["items"]),
        ("POST", "messages", b"[]", 400, ["JSON object"]),
        ("PATCH", "aggregates", b'{"items": "x"}', 400, ["items"]),
        ("POST", "", b'{"kind": "device"}', 400, ["name"]),
        ("POST", "", b'{"name": "x", "kind": "organisation"}', 400, ["kind"]),
        ("POST", "", b'{"name": "x", "kind": ["device"]}', 400, ["kind"]),
    ],
)
async def test_bad_bodies_and_ids_are_400(
    api: httpx.AsyncClient,
    tenant: Tenant,
    method: str,
    template: str,
    content: bytes | None,
    status: int,
    words: list[str],
) -> None:
    url = url_for(tenant, template).rstrip("/")
    response = await api.request(method, url, content=content, headers=tenant.headers())
    await refused(api, tenant, response, status, *words)


@pytest.mark.parametrize(
    ("suffix", "params", "words"),
    [
        ("messages", {"limit": "abc"}, ["limit"]),
        ("messages", {"limit": "0"}, ["limit"]),
        ("messages", {"limit": "-1"}, ["limit"]),
        ("messages", {"limit": "10000000000"}, ["limit"]),
        ("messages", {"limit": "²"}, ["limit"]),
        ("messages", {"before": "yesterday"}, ["before"]),
        ("messages", {"after_ms": "1.5"}, ["after_ms"]),
        ("messages/timeseries", {}, ["field_name"]),
        ("messages/timeseries", {"field_name": "n", "limit": "x"}, ["limit"]),
    ],
)
async def test_bad_query_parameters_are_400(
    api: httpx.AsyncClient, tenant: Tenant, suffix: str, params: dict[str, str], words: list[str]
) -> None:
    await publish(api, tenant, {"n": 1})
    url = channel_url(tenant.device_id, "sensors", suffix)
    response = await api.get(url, params=params, headers=tenant.headers())
    await refused(api, tenant, response, 400, *words)


async def test_bad_agent_kind_filter_is_400(api: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await api.get("/api/agents", params={"kind": "robot"}, headers=tenant.headers())
    await refused(api, tenant, response, 400, "kind")


@pytest.mark.parametrize("replace", ["a..b", ".", "a."])
async def test_bad_replace_path_is_400(
    api: httpx.AsyncClient, tenant: Tenant, replace: str
) -> None:
    url = channel_url(tenant.device_id, "sensors", "aggregate")
    response = await api.patch(
        url, params={"replace": replace}, json={"a": 1}, headers=tenant.headers()
    )
    await refused(api, tenant, response, 400, "replace path")


async def test_a_bad_replace_path_fails_only_its_batch_item(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    items = [
        {"agent_id": tenant.device_id, "channel_name": "s", "data": {"a": 1}, "replace": "a..b"},
        {"agent_id": tenant.device_id, "channel_name": "s", "data": {"b": 2}, "replace": 5},
        {"agent_id": tenant.device_id, "channel_name": "s", "data": {"c": 3}},
    ]
    response = await api.patch(
        "/api/agents/aggregates", json={"items": items}, headers=tenant.headers()
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [i["success"] for i in body["items"]] == [False, False, True]
    assert "replace" in body["items"][0]["error"]
    assert "replace" in body["items"][1]["error"]
    aggregate = await api.get(
        channel_url(tenant.device_id, "s", "aggregate"), headers=tenant.headers()
    )
    assert aggregate.json()["data"] == {"c": 3}


async def test_bad_batch_items_fail_alone(api: httpx.AsyncClient, tenant: Tenant) -> None:
    good = {"agent_id": tenant.device_id, "channel_name": "s", "data": {"ok": 1}}
    items: list[Any] = [
        "not an object",
        {**good, "agent_id": True},
        {**good, "channel_name": ""},
        {**good, "ts": "soon"},
        {**good, "message_id": [1]},
        good,
    ]
    response = await api.post(
        "/api/agents/messages", json={"items": items}, headers=tenant.headers()
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [i["success"] for i in body["items"]] == [False] * 5 + [True]
    assert all(i["status"] == 400 and i["error"] for i in body["items"][:5])
    assert body["items"][0]["agent_id"] is None
    assert body["items"][5]["agent_id"] == str(tenant.device_id)
    assert (body["count"], body["succeeded"], body["failed"]) == (6, 1, 5)
    assert [m["data"] for m in await history(api, tenant, "s")] == [{"ok": 1}]


# ---------------------------------------------------------------- missing things


@pytest.mark.parametrize(
    ("method", "template", "words"),
    [
        ("GET", "{agent}/channels", ["agent"]),
        ("POST", "{agent}/channels/sensors/messages", ["agent"]),
        ("GET", "{device}/channels/nope", ["nope"]),
        ("GET", "{device}/channels/nope/messages", ["nope"]),
        ("GET", "{device}/channels/nope/aggregate", ["nope"]),
        ("GET", "{device}/channels/sensors/messages/123456789", ["123456789"]),
        ("PATCH", "{device}/channels/sensors/messages/123456789", ["123456789"]),
        ("PUT", "{device}/channels/sensors/messages/123456789", ["123456789"]),
        ("DELETE", "{device}/channels/sensors/messages/123456789", ["123456789"]),
    ],
)
async def test_missing_things_are_404(
    api: httpx.AsyncClient, tenant: Tenant, method: str, template: str, words: list[str]
) -> None:
    await publish(api, tenant, {"n": 1})
    path = template.format(agent=tenant.device_id + 12345, device=tenant.device_id)
    content = b'{"data": {"x": 1}}' if method in ("POST", "PUT", "PATCH") else None
    response = await api.request(
        method, "/api/agents/" + path, content=content, headers=tenant.headers()
    )
    await refused(api, tenant, response, 404, *words)


async def test_unknown_routes_are_json_404(api: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await api.get("/api/nothing-here", headers=tenant.headers())
    await refused(api, tenant, response, 404)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "{device}/channels/sensors", "GET, POST, PUT"),
        ("PATCH", "{device}/channels/sensors", "GET, POST, PUT"),
        ("POST", "{device}/channels/sensors/aggregate", "GET, PATCH, PUT"),
        ("DELETE", "{device}/channels/sensors/messages", "GET, POST"),
        ("PUT", "{device}/channels/sensors/messages/timeseries", "GET"),
        ("POST", "{device}/channels/sensors/messages/1", "GET, PATCH, PUT, DELETE"),
    ],
)
async def test_unsupported_methods_on_channel_paths_are_405(
    api: httpx.AsyncClient, tenant: Tenant, method: str, path: str, allowed: str
) -> None:
    url = "/api/agents/" + path.format(device=tenant.device_id)
    response = await api.request(method, url, headers=tenant.headers())
    await refused(api, tenant, response, 405, method, allowed)


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "{device}/channels"), ("GET", "messages"), ("GET", "aggregates"), ("DELETE", "")],
)
async def test_unsupported_methods_on_other_paths_are_405(
    api: httpx.AsyncClient, tenant: Tenant, method: str, path: str
) -> None:
    url = "/api/agents/" + path.format(device=tenant.device_id)
    response = await api.request(method, url.rstrip("/"), headers=tenant.headers())
    await refused(api, tenant, response, 405)


# ---------------------------------------------------------------- size limits


def too_big(platform: Platform) -> bytes:
    limit = platform.settings.max_body_bytes
    return b'{"data": "' + b"x" * limit + b'"}'


async def test_body_over_the_limit_is_413(
    api: httpx.AsyncClient, tenant: Tenant, platform: Platform
) -> None:
    url = channel_url(tenant.device_id, "sensors", "messages")
    response = await api.post(url, content=too_big(platform), headers=tenant.headers())
    await refused(api, tenant, response, 413, "limit")


async def chunks(body: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize(
    ("method", "suffix"), [("POST", "messages"), ("PUT", ""), ("PATCH", "aggregate")]
)
async def test_streamed_body_over_the_limit_is_413(
    api: httpx.AsyncClient, tenant: Tenant, platform: Platform, method: str, suffix: str
) -> None:
    url = channel_url(tenant.device_id, "sensors", suffix)
    request = api.build_request(
        method, url, content=chunks(too_big(platform)), headers=tenant.headers()
    )
    assert "content-length" not in request.headers
    response = await api.send(request)
    await refused(api, tenant, response, 413, "limit")


async def test_an_oversized_stream_is_not_read_to_its_end(
    api: httpx.AsyncClient, tenant: Tenant, platform: Platform
) -> None:
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"is_private": "'
        for _ in range(1000):
            sent += 1
            yield b"x" * 64 * 1024

    url = channel_url(tenant.device_id, "sensors")
    response = await api.put(url, content=endless(), headers=tenant.headers())
    await refused(api, tenant, response, 413, "limit")
    assert sent * 64 * 1024 <= platform.settings.max_body_bytes + 64 * 1024


async def test_gzip_bomb_is_413(api: httpx.AsyncClient, tenant: Tenant, platform: Platform) -> None:
    bomb = gzip.compress(too_big(platform) * 4)
    assert len(bomb) < platform.settings.max_body_bytes // 100
    headers = {**tenant.headers(), "Content-Encoding": "gzip"}
    response = await api.post("/api/agents/messages", content=bomb, headers=headers)
    await refused(api, tenant, response, 413, "decompressed")


@pytest.mark.parametrize(
    ("encoding", "content", "words"),
    [
        ("gzip", b'{"data": 1}', ["gzip"]),
        ("gzip", gzip.compress(b'{"data": {"long": "' + b"y" * 1000 + b'"}}')[:-30], ["gzip"]),
        ("br", b'{"data": 1}', ["br"]),
    ],
    ids=["gzip-not-gzip", "gzip-cut-off", "br-unsupported"],  # gzip's header holds the time
)
async def test_undecodable_bodies_are_400(
    api: httpx.AsyncClient, tenant: Tenant, encoding: str, content: bytes, words: list[str]
) -> None:
    headers = {**tenant.headers(), "Content-Encoding": encoding}
    url = channel_url(tenant.device_id, "sensors", "messages")
    response = await api.post(url, content=content, headers=headers)
    await refused(api, tenant, response, 400, *words)


# ---------------------------------------------------------------- schemas


async def test_a_publish_that_breaks_the_schema_is_422(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    schema = {"type": "object", "properties": {"temp": {"type": "number"}}, "required": ["temp"]}
    url = channel_url(tenant.device_id, "sensors")
    put = await api.put(url, json={"message_schema": schema}, headers=tenant.headers())
    assert put.status_code == 201, put.text
    await publish(api, tenant, {"temp": 20})
    response = await api.post(
        url + "/messages", json={"data": {"temp": "hot"}}, headers=tenant.headers()
    )
    await refused(api, tenant, response, 422, "temp")
    assert [m["data"] for m in await history(api, tenant)] == [{"temp": 20}]
    aggregate = await api.get(url + "/aggregate", headers=tenant.headers())
    assert aggregate.json()["data"] == {"temp": 20}


async def test_non_ascii_digits_in_ids_are_a_clean_400(api, tenant) -> None:  # type: ignore[no-untyped-def]
    response = await api.get("/api/agents/%C2%B2/channels", headers=tenant.headers())
    assert response.status_code == 400
    batch = {"items": [{"agent_id": "²", "channel_name": "c", "data": {}}]}
    answer = await api.post("/api/agents/messages", json=batch, headers=tenant.headers())
    assert answer.status_code == 200
    assert answer.json()["items"][0]["status"] == 400


async def test_router_405_names_the_allowed_methods(api, tenant) -> None:  # type: ignore[no-untyped-def]
    response = await api.delete("/api/agents/messages", headers=tenant.headers())
    assert response.status_code == 405
    assert "POST" in response.json()["message"]
    assert "POST" in response.headers["allow"]
