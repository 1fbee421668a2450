"""The API answers what its OpenAPI document says: every answer in these flows — status,
media type and JSON shape — is checked against the document as it arrives, and every
operation that needs credentials refuses a call without them with the error shape."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from fleetcloud.api.openapi import spec
from tests.conftest import Tenant
from tests.test_apps_kit import PROBE_SCHEMA, deploy_body, probe_files
from tests.test_openapi import operations, resolved

V1 = "/api/v1"
DIGITS = "^[0-9]+$"
SAMPLES = {"channel_name": "sensors/indoor", "ref": "nothing.py", "group": "g", "request_id": "r"}


@dataclass
class Conformance:
    """Checks answers against the document and notes which operations it has seen."""

    document: dict[str, Any] = field(default_factory=spec)
    seen: set[tuple[str, str]] = field(default_factory=set)

    def pattern(self, path: str, operation: dict[str, Any]) -> re.Pattern[str]:
        kinds = {
            p["name"]: p["schema"].get("pattern")
            for p in map(self.resolve, operation.get("parameters", []))
            if p["in"] == "path"
        }

        def part(piece: str) -> str:
            if not piece.startswith("{"):
                return re.escape(piece)
            name = piece[1:-1]
            if name == "channel_name":  # channel names may hold '/' (docs/api.md)
                return ".+"
            return "[0-9]+" if kinds[name] == DIGITS else "[^/]+"

        return re.compile("^" + "".join(map(part, re.split(r"({\w+})", path))) + "$")

    def unseen(self, tag: str) -> set[str]:
        """The operations tagged ``tag`` that no checked answer came from."""
        return {
            f"{method.upper()} {path}"
            for method, path, operation in operations(self.document)
            if tag in operation["tags"] and (method, path) not in self.seen
        }

    def resolve(self, node: Any) -> Any:
        return resolved(self.document, node)

    def operation(self, method: str, url_path: str) -> tuple[str, dict[str, Any]]:
        """The described operation for a call; the most literal template wins."""
        found = [
            (path, operation)
            for m, path, operation in operations(self.document)
            if m == method and self.pattern(path, operation).match(url_path)
        ]
        assert found, f"{method.upper()} {url_path} is not in the OpenAPI document"
        return max(found, key=lambda item: len(re.sub(r"{\w+}", "", item[0])))

    def check(self, method: str, url_path: str, status: int, media: str, body: bytes) -> None:
        path, operation = self.operation(method, url_path)
        where = f"{method.upper()} {path} → {status}"
        responses = operation["responses"]
        described = responses.get(str(status)) or responses.get(f"{status // 100}XX")
        assert described is not None, f"{where}: status not in the document ({body[:200]!r})"
        content = self.resolve(described).get("content")
        self.seen.add((method, path))
        if content is None:
            assert not body, f"{where}: the document says no body, the answer has one"
            return
        media = media.split(";")[0].strip()
        assert media in content, f"{where}: answered {media}, the document says {set(content)}"
        if media == "application/json":
            self.validate(content[media]["schema"], body, where)

    def check_accepted(self, method: str, url_path: str, media: str, body: bytes) -> None:
        """A JSON body the server accepted must be valid by the document too."""
        path, operation = self.operation(method, url_path)
        where = f"{method.upper()} {path} request"
        request_body = operation.get("requestBody")
        if not body or not media.startswith("application/json"):
            return
        assert request_body is not None, f"{where}: the document says no body"
        self.validate(request_body["content"]["application/json"]["schema"], body, where)

    def validate(self, schema: dict[str, Any], body: bytes, where: str) -> None:
        whole = {**schema, "components": self.document["components"]}  # for the $refs
        errors = list(Draft202012Validator(whole).iter_errors(json.loads(body)))
        assert errors == [], f"{where}: {[e.message for e in errors][:3]}"


@pytest.fixture
def conformance() -> Conformance:
    return Conformance()


@pytest.fixture
async def checked(api: httpx.AsyncClient, conformance: Conformance) -> httpx.AsyncClient:
    """The in-process API, every answer (and every request body it accepted) checked
    against the document."""

    async def check(response: httpx.Response) -> None:
        await response.aread()
        method, path = response.request.method.lower(), response.request.url.path
        conformance.check(
            method,
            path,
            response.status_code,
            response.headers.get("content-type", ""),
            response.content,
        )
        if response.is_success:
            sent = response.request.headers.get("content-type", "")
            conformance.check_accepted(method, path, sent, response.request.content)

    api.event_hooks = {"response": [check]}
    return api


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def test_the_check_refuses_an_answer_unlike_the_document(conformance: Conformance) -> None:
    execution = b'{"execution_id": "1", "status": "QUEUED"}'  # most fields missing
    with pytest.raises(AssertionError, match="is a required property"):
        conformance.check("get", f"{V1}/devices/5/jobs/7", 200, "application/json", execution)
    with pytest.raises(AssertionError, match="status not in the document"):
        conformance.check("delete", f"{V1}/groups/g", 200, "application/json", b"{}")
    with pytest.raises(AssertionError, match="not in the OpenAPI document"):
        conformance.check("get", "/api/nowhere", 200, "application/json", b"{}")
    with pytest.raises(AssertionError, match="answered text/plain"):
        conformance.check("get", "/api/me", 200, "text/plain", b"me")
    register = f"{V1}/device/register"
    with pytest.raises(AssertionError, match="'provisioning_key' is a required property"):
        conformance.check_accepted("post", register, "application/json", b'{"name": "x"}')


def test_paths_are_matched_to_the_most_literal_template(conformance: Conformance) -> None:
    channel = "/api/agents/1/channels/a/b/messages"
    assert conformance.operation("get", channel + "/timeseries")[0].endswith("/timeseries")
    assert conformance.operation("get", channel + "/42")[0].endswith("/{message_id}")
    assert conformance.operation("get", f"{V1}/jobs/executions")[0] == f"{V1}/jobs/executions"
    assert conformance.operation("get", f"{V1}/jobs/9")[0] == f"{V1}/jobs/{{job_id}}"


# ---------------------------------------------------------------- flows


async def test_data_plane_answers_as_described(
    checked: httpx.AsyncClient, tenant: Tenant, conformance: Conformance
) -> None:
    admin = tenant.headers()
    channel = f"/api/agents/{tenant.device_id}/channels/sensors/indoor"
    ok(await checked.get("/api/me", headers=admin))
    ok(await checked.get("/api/agents", params={"kind": "device"}, headers=admin))
    ok(await checked.post("/api/agents", json={"name": "pump"}, headers=admin), 201)
    ok(await checked.put(channel, json={"is_private": False}, headers=admin), 201)
    ok(await checked.post(channel, headers=admin))
    message = ok(await checked.post(channel + "/messages", json={"data": {"t": 1}}, headers=admin))
    ok(await checked.get(channel + "/messages", params={"limit": 5}, headers=admin))
    ok(await checked.get(channel + "/messages/timeseries?field_name=t", headers=admin))
    one = f"{channel}/messages/{message['id']}"
    ok(await checked.get(one, headers=admin))
    ok(await checked.patch(one, json={"data": {"u": 2}}, headers=admin))
    ok(await checked.put(one, json={"data": {"t": 3}}, headers=admin))
    ok(await checked.delete(one, headers=admin), 204)
    ok(await checked.patch(channel + "/aggregate", json={"t": 4}, headers=admin))
    ok(await checked.put(channel + "/aggregate", json={"t": 5}, headers=admin))
    ok(await checked.get(channel + "/aggregate", headers=admin))
    ok(await checked.get(channel, headers=admin))
    ok(await checked.get(f"/api/agents/{tenant.device_id}/channels", headers=admin))
    item = {"agent_id": tenant.device_id, "channel_name": "power", "data": {"v": 1}}
    elsewhere = {**item, "agent_id": "1"}  # no such agent: this item fails, the other not
    batch = ok(
        await checked.post("/api/agents/messages", json={"items": [item, elsewhere]}, headers=admin)
    )
    assert (batch["succeeded"], batch["items"][1]["status"]) == (1, 404)
    ok(await checked.patch("/api/agents/aggregates", json={"items": [item]}, headers=admin))
    ok(await checked.get(channel + "/messages/99", headers=admin), 404)
    ok(await checked.post(channel + "/messages", content=b"{", headers=admin), 400)
    assert conformance.unseen("data") == {"GET /api/gateway"}  # a websocket: test_gateway.py


async def test_jobs_answer_as_described(
    checked: httpx.AsyncClient, tenant: Tenant, conformance: Conformance
) -> None:
    admin = tenant.headers()
    key = ok(await checked.post(f"{V1}/provisioning-keys", json={}, headers=admin), 201)
    ok(await checked.get(f"{V1}/provisioning-keys", headers=admin))
    device = ok(
        await checked.post(
            f"{V1}/device/register", json={"provisioning_key": key["provisioning_key"]}
        ),
        201,
    )
    uuid, device_key = device["uuid"], {"X-Device-API-Key": device["api_key"]}
    ok(await checked.get(f"{V1}/devices", headers=admin))
    ok(await checked.get(f"{V1}/devices/{uuid}", headers=device_key))
    group = ok(await checked.post(f"{V1}/groups", json={"name": "pumps"}, headers=admin), 201)
    ok(await checked.get(f"{V1}/groups", headers=admin))
    ok(await checked.post(f"{V1}/groups/pumps/devices", json={"devices": [uuid]}, headers=admin))
    ok(await checked.get(f"{V1}/groups/{group['id']}", headers=admin))
    ok(await checked.get(f"{V1}/jobs/templates", headers=admin))
    document = {
        "version": "1.0",
        "steps": [{"action": {"type": "runCommand", "input": {"command": "true"}}}],
    }
    template = ok(
        await checked.post(
            f"{V1}/jobs/templates", json={"name": "t", "job_document": document}, headers=admin
        ),
        201,
    )
    ok(await checked.get(f"{V1}/jobs/templates/t", headers=admin))
    replacement = {"name": "t2", "job_document": document}
    ok(await checked.put(f"{V1}/jobs/templates/{template['id']}", json=replacement, headers=admin))
    ok(await checked.get(f"{V1}/devices/{uuid}/jobs/next", headers=device_key))  # none yet
    body = {
        "job_name": "j",
        "template_id": template["id"],
        "target_type": "group",
        "target_groups": ["pumps"],
    }
    job = ok(await checked.post(f"{V1}/jobs/execute", json=body, headers=admin), 201)
    ok(await checked.get(f"{V1}/devices/{uuid}/jobs/next", headers=device_key))
    status = f"{V1}/devices/{uuid}/jobs/{job['job_id']}"
    ok(
        await checked.patch(
            status + "/status", json={"status": "SUCCEEDED", "exit_code": 0}, headers=device_key
        )
    )
    ok(await checked.patch(status + "/status", json={"status": "FAILED"}, headers=device_key), 409)
    ok(await checked.get(status, headers=device_key))
    ok(await checked.get(f"{V1}/devices/{uuid}/jobs", headers=device_key))
    ok(await checked.get(f"{V1}/jobs/executions", params={"latest": "true"}, headers=admin))
    ok(await checked.get(f"{V1}/jobs/{job['job_id']}/executions", headers=admin))
    ok(await checked.get(f"{V1}/jobs", headers=admin))
    ok(await checked.get(f"{V1}/jobs/{job['job_id']}", headers=admin))
    second = ok(await checked.post(f"{V1}/jobs/execute", json=body, headers=admin), 201)
    ok(await checked.post(f"{V1}/devices/{uuid}/jobs/{second['job_id']}/remove", headers=admin))
    third = ok(await checked.post(f"{V1}/jobs/execute", json=body, headers=admin), 201)
    ok(await checked.post(f"{V1}/devices/{uuid}/jobs/{third['job_id']}/cancel", headers=admin))
    ok(await checked.post(f"{V1}/jobs/{job['job_id']}/cancel", json={}, headers=admin), 409)
    ok(await checked.delete(f"{V1}/groups/pumps/devices/{uuid}", headers=admin))
    ok(await checked.delete(f"{V1}/groups/pumps", headers=admin), 204)
    ok(await checked.delete(f"{V1}/jobs/templates/{template['id']}", headers=admin), 204)
    ok(await checked.delete(f"{V1}/provisioning-keys/{key['id']}", headers=admin), 204)
    ok(await checked.post(f"{V1}/jobs/execute", json={"job_name": "x"}, headers=admin), 400)
    assert conformance.unseen("jobs") == set()


PARSER = b"def format_command(command, config):\n    return b'x'\n"


async def test_commands_answer_as_described(
    checked: httpx.AsyncClient, tenant: Tenant, conformance: Conformance
) -> None:
    admin = tenant.headers()
    device = f"/api/agents/{tenant.device_id}"
    ok(await checked.put("/api/parsers/mine.py", content=PARSER, headers=admin), 201)
    ok(await checked.put("/api/parsers/mine.py", content=PARSER, headers=admin))
    ok(await checked.get("/api/parsers", headers=admin))
    ok(await checked.get("/api/parsers/mine", headers=admin))
    settings = {"parser_script_ref": "mine.py", "config": {"k": 1}}
    ok(await checked.put(device + "/parser", json=settings, headers=admin))
    ok(await checked.get(device + "/parser", headers=admin))
    command = {
        "device_id": str(tenant.device_id),
        "command_type": "set_led",
        "protocol": "mqtt",
        "parser_script_ref": "mine.py",
        "metadata": {"topic": f"fleetcloud/{tenant.device_id}/commands"},
    }
    pushed = ok(await checked.post("/api/commands", json=command, headers=admin), 202)
    ok(await checked.get(f"/api/commands/{pushed['request_id']}", headers=admin))
    ok(await checked.get(device + "/commands", params={"limit": 10}, headers=admin))
    ok(await checked.delete("/api/parsers/mine.py", headers=admin), 204)
    ok(await checked.post("/api/commands", json={**command, "protocol": "x"}, headers=admin), 422)
    assert conformance.unseen("commands") == set()


async def test_apps_answer_as_described(
    checked: httpx.AsyncClient, tenant: Tenant, conformance: Conformance
) -> None:
    admin = tenant.headers()
    app = ok(
        await checked.post(
            "/api/apps",
            json=deploy_body("probe", probe_files(), schema=PROBE_SCHEMA),
            headers=admin,
        ),
        201,
    )
    ok(await checked.get("/api/apps", headers=admin))
    ok(await checked.get(f"/api/apps/{app['id']}", headers=admin))
    ok(await checked.get(f"/api/apps/{app['id']}/versions", headers=admin))
    installed = ok(
        await checked.post(
            f"/api/apps/{app['id']}/installations",
            json={"agent_id": str(tenant.device_id)},
            headers=admin,
        ),
        201,
    )
    base = f"/api/apps/installations/{installed['id']}"
    ok(await checked.get(f"/api/apps/{app['id']}/installations", headers=admin))
    ok(await checked.get("/api/apps/installations", headers=admin))
    ok(await checked.get(base, headers=admin))
    ok(await checked.patch(base, json={"config": {"label": "x"}}, headers=admin))
    ok(await checked.post(base + "/invoke", json={"payload": 1}, headers=admin), 202)
    ok(await checked.get(base + "/invocations", headers=admin))
    ok(await checked.get(base + "/dead-letters", headers=admin))
    ok(await checked.post(base + "/dead-letters/5/retry", headers=admin), 404)
    ok(await checked.delete(base + "/dead-letters/5", headers=admin), 404)
    hook_app = deploy_body("hook", probe_files("hook"), kind="INT")
    hook = ok(await checked.post("/api/apps", json=hook_app, headers=admin), 201)
    hooked = ok(
        await checked.post(f"/api/apps/{hook['id']}/installations", json={}, headers=admin), 201
    )
    token = {"token": hooked["ingestion_token"]}
    ok(await checked.post(hooked["ingestion_path"], params=token, content=b"hi"), 202)
    ok(await checked.post(hooked["ingestion_path"], content=b"hi"), 401)
    ok(await checked.delete(base, headers=admin), 204)
    ok(await checked.delete(f"/api/apps/{app['id']}", headers=admin), 204)
    assert conformance.unseen("apps") == set()


# ---------------------------------------------------------------- credentials


def sample_path(path: str) -> str:
    return re.sub(r"{(\w+)}", lambda m: SAMPLES.get(m.group(1), "1"), path)


def secured(document: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Operations that need credentials, except the ingestion URL, whose own checks come
    after finding the installation (test_ingestion_gate.py has them)."""
    for method, path, operation in operations(document):
        if operation.get("security") and not path.startswith("/api/ingestion/"):
            yield method, path


async def test_every_secured_operation_refuses_a_call_without_credentials(
    checked: httpx.AsyncClient, conformance: Conformance
) -> None:
    refused = {}
    for method, path in secured(conformance.document):
        response = await checked.request(method.upper(), sample_path(path))
        refused[f"{method.upper()} {path}"] = response.status_code
    assert len(refused) > 60
    assert {where for where, status in refused.items() if status != 401} == set()
