"""What an invocation's token may touch, through the real runtime: the agent the app is
installed on, plus what ``ExtendedPermissionsConfig`` grants — and never an agent of
another organisation, whatever it grants."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import make_tenant
from tests.test_apps_kit import Live, apps_settings, live

__all__ = ["apps_settings", "live"]  # fixtures used below

pytestmark = pytest.mark.slow

SCOPE = """
import httpx


def handler(event, context):
    upgrade = event["d"]["upgrade"]
    token = upgrade["token"]
    http = httpx.Client(base_url=upgrade["api_url"], headers={"Authorization": "Bearer " + token})
    results = {}
    for name, agent_id in event["d"]["payload"]["targets"].items():
        path = f"/api/agents/{agent_id}/channels/scratch/messages"
        results[name] = http.post(path, json={"data": {"from": "app"}}).status_code
    home = upgrade["agent_id"]
    http.post(f"/api/agents/{home}/channels/scope_results/messages", json={"data": results})
"""


async def attempt(live: Live, installation: str, targets: dict[str, str]) -> dict[str, Any]:
    response = await live.http.post(
        f"/api/apps/installations/{installation}/invoke", json={"payload": {"targets": targets}}
    )
    assert response.status_code == 202, response.text
    await live.run()
    [invocation] = [
        i
        for i in await live.invocations(installation)
        if i["event_id"] == response.json()["event_id"]
    ]
    assert invocation["status"] == "OK", invocation
    results: dict[str, Any] = await live.aggregate(live.tenant.device_id, "scope_results")
    return results


async def test_the_token_reaches_granted_devices_and_never_another_organisation(
    live: Live,
) -> None:
    stranger = await make_tenant(live.platform.store, "stranger")
    targets = {
        "home": str(live.tenant.device_id),
        "neighbour": str(live.tenant.other_device_id),
        "organisation": str(live.tenant.organisation.agent_id),
        "stranger": str(stranger.device_id),
    }
    app_id = await live.deploy("scope", {"src/scope/__init__.py": SCOPE})
    installed = await live.install(app_id, live.tenant.device_id)
    forbidden, unknown = 403, 404  # another organisation's agents do not exist for it

    assert await attempt(live, installed["id"], targets) == {
        "home": 200,
        "neighbour": forbidden,
        "organisation": forbidden,
        "stranger": unknown,
    }

    grants: list[tuple[dict[str, Any], int]] = [
        ({"devices": [targets["neighbour"]]}, 200),
        ({"devices": ["device-b"]}, 200),  # by name
        ({"all_devices": True}, 200),
        ({"devices": [targets["stranger"]], "all_devices": True}, 200),
    ]
    for permissions, neighbour in grants:
        config = {"dv_proc_extended_permissions": permissions}
        changed = await live.http.patch(
            f"/api/apps/installations/{installed['id']}", json={"config": config}
        )
        assert changed.status_code == 200, changed.text
        assert await attempt(live, installed["id"], targets) == {
            "home": 200,
            "neighbour": neighbour,
            "organisation": forbidden,  # not a device: no grant reaches it
            "stranger": unknown,
        }, permissions
    stranger_channels = await live.http.get(
        f"/api/agents/{stranger.device_id}/channels", headers=stranger.headers()
    )
    assert stranger_channels.json() == []  # nothing was written there
