"""Who may touch what: organisations are invisible to each other (404), and within one
organisation devices write only their own channels and read only public ones (403)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from fleetcloud.core.types import AgentKind, Principal, Role
from fleetcloud.platform import Platform
from tests.conftest import Tenant, make_tenant
from tests.test_api import aggregate_of, assert_error, channel_url, get_json, publish

SECRET = {"secret": "tenant-a-only", "level": 7}


@dataclass
class Seeded:
    """Tenant A with a message and an aggregate on a channel, and tenant B."""

    a: Tenant
    b: Tenant
    message_id: str

    def fill(self, template: str) -> str:
        return template.format(agent=self.a.device_id, message=self.message_id)

    async def unchanged(self, api: httpx.AsyncClient) -> None:
        """What tenant A sees is exactly what it wrote."""
        url = channel_url(self.a.device_id, "vault", "messages")
        found = await get_json(api, self.a, url)
        assert [(m["id"], m["data"]) for m in found] == [(self.message_id, SECRET)]
        assert await aggregate_of(api, self.a, "vault") == SECRET
        channel = await get_json(api, self.a, channel_url(self.a.device_id, "vault"))
        assert (channel["is_private"], channel["message_schema"]) == (False, None)
        names = [c["name"] for c in await get_json(api, self.a, channel_url(self.a.device_id))]
        assert names == ["vault"]


@pytest.fixture
async def seeded(api: httpx.AsyncClient, tenant: Tenant, platform: Platform) -> Seeded:
    other = await make_tenant(platform.store, "other")
    message = await publish(api, tenant, SECRET, "vault")
    return Seeded(tenant, other, message["id"])


def hides_a(response: httpx.Response) -> None:
    assert_error(response, 404)
    assert "tenant-a-only" not in response.text


CHANNEL = "/api/agents/{agent}/channels/vault"
MESSAGE = CHANNEL + "/messages/{message}"
EVERY_ENDPOINT = [
    ("GET", "/api/agents/{agent}/channels", None),
    ("GET", CHANNEL, None),
    ("POST", CHANNEL, None),
    ("PUT", CHANNEL, {"is_private": True, "message_schema": {"type": "string"}}),
    ("GET", CHANNEL + "/messages", None),
    ("POST", CHANNEL + "/messages", {"data": {"secret": "overwritten"}}),
    ("GET", CHANNEL + "/messages/timeseries?field_name=secret", None),
    ("GET", MESSAGE, None),
    ("PATCH", MESSAGE, {"data": {"secret": None}}),
    ("PUT", MESSAGE, {"data": {"gone": True}}),
    ("DELETE", MESSAGE, None),
    ("GET", CHANNEL + "/aggregate", None),
    ("PATCH", CHANNEL + "/aggregate", {"secret": None}),
    ("PUT", CHANNEL + "/aggregate", {"gone": True}),
    ("PATCH", CHANNEL + "/aggregate?replace=secret", {"secret": "x"}),
    ("POST", "/api/agents/{agent}/channels/new/messages", {"data": {"planted": 1}}),
]


@pytest.mark.parametrize("who", ["admin", "device"])
@pytest.mark.parametrize(("method", "template", "body"), EVERY_ENDPOINT)
async def test_another_organisation_gets_404_everywhere(
    api: httpx.AsyncClient, seeded: Seeded, who: str, method: str, template: str, body: Any
) -> None:
    token = seeded.b.admin_token if who == "admin" else seeded.b.device_token
    response = await api.request(
        method, seeded.fill(template), json=body, headers=seeded.b.headers(token)
    )
    hides_a(response)
    await seeded.unchanged(api)


def items_for_a(seeded: Seeded) -> list[dict[str, Any]]:
    agent = seeded.a.device_id
    return [
        {"agent_id": str(agent), "channel_name": "vault", "data": {"secret": "overwritten"}},
        {"agent_id": agent, "channel_name": "new", "data": {"planted": 1}},
        {"agent_id": agent, "channel_name": "vault", "data": {}, "message_id": seeded.message_id},
    ]


@pytest.mark.parametrize("who", ["admin", "device"])
@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/api/agents/messages"), ("PATCH", "/api/agents/aggregates")]
)
async def test_batch_items_for_another_organisation_fail_with_404(
    api: httpx.AsyncClient, seeded: Seeded, who: str, method: str, path: str
) -> None:
    token = seeded.b.admin_token if who == "admin" else seeded.b.device_token
    items = items_for_a(seeded)
    response = await api.request(
        method, path, json={"items": items}, headers=seeded.b.headers(token)
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["count"], body["succeeded"], body["failed"]) == (3, 0, 3)
    assert {(i["success"], i["status"]) for i in body["items"]} == {(False, 404)}
    assert all("message_id" not in i for i in body["items"])
    assert "tenant-a-only" not in response.text
    await seeded.unchanged(api)


async def test_another_organisation_does_not_see_a_in_its_lists(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    agents = await get_json(api, seeded.b, "/api/agents")
    ids = {a["id"] for a in agents}
    assert str(seeded.a.device_id) not in ids
    assert str(seeded.b.device_id) in ids
    assert all(a["organisation_id"] == str(seeded.b.organisation.id) for a in agents)


async def test_a_token_cannot_claim_another_organisation(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    headers = {**seeded.b.headers(), "X-Doover-Organisation": str(seeded.a.organisation.id)}
    response = await api.get(channel_url(seeded.a.device_id), headers=headers)
    assert_error(response, 403, "organisation")
    assert "tenant-a-only" not in response.text


# ---------------------------------------------------------------- within one organisation


async def write_as(
    api: httpx.AsyncClient, tenant: Tenant, token: str, agent_id: int, channel: str = "c"
) -> list[httpx.Response]:
    """Every way of writing to ``agent_id``'s channel ``channel``, as ``token``."""
    headers = tenant.headers(token)
    url = channel_url(agent_id, channel)
    return [
        await api.post(url + "/messages", json={"data": {"w": 1}}, headers=headers),
        await api.put(url, json={"is_private": False}, headers=headers),
        await api.patch(url + "/aggregate", json={"w": 2}, headers=headers),
        await api.put(url + "/aggregate", json={"w": 3}, headers=headers),
    ]


async def test_a_device_may_not_write_another_devices_channels(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    await publish(api, tenant, {"mine": 1}, "c", agent_id=tenant.other_device_id)
    for response in await write_as(api, tenant, tenant.device_token, tenant.other_device_id):
        assert_error(response, 403, str(tenant.other_device_id))
    assert await aggregate_of(api, tenant, "c", tenant.other_device_id) == {"mine": 1}
    mine = await write_as(api, tenant, tenant.device_token, tenant.device_id)
    assert [r.status_code for r in mine] == [200, 200, 200, 200]


async def test_a_device_may_not_edit_another_devices_messages(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    message = await publish(api, tenant, {"mine": 1}, "c", agent_id=tenant.other_device_id)
    url = channel_url(tenant.other_device_id, "c", f"messages/{message['id']}")
    headers = tenant.headers(tenant.device_token)
    for method in ("PATCH", "PUT", "DELETE"):
        response = await api.request(method, url, json={"data": {}}, headers=headers)
        assert_error(response, 403)
    assert (await get_json(api, tenant, url))["data"] == {"mine": 1}


async def test_batch_items_for_another_device_fail_with_403(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    items = [
        {"agent_id": tenant.other_device_id, "channel_name": "c", "data": {"w": 1}},
        {"agent_id": tenant.device_id, "channel_name": "c", "data": {"w": 2}},
    ]
    headers = tenant.headers(tenant.device_token)
    for method, path in (("POST", "/api/agents/messages"), ("PATCH", "/api/agents/aggregates")):
        response = await api.request(method, path, json={"items": items}, headers=headers)
        body = response.json()
        assert [(i["success"], i.get("status")) for i in body["items"]] == [
            (False, 403),
            (True, None),
        ]
    listed = await get_json(api, tenant, channel_url(tenant.other_device_id))
    assert listed == []


async def test_a_message_is_found_only_in_its_own_channel(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    message = await publish(api, tenant, {"n": 1}, "c", agent_id=tenant.other_device_id)
    await publish(api, tenant, {"n": 2}, "c")
    await publish(api, tenant, {"n": 3}, "d", agent_id=tenant.other_device_id)
    for agent_id, name in ((tenant.device_id, "c"), (tenant.other_device_id, "d")):
        url = channel_url(agent_id, name, f"messages/{message['id']}")
        assert_error(await api.get(url, headers=tenant.headers()), 404, message["id"])
        response = await api.delete(url, headers=tenant.headers())
        assert_error(response, 404)
    url = channel_url(tenant.other_device_id, "c", f"messages/{message['id']}")
    assert (await get_json(api, tenant, url))["data"] == {"n": 1}


async def make_private(api: httpx.AsyncClient, tenant: Tenant, agent_id: int, name: str) -> None:
    url = channel_url(agent_id, name)
    response = await api.put(url, json={"is_private": True}, headers=tenant.headers())
    assert response.status_code == 200, response.text


async def test_public_channels_are_readable_private_ones_are_not(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    owner = tenant.other_device_id
    message = await publish(api, tenant, {"open": 1}, "public", agent_id=owner)
    await publish(api, tenant, {"hidden": 1}, "private", agent_id=owner)
    await make_private(api, tenant, owner, "private")
    reader = tenant.device_token
    aggregate = await get_json(api, tenant, channel_url(owner, "public", "aggregate"), reader)
    assert aggregate["data"] == {"open": 1}
    one = channel_url(owner, "public", f"messages/{message['id']}")
    assert (await get_json(api, tenant, one, reader))["data"] == {"open": 1}
    listed = await get_json(api, tenant, channel_url(owner), reader)
    assert [c["name"] for c in listed] == ["public"]
    for suffix in ("", "messages", "aggregate", "messages/timeseries?field_name=hidden"):
        response = await api.get(
            channel_url(owner, "private", suffix), headers=tenant.headers(reader)
        )
        assert_error(response, 403, "private")
        assert '"hidden"' not in response.text


@pytest.mark.parametrize("who", ["owner", "admin"])
async def test_owner_and_admin_read_private_channels(
    api: httpx.AsyncClient, tenant: Tenant, who: str
) -> None:
    owner = tenant.other_device_id
    await publish(api, tenant, {"hidden": 1}, "private", agent_id=owner)
    await make_private(api, tenant, owner, "private")
    token = tenant.other_device_token if who == "owner" else tenant.admin_token
    channel = await get_json(api, tenant, channel_url(owner, "private"), token)
    assert channel["aggregate"]["data"] == {"hidden": 1}
    messages = await get_json(api, tenant, channel_url(owner, "private", "messages"), token)
    assert [m["data"] for m in messages] == [{"hidden": 1}]
    listed = await get_json(api, tenant, channel_url(owner), token)
    assert [c["name"] for c in listed] == ["private"]


async def test_an_app_invocation_writes_only_its_scoped_device(
    api: httpx.AsyncClient, tenant: Tenant, platform: Platform
) -> None:
    organisation = tenant.organisation.id
    app = await platform.store.create_agent(organisation, AgentKind.APP, "processor")
    scopes = frozenset({tenant.device_id})
    principal = Principal(app.id, organisation, Role.APP_INVOCATION, scopes)
    token = await platform.store.create_token(principal)
    message = await publish(api, tenant, {"by": "app"}, agent_id=tenant.device_id, token=token)
    assert message["author_id"] == str(app.id)
    assert await aggregate_of(api, tenant, agent_id=tenant.device_id) == {"by": "app"}
    for response in await write_as(api, tenant, token, tenant.other_device_id):
        assert_error(response, 403)
    assert await get_json(api, tenant, channel_url(tenant.other_device_id)) == []


@pytest.mark.parametrize(
    "authorization", [None, "", "Bearer", "Bearer ", "Basic abc", "Bearer not-a-token"]
)
async def test_unknown_or_missing_tokens_are_401(
    api: httpx.AsyncClient, tenant: Tenant, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for url in ("/api/me", channel_url(tenant.device_id, "c", "messages")):
        response = await api.get(url, headers=headers)
        assert_error(response, 401)
    post = await api.post("/api/agents/messages", json={"items": []}, headers=headers)
    assert_error(post, 401)
