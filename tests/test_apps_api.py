"""The apps API in-process on SQLite and PostgreSQL: what it accepts, what it refuses and
why, who may call it. (Running apps is in test_apps_dispatch.py.)"""

from __future__ import annotations

import base64
from typing import Any

import httpx

from fleetcloud.core.types import AgentKind, Principal, Role
from fleetcloud.platform import Platform
from tests.conftest import Tenant, make_tenant
from tests.test_apps_kit import PROBE_SCHEMA, deploy_body, probe_files


async def deploy(
    api: httpx.AsyncClient, tenant: Tenant, name: str = "probe", **options: Any
) -> str:
    options.setdefault("schema", PROBE_SCHEMA)
    response = await api.post(
        "/api/apps", json=deploy_body(name, probe_files(name), **options), headers=tenant.headers()
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_deploying_creates_the_app_then_new_versions(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    first = await api.post(
        "/api/apps", json=deploy_body("probe", probe_files(), timeout=42), headers=tenant.headers()
    )
    assert first.status_code == 201
    body = first.json()
    assert (body["name"], body["kind"], body["version"]) == ("probe", "processor", 1)
    assert (body["latest"]["timeout_seconds"], body["latest"]["memory_mb"]) == (42, 128)
    second = await deploy(api, tenant)
    assert second == body["id"]
    listed = (await api.get("/api/apps", headers=tenant.headers())).json()
    assert [(a["name"], a["latest_version"]) for a in listed] == [("probe", 2)]
    app = (await api.get(f"/api/apps/{second}", headers=tenant.headers())).json()
    assert app["latest"]["config_schema"] == PROBE_SCHEMA
    versions = (await api.get(f"/api/apps/{second}/versions", headers=tenant.headers())).json()
    assert [v["version"] for v in versions] == [2, 1]


async def test_a_bad_deploy_is_refused_with_the_reason(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    good = deploy_body("probe", probe_files())
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({**good, "package": "not base64!"}, 400, "package is not valid base64"),
        ({**good, "package": base64.b64encode(b"plain").decode()}, 400, "not a zip file"),
        (deploy_body("probe", {"src/other/__init__.py": ""}), 400, "no module src.probe"),
        ({"package": good["package"]}, 400, "doover_config.json must hold a JSON object"),
    ]
    for body, status, message in cases:
        response = await api.post("/api/apps", json=body, headers=tenant.headers())
        assert response.status_code == status, response.text
        assert message in response.json()["message"]
    device = await api.post("/api/apps", json=good, headers=tenant.headers(tenant.device_token))
    assert device.status_code == 403
    assert (await api.get("/api/apps")).status_code == 401


async def test_an_install_is_checked_before_it_is_stored(
    api: httpx.AsyncClient, tenant: Tenant, platform: Platform
) -> None:
    processor = await deploy(api, tenant)
    integration = await deploy(api, tenant, "hook", kind="INT")
    elsewhere = await make_tenant(platform.store, "elsewhere")
    base = f"/api/apps/{processor}/installations"
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        (base, {}, 400, "agent_id is required: a processor is installed on a device"),
        (
            base,
            {"agent_id": str(tenant.organisation.agent_id)},
            400,
            "probe is a processor: it is installed on device agents",
        ),
        (
            f"/api/apps/{integration}/installations",
            {"agent_id": str(tenant.device_id)},
            400,
            "hook is an integration: it is installed on organisation agents",
        ),
        (base, {"agent_id": str(elsewhere.device_id)}, 404, "does not exist"),
        (
            base,
            {
                "agent_id": str(tenant.device_id),
                "config": {"label": 7, "dv_proc_subscriptions": "x"},
            },
            422,
            "does not match probe's config schema: dv_proc_subscriptions: 'x' is not of type "
            "'array', 'null'; label: 7 is not of type 'string', 'null'",
        ),
        (
            base,
            {"agent_id": str(tenant.device_id), "config": {"dv_proc_schedules": "rate(0 minutes)"}},
            422,
            "dv_proc_schedules: invalid schedule 'rate(0 minutes)'",
        ),
        (
            f"/api/apps/{integration}/installations",
            {"config": {"dv_proc_ingestion": {"cidr_ranges": ["not-a-range"]}}},
            422,
            "cidr_ranges: 'not-a-range' is not a CIDR range",
        ),
    ]
    for path, body, status, message in cases:
        response = await api.post(path, json=body, headers=tenant.headers())
        assert response.status_code == status, (body, response.text)
        assert message in response.json()["message"], response.json()["message"]
    listed = await api.get("/api/apps/installations", headers=tenant.headers())
    assert listed.json() == []


async def test_installations_update_and_uninstall(api: httpx.AsyncClient, tenant: Tenant) -> None:
    processor = await deploy(api, tenant)
    integration = await deploy(api, tenant, "hook", kind="INT")
    installed = await api.post(
        f"/api/apps/{processor}/installations",
        json={"agent_id": str(tenant.device_id), "config": {"dv_proc_subscriptions": ["a"]}},
        headers=tenant.headers(),
    )
    assert installed.status_code == 201
    installation = installed.json()
    assert "ingestion_path" not in installation
    again = await api.post(
        f"/api/apps/{processor}/installations",
        json={"agent_id": str(tenant.device_id)},
        headers=tenant.headers(),
    )
    assert again.status_code == 409

    hook = (
        await api.post(
            f"/api/apps/{integration}/installations",
            json={"config": {"dv_proc_ingestion": {"never_replace_token": True}}},
            headers=tenant.headers(),
        )
    ).json()
    assert hook["agent_id"] == str(tenant.organisation.agent_id)
    assert hook["ingestion_path"] == f"/api/ingestion/{hook['id']}"
    assert hook["ingestion_token"].startswith("fci_")
    config_of_org = f"/api/agents/{tenant.organisation.agent_id}/channels/deployment_config"
    hidden = await api.get(config_of_org, headers=tenant.headers(tenant.device_token))
    assert hidden.status_code == 403  # an integration's config holds its signing key
    kept = await api.patch(
        f"/api/apps/installations/{hook['id']}",
        json={"config": {"dv_proc_ingestion": {"never_replace_token": True, "throttle": 3}}},
        headers=tenant.headers(),
    )
    assert kept.json()["ingestion_token"] == hook["ingestion_token"]
    replaced = await api.patch(
        f"/api/apps/installations/{hook['id']}", json={"config": {}}, headers=tenant.headers()
    )
    assert replaced.json()["ingestion_token"] != hook["ingestion_token"]

    by_agent = await api.get(
        "/api/apps/installations",
        params={"agent_id": str(tenant.device_id)},
        headers=tenant.headers(),
    )
    assert [i["id"] for i in by_agent.json()] == [installation["id"]]
    assert (await api.delete(f"/api/apps/{processor}", headers=tenant.headers())).status_code == 409
    gone = await api.delete(
        f"/api/apps/installations/{installation['id']}", headers=tenant.headers()
    )
    assert gone.status_code == 204
    device_config = await api.get(
        f"/api/agents/{tenant.device_id}/channels/deployment_config/aggregate",
        headers=tenant.headers(),
    )
    assert device_config.json()["data"] == {"applications": {}}
    assert (await api.delete(f"/api/apps/{processor}", headers=tenant.headers())).status_code == 204


async def test_invoking_queues_an_event_and_the_logs_start_empty(
    api: httpx.AsyncClient, tenant: Tenant, platform: Platform
) -> None:
    processor = await deploy(api, tenant)
    installation = (
        await api.post(
            f"/api/apps/{processor}/installations",
            json={"agent_id": str(tenant.device_id)},
            headers=tenant.headers(),
        )
    ).json()
    base = f"/api/apps/installations/{installation['id']}"
    queued = await api.post(f"{base}/invoke", json={"payload": 1}, headers=tenant.headers())
    assert queued.status_code == 202  # no dispatcher here: nothing runs it
    assert queued.json()["status"] == "QUEUED"
    assert (await api.get(f"{base}/invocations", headers=tenant.headers())).json() == []
    assert (await api.get(f"{base}/dead-letters", headers=tenant.headers())).json() == []
    missing = await api.post(f"{base}/dead-letters/12345/retry", headers=tenant.headers())
    assert missing.status_code == 404
    user = await platform.store.create_agent(tenant.organisation.id, AgentKind.USER, "ops")
    token = await platform.store.create_token(
        Principal(user.id, tenant.organisation.id, Role.DEVICE)
    )
    refused = await api.get(f"{base}/invocations", headers=tenant.headers(token))
    assert refused.status_code == 403
    not_an_integration = await api.post(f"/api/ingestion/{installation['id']}", content=b"{}")
    assert not_an_integration.status_code == 404
