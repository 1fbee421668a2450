"""The HTTP data API, as a client sees it: paths, status codes and JSON shapes."""

from __future__ import annotations

import gzip
from typing import Any

import httpx
import orjson
import pytest

from fleetcloud.core.ids import timestamp_ms
from tests.conftest import Tenant
from tests.test_openapi import resolved

# ---------------------------------------------------------------- helpers shared by the suite


def channel_url(agent_id: int, channel: str = "", suffix: str = "") -> str:
    """``/api/agents/{agent_id}/channels[/{channel}[/{suffix}]]``; ``channel`` goes in as
    given, so a caller may pass it already escaped (``a%2Fb``)."""
    url = f"/api/agents/{agent_id}/channels"
    if channel:
        url += f"/{channel}"
    if suffix:
        url += f"/{suffix}"
    return url


def assert_error(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    """A JSON error body ``{"error", "message", "status"}`` whose message names ``words``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "message", "status"}
    assert body["status"] == status
    assert isinstance(body["error"], str)
    assert body["error"]
    for word in words:
        assert word in body["message"], body
    return body


async def publish(
    api: httpx.AsyncClient,
    tenant: Tenant,
    data: Any,
    channel: str = "sensors",
    *,
    agent_id: int | None = None,
    token: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    response = await api.post(
        channel_url(agent_id or tenant.device_id, channel, "messages"),
        json={"data": data, **extra},
        headers=tenant.headers(token),
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def get_json(
    api: httpx.AsyncClient, tenant: Tenant, url: str, token: str | None = None, **params: Any
) -> Any:
    response = await api.get(url, params=params, headers=tenant.headers(token))
    assert response.status_code == 200, response.text
    return response.json()


async def aggregate_of(
    api: httpx.AsyncClient, tenant: Tenant, channel: str = "sensors", agent_id: int | None = None
) -> Any:
    url = channel_url(agent_id or tenant.device_id, channel, "aggregate")
    return (await get_json(api, tenant, url))["data"]


async def history(
    api: httpx.AsyncClient, tenant: Tenant, channel: str = "sensors", **params: Any
) -> list[dict[str, Any]]:
    url = channel_url(tenant.device_id, channel, "messages")
    found: list[dict[str, Any]] = await get_json(api, tenant, url, **params)
    return found


async def send(
    api: httpx.AsyncClient,
    tenant: Tenant,
    method: str,
    url: str,
    body: Any = None,
    token: str | None = None,
    **params: Any,
) -> httpx.Response:
    content = None if body is None else orjson.dumps(body)
    return await api.request(
        method, url, content=content, params=params, headers=tenant.headers(token)
    )


# ---------------------------------------------------------------- channels


async def test_post_creates_a_channel_then_finds_it(api: httpx.AsyncClient, tenant: Tenant) -> None:
    url = channel_url(tenant.device_id, "pump")
    created = await api.post(url, headers=tenant.headers())
    assert created.status_code == 201, created.text
    again = await api.post(url, headers=tenant.headers())
    assert again.status_code == 200
    body = created.json()
    assert body == {
        "id": body["id"],
        "name": "pump",
        "owner_id": str(tenant.device_id),
        "is_private": False,
        "aggregate_schema": None,
        "message_schema": None,
        "aggregate": {"data": {}, "attachments": [], "last_updated": None},
    }
    assert again.json()["id"] == body["id"]
    assert (await get_json(api, tenant, url))["id"] == body["id"]


async def test_list_channels_names_every_channel(api: httpx.AsyncClient, tenant: Tenant) -> None:
    await publish(api, tenant, {"t": 1}, "b")
    await publish(api, tenant, {"t": 2}, "a/x")
    listed = await get_json(api, tenant, channel_url(tenant.device_id))
    assert [c["name"] for c in listed] == ["a/x", "b"]
    assert listed[1]["aggregate"]["data"] == {"t": 1}
    bare = await get_json(api, tenant, channel_url(tenant.device_id), include_aggregate="false")
    assert all("aggregate" not in c for c in bare)


async def test_get_missing_channel_is_404(api: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await api.get(channel_url(tenant.device_id, "nope"), headers=tenant.headers())
    assert_error(response, 404, "nope")


async def test_put_updates_privacy_and_schemas(api: httpx.AsyncClient, tenant: Tenant) -> None:
    schema = {"type": "object", "properties": {"t": {"type": "number"}}}
    url = channel_url(tenant.device_id, "pump")
    body = {"is_private": True, "message_schema": schema, "aggregate_schema": schema}
    created = await send(api, tenant, "PUT", url, body)
    assert created.status_code == 201, created.text
    updated = await send(api, tenant, "PUT", url, {"is_private": False})
    assert updated.status_code == 200
    stored = await get_json(api, tenant, url)
    assert stored["is_private"] is False
    assert stored["message_schema"] == schema
    assert stored["aggregate_schema"] == schema


async def test_put_with_an_invalid_schema_is_400(api: httpx.AsyncClient, tenant: Tenant) -> None:
    url = channel_url(tenant.device_id, "pump")
    response = await send(api, tenant, "PUT", url, {"message_schema": {"type": "nonsense"}})
    assert_error(response, 400, "schema")
    assert (await api.get(url, headers=tenant.headers())).status_code == 404


# ---------------------------------------------------------------- messages


async def test_publish_answers_a_message(api: httpx.AsyncClient, tenant: Tenant) -> None:
    message = await publish(api, tenant, {"temp": 21.5}, token=tenant.device_token)
    assert message == {
        "id": message["id"],
        "author_id": str(tenant.device_id),
        "channel": {"agent_id": str(tenant.device_id), "name": "sensors"},
        "data": {"temp": 21.5},
        "attachments": [],
        "timestamp": timestamp_ms(int(message["id"])),
    }
    assert message["id"].isdigit()
    assert await aggregate_of(api, tenant) == {"temp": 21.5}


async def test_publish_with_ts_stamps_the_id(api: httpx.AsyncClient, tenant: Tenant) -> None:
    ts = 1_700_000_000_123
    message = await publish(api, tenant, {"temp": 1}, ts=ts)
    assert timestamp_ms(int(message["id"])) == ts
    assert message["timestamp"] == ts
    assert [m["id"] for m in await history(api, tenant)] == [message["id"]]


async def test_publishing_to_a_missing_channel_creates_it(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    await publish(api, tenant, {"on": True}, "fresh")
    channel = await get_json(api, tenant, channel_url(tenant.device_id, "fresh"))
    assert channel["name"] == "fresh"
    assert channel["aggregate"]["data"] == {"on": True}
    assert isinstance(channel["aggregate"]["last_updated"], int)


async def test_publishes_merge_into_the_aggregate(api: httpx.AsyncClient, tenant: Tenant) -> None:
    await publish(api, tenant, {"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]})
    await publish(api, tenant, {"a": None, "b": {"c": 5}, "l": [3]})
    assert await aggregate_of(api, tenant) == {"b": {"c": 5, "d": 3}, "l": [3]}


SLASHED = "sensors/temperature/indoor"


async def test_slashed_names_work_on_every_sub_path(api: httpx.AsyncClient, tenant: Tenant) -> None:
    message = await publish(api, tenant, {"temp": 19}, SLASHED)
    assert message["channel"]["name"] == SLASHED
    channel = await get_json(api, tenant, channel_url(tenant.device_id, SLASHED))
    assert channel["name"] == SLASHED
    assert [m["id"] for m in await history(api, tenant, SLASHED)] == [message["id"]]
    one = await get_json(
        api, tenant, channel_url(tenant.device_id, SLASHED, f"messages/{message['id']}")
    )
    assert one["data"] == {"temp": 19}
    series = channel_url(tenant.device_id, SLASHED, "messages/timeseries")
    assert (await get_json(api, tenant, series, field_name="temp"))["values"] == {"temp": [19]}
    assert await aggregate_of(api, tenant, SLASHED) == {"temp": 19}
    assert [c["name"] for c in await get_json(api, tenant, channel_url(tenant.device_id))] == [
        SLASHED
    ]


async def test_escaped_slashes_reach_names_ending_in_a_keyword(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    await publish(api, tenant, {"n": 1}, "logs%2Fmessages")
    await publish(api, tenant, {"n": 2}, "logs%2Faggregate")
    names = [c["name"] for c in await get_json(api, tenant, channel_url(tenant.device_id))]
    assert names == ["logs/aggregate", "logs/messages"]
    channel = await get_json(api, tenant, channel_url(tenant.device_id, "logs%2Fmessages"))
    assert channel["name"] == "logs/messages"
    assert channel["aggregate"]["data"] == {"n": 1}
    assert await aggregate_of(api, tenant, "logs%2Faggregate") == {"n": 2}
    assert await aggregate_of(api, tenant, "logs/aggregate") == {"n": 2}


async def publish_series(api: httpx.AsyncClient, tenant: Tenant, count: int) -> list[str]:
    return [(await publish(api, tenant, {"n": n, "x": {"y": n * 10}}))["id"] for n in range(count)]


async def test_history_is_newest_first_and_pages(api: httpx.AsyncClient, tenant: Tenant) -> None:
    ids = await publish_series(api, tenant, 5)
    assert [m["id"] for m in await history(api, tenant)] == ids[::-1]
    assert [m["id"] for m in await history(api, tenant, limit=2)] == [ids[4], ids[3]]
    assert [m["id"] for m in await history(api, tenant, before=ids[3])] == [ids[2], ids[1], ids[0]]
    assert [m["id"] for m in await history(api, tenant, after=ids[2])] == [ids[4], ids[3]]
    window = await history(api, tenant, after=ids[0], before=ids[4], limit=2)
    assert [m["id"] for m in window] == [ids[3], ids[2]]


async def test_history_field_name_trims_data(api: httpx.AsyncClient, tenant: Tenant) -> None:
    await publish_series(api, tenant, 2)
    trimmed = await history(api, tenant, field_name="n")
    assert [m["data"] for m in trimmed] == [{"n": 1}, {"n": 0}]
    nested = await history(api, tenant, field_name=["n", "x.y"], limit=1)
    assert nested[0]["data"] == {"n": 1, "x.y": 10}


async def test_history_bounds_may_be_times_in_ms(api: httpx.AsyncClient, tenant: Tenant) -> None:
    stamps = [1_700_000_000_000 + n * 1000 for n in range(3)]
    ids = [(await publish(api, tenant, {"n": n}, ts=ts))["id"] for n, ts in enumerate(stamps)]
    assert [m["id"] for m in await history(api, tenant, after_ms=stamps[1])] == [ids[2], ids[1]]
    assert [m["id"] for m in await history(api, tenant, before_ms=stamps[1])] == [ids[0]]


async def test_timeseries_is_oldest_first(api: httpx.AsyncClient, tenant: Tenant) -> None:
    ids = await publish_series(api, tenant, 3)
    url = channel_url(tenant.device_id, "sensors", "messages/timeseries")
    series = await get_json(api, tenant, url, field_name=["n", "x.y", "missing"])
    assert series["timestamps"] == [timestamp_ms(int(i)) for i in ids]
    assert series["values"] == {"n": [0, 1, 2], "x.y": [0, 10, 20], "missing": [None] * 3}


async def test_get_patch_put_delete_one_message(api: httpx.AsyncClient, tenant: Tenant) -> None:
    message = await publish(api, tenant, {"a": 1, "b": 2})
    url = channel_url(tenant.device_id, "sensors", f"messages/{message['id']}")
    assert (await get_json(api, tenant, url)) == message
    patched = await send(api, tenant, "PATCH", url, {"data": {"b": None, "c": 3}})
    assert patched.status_code == 200, patched.text
    assert patched.json()["data"] == {"a": 1, "c": 3}
    replaced = await send(api, tenant, "PUT", url, {"data": {"z": 0}})
    assert replaced.json()["data"] == {"z": 0}
    assert (await get_json(api, tenant, url))["data"] == {"z": 0}
    deleted = await api.delete(url, headers=tenant.headers())
    assert deleted.status_code == 204
    assert_error(await api.get(url, headers=tenant.headers()), 404, message["id"])
    assert await history(api, tenant) == []


# ---------------------------------------------------------------- aggregates


async def update_aggregate(
    api: httpx.AsyncClient, tenant: Tenant, method: str, body: Any, **params: Any
) -> Any:
    url = channel_url(tenant.device_id, "state", "aggregate")
    response = await send(api, tenant, method, url, body, **params)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"data", "attachments", "last_updated"}
    assert isinstance(answer["last_updated"], int)
    assert await aggregate_of(api, tenant, "state") == answer["data"]
    return answer["data"]


async def test_aggregate_patch_merges_and_put_replaces(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    first = {"a": {"b": 1, "c": 2}, "d": [1]}
    assert await update_aggregate(api, tenant, "PATCH", first) == first
    merged = await update_aggregate(api, tenant, "PATCH", {"a": {"b": None, "e": 3}, "d": [2]})
    assert merged == {"a": {"c": 2, "e": 3}, "d": [2]}
    assert await update_aggregate(api, tenant, "PUT", {"only": True}) == {"only": True}


async def test_aggregate_patch_replace_swaps_a_subtree(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    await update_aggregate(api, tenant, "PUT", {"a": {"b": {"x": 1, "y": 2}, "c": 1}})
    patch = {"a": {"b": {"z": 3}, "c": 2}}
    replaced = await update_aggregate(api, tenant, "PATCH", patch, replace="a.b")
    assert replaced == {"a": {"b": {"z": 3}, "c": 2}}


async def test_history_edits_leave_the_aggregate(api: httpx.AsyncClient, tenant: Tenant) -> None:
    message = await publish(api, tenant, {"a": 1})
    url = channel_url(tenant.device_id, "sensors", f"messages/{message['id']}")
    assert (await send(api, tenant, "PUT", url, {"data": {"a": 2}})).status_code == 200
    assert await aggregate_of(api, tenant) == {"a": 1}


# ---------------------------------------------------------------- batches


def item(tenant: Tenant, channel: str, data: Any, **extra: Any) -> dict[str, Any]:
    return {"agent_id": str(tenant.device_id), "channel_name": channel, "data": data, **extra}


async def batch(
    api: httpx.AsyncClient, tenant: Tenant, items: list[Any], token: str | None = None
) -> dict[str, Any]:
    response = await send(api, tenant, "POST", "/api/agents/messages", {"items": items}, token)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["count"] == len(items) == len(body["items"])
    assert body["succeeded"] + body["failed"] == body["count"]
    return body


async def test_batch_publishes_each_item_on_its_own(api: httpx.AsyncClient, tenant: Tenant) -> None:
    items = [
        item(tenant, "a", {"n": 1}),
        {**item(tenant, "b", {"n": 2}), "agent_id": tenant.other_device_id},
        item(tenant, "a", {"n": 3}, ts=1_700_000_000_000),
        {"agent_id": "not-an-id", "channel_name": "a", "data": {}},
        {"agent_id": str(tenant.device_id), "channel_name": "a"},
    ]
    body = await batch(api, tenant, items)
    assert (body["succeeded"], body["failed"]) == (3, 2)
    assert [i["success"] for i in body["items"]] == [True, True, True, False, False]
    assert body["items"][1]["agent_id"] == str(tenant.other_device_id)
    assert all(i["message_id"].isdigit() for i in body["items"][:3])
    assert "agent_id" in body["items"][3]["error"]
    assert "data" in body["items"][4]["error"]
    assert body["items"][4]["status"] == 400
    assert [m["data"] for m in await history(api, tenant, "a")] == [{"n": 1}, {"n": 3}]
    assert await aggregate_of(api, tenant, "a") == {"n": 3}
    assert await aggregate_of(api, tenant, "b", tenant.other_device_id) == {"n": 2}


async def test_batch_message_ids_make_retries_safe(api: httpx.AsyncClient, tenant: Tenant) -> None:
    items = [item(tenant, "a", {"n": n}, message_id=str(1_000_000_000_000 + n)) for n in range(3)]
    first = await batch(api, tenant, items)
    retry = await batch(api, tenant, items)
    assert first == retry
    assert [i["message_id"] for i in retry["items"]] == [
        str(1_000_000_000_000 + n) for n in range(3)
    ]
    assert [m["data"] for m in await history(api, tenant, "a")] == [{"n": 2}, {"n": 1}, {"n": 0}]


async def test_batch_aggregates_patch_each_item(api: httpx.AsyncClient, tenant: Tenant) -> None:
    await publish(api, tenant, {"a": {"x": 1, "y": 2}, "b": 1}, "state")
    items = [
        item(tenant, "state", {"a": {"x": 5}, "b": None}, replace="a"),
        item(tenant, "other", {"on": True}),
        {"agent_id": "1", "channel_name": "state", "data": {}},
    ]
    response = await send(api, tenant, "PATCH", "/api/agents/aggregates", {"items": items})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [i["success"] for i in body["items"]] == [True, True, False]
    assert body["items"][2]["status"] == 404
    assert (body["count"], body["succeeded"], body["failed"]) == (3, 2, 1)
    assert await aggregate_of(api, tenant, "state") == {"a": {"x": 5}}
    assert await aggregate_of(api, tenant, "other") == {"on": True}


async def test_gzip_request_bodies_are_accepted(api: httpx.AsyncClient, tenant: Tenant) -> None:
    headers = {**tenant.headers(), "Content-Encoding": "gzip"}
    single = gzip.compress(orjson.dumps({"data": {"zipped": 1}}))
    url = channel_url(tenant.device_id, "sensors", "messages")
    assert (await api.post(url, content=single, headers=headers)).status_code == 200
    many = gzip.compress(orjson.dumps({"items": [item(tenant, "sensors", {"zipped": 2})]}))
    response = await api.post("/api/agents/messages", content=many, headers=headers)
    assert response.json()["succeeded"] == 1
    assert await aggregate_of(api, tenant) == {"zipped": 2}


# ---------------------------------------------------------------- agents and the organisation


async def test_me_says_who_the_token_speaks_for(api: httpx.AsyncClient, tenant: Tenant) -> None:
    me = await get_json(api, tenant, "/api/me", tenant.device_token)
    assert me == {
        "agent_id": str(tenant.device_id),
        "organisation_id": str(tenant.organisation.id),
        "role": "device",
    }
    assert (await get_json(api, tenant, "/api/me"))["role"] == "admin"


async def test_agents_are_listed_and_created_by_admins(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    devices = await get_json(api, tenant, "/api/agents", kind="device")
    assert {a["id"] for a in devices} == {str(tenant.device_id), str(tenant.other_device_id)}
    created = await send(api, tenant, "POST", "/api/agents", {"name": "pump-3", "kind": "device"})
    assert created.status_code == 201, created.text
    agent = created.json()
    assert (agent["name"], agent["kind"]) == ("pump-3", "device")
    me = await get_json(api, tenant, "/api/me", agent["token"])
    assert me["agent_id"] == agent["id"] == agent["agent_id"]
    await publish(api, tenant, {"ok": 1}, agent_id=int(agent["id"]), token=agent["token"])
    refused = await send(api, tenant, "POST", "/api/agents", {"name": "x"}, tenant.device_token)
    assert_error(refused, 403, "admin")
    assert len(await get_json(api, tenant, "/api/agents", kind="device")) == 3


async def test_organisation_header_must_match_the_token(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    own = {**tenant.headers(), "X-Doover-Organisation": str(tenant.organisation.id)}
    assert (await api.get("/api/me", headers=own)).status_code == 200
    other = {**tenant.headers(), "X-Doover-Organisation": str(tenant.organisation.id + 1)}
    assert_error(await api.get("/api/me", headers=other), 403, "organisation")
    url = channel_url(tenant.device_id)
    assert_error(await api.get(url, headers=other), 403)


# ---------------------------------------------------------------- service endpoints


async def test_healthz_needs_no_token(api: httpx.AsyncClient) -> None:
    response = await api.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["bus"] == "memory"
    assert body["schema_version"] >= 1


async def test_metrics_count_requests_and_publishes(api: httpx.AsyncClient, tenant: Tenant) -> None:
    await publish(api, tenant, {"n": 1})
    await batch(api, tenant, [item(tenant, "a", {"n": 2}), item(tenant, "a", {"n": 3})])
    response = await api.get("/metrics")
    assert response.status_code == 200
    text = response.text
    assert "fleetcloud_messages_published_total 3.0" in text
    assert (
        'fleetcloud_http_requests_total{endpoint="channel_path",method="POST",status="200"} 1.0'
        in text
    )
    assert 'endpoint="post_messages"' in text


def refs_in(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [r for value in node.values() for r in refs_in(value)] + (
            [node["$ref"]] if "$ref" in node else []
        )
    if isinstance(node, list):
        return [r for value in node for r in refs_in(value)]
    return []


async def test_openapi_describes_the_channel_paths(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    assert spec["info"]["title"] == "fleetcloud"
    channel = "/api/agents/{agent_id}/channels/{channel_name}"
    assert set(spec["paths"][channel]) == {"get", "post", "put"}
    assert set(spec["paths"][channel + "/aggregate"]) == {"get", "patch", "put"}
    one = spec["paths"][channel + "/messages/{message_id}"]
    assert set(one) == {"get", "patch", "put", "delete"}
    assert "204" in one["delete"]["responses"]
    assert "201" in spec["paths"]["/api/agents"]["post"]["responses"]
    assert {"200", "201"} <= set(spec["paths"][channel]["put"]["responses"])
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            answers = [resolved(spec, r) for r in operation["responses"].values()]
            assert all("description" in r for r in answers), path
            params = [resolved(spec, p) for p in operation.get("parameters", [])]
            names = {p["name"] for p in params if p["in"] == "path"}
            assert names == {part[1:-1] for part in path.split("/") if part.startswith("{")}
    refs = refs_in(spec)
    assert refs
    assert all(resolved(spec, {"$ref": ref}) is not None for ref in refs)


async def test_docs_page_links_the_spec(api: httpx.AsyncClient) -> None:
    response = await api.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in response.text
    assert "/api/agents/{agent_id}/channels/{channel_name}/messages" in response.text


@pytest.mark.parametrize("path", ["/api/me", "/api/agents"])
async def test_data_endpoints_need_a_token(api: httpx.AsyncClient, path: str) -> None:
    assert_error(await api.get(path), 401, "Bearer")
