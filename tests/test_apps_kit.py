"""Shared pieces of the apps tests (no tests here): app sources, packages, and a live
in-process server — the real API on a loopback socket, the dispatcher with real worker
processes, driven with ``run_until_idle``."""

from __future__ import annotations

import asyncio
import base64
import io
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from fleetcloud.api.app import create_app
from fleetcloud.apps.dispatcher import Dispatcher
from fleetcloud.apps.scheduler import Scheduler
from fleetcloud.apps.settings import AppsSettings
from fleetcloud.platform import Platform
from tests.conftest import Tenant
from tests.servers.postgres import free_port

PROBE = '''
import ctypes
import os
import signal
import sys
import time

from fleetcloud.sdk import config
from fleetcloud.sdk.processor import Application, ManySubscriptionConfig, ScheduleConfig, run_app


class ProbeConfig(config.Schema):
    def __init__(self):
        self.subscription = ManySubscriptionConfig()
        self.schedule = ScheduleConfig()
        self.label = config.String("Label", default="probe", max_length=20)


def misbehave(what):
    if what == "raise":
        raise RuntimeError("asked to fail")
    if what == "exit":
        sys.exit(3)
    if what == "crash":
        os._exit(7)
    if what == "segfault":
        ctypes.string_at(0)
    if what == "sigsegv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if what == "hang":
        time.sleep(3600)
    if what == "hog":
        hog = bytearray(2 * 1024 ** 3)
        return len(hog)
    if what == "garbage":
        os.write(1, bytes(range(256)) * 64)
        print("\\x00 }}not a frame{{")


class Probe(Application):
    async def remember(self, handler, event, detail=None):
        """Handle each event id once: a redelivered event only counts as a duplicate."""
        seen = await self.get_tag("seen", [])
        if any(entry["event_id"] == event.event_id for entry in seen):
            await self.set_tag("duplicates", await self.get_tag("duplicates", 0) + 1)
            return
        seen.append({"handler": handler, "event_id": event.event_id, "detail": detail})
        await self.set_tag("seen", seen)

    async def flaky(self):
        if not await self.get_tag("failed_once", False):
            await self.set_tag("failed_once", True)
            raise RuntimeError("failing the first time")

    async def on_message_create(self, event):
        data = event.message.data if isinstance(event.message.data, dict) else {}
        misbehave(data.get("do"))
        if data.get("do") == "flaky":
            await self.flaky()
        print("message on", event.channel_name)
        await self.remember("on_message_create", event, event.channel_name)

    async def on_aggregate_update(self, event):
        await self.remember("on_aggregate_update", event, event.diff)

    async def on_schedule(self, event):
        await self.remember("on_schedule", event, event.schedule_id)

    async def on_deployment(self, event):
        await self.remember("on_deployment", event, str(event.app_install_id))

    async def on_manual_invoke(self, event):
        payload = event.payload or {}
        print("worker", os.getpid())
        misbehave(payload.get("do"))
        await self.remember("on_manual_invoke", event, payload)

    async def on_ingestion_endpoint(self, event):
        await self.remember("on_ingestion_endpoint", event, event.payload)


def handler(event, context):
    ProbeConfig.clear_elements()
    run_app(Probe(config=ProbeConfig()), event, context)
'''

PROBE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "dv_proc_subscriptions": {"type": ["array", "null"], "items": {"type": "string"}},
        "dv_proc_schedules": {"type": ["string", "null"]},
        "label": {"type": ["string", "null"], "maxLength": 20},
    },
}


def zip_files(files: dict[str, str | bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def doover_config(
    name: str,
    *,
    kind: str = "PRO",
    handler: str | None = None,
    timeout: int = 10,
    memory: int = 128,
    schema: dict[str, Any] | None = None,
) -> dict[str, Any]:
    handler = handler or f"src.{name}.handler"
    return {
        name: {
            "name": name,
            "display_name": name.replace("_", " ").title(),
            "type": kind,
            "handler": handler,
            "lambda_config": {"Runtime": "python3.11", "Timeout": timeout, "MemorySize": memory},
            "config_schema": schema if schema is not None else {},
        }
    }


def deploy_body(name: str, files: dict[str, str | bytes], **options: Any) -> dict[str, Any]:
    return {
        "doover_config": doover_config(name, **options),
        "package": base64.b64encode(zip_files(files)).decode(),
    }


def probe_files(name: str = "probe") -> dict[str, str | bytes]:
    return {f"src/{name}/__init__.py": PROBE}


@dataclass
class Live:
    """The platform serving on a loopback port, with a dispatcher to drive."""

    platform: Platform
    tenant: Tenant
    url: str
    http: httpx.AsyncClient
    dispatcher: Dispatcher
    settings: AppsSettings

    async def run(self) -> None:
        await self.dispatcher.run_until_idle(timeout=90)

    async def deploy(self, name: str, files: dict[str, str | bytes], **options: Any) -> str:
        response = await self.http.post("/api/apps", json=deploy_body(name, files, **options))
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def install(
        self, app_id: str, agent_id: int | None, config: dict[str, Any] | None = None, **extra: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"config": config or {}, **extra}
        if agent_id is not None:
            body["agent_id"] = str(agent_id)
        response = await self.http.post(f"/api/apps/{app_id}/installations", json=body)
        assert response.status_code == 201, response.text
        installed: dict[str, Any] = response.json()
        return installed

    async def publish(
        self, agent_id: int, channel: str, data: Any, token: str | None = None
    ) -> str:
        headers = self.tenant.headers(token or self.tenant.device_token)
        response = await self.http.post(
            f"/api/agents/{agent_id}/channels/{channel}/messages",
            json={"data": data},
            headers=headers,
        )
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    async def post_public(
        self, path: str, body: bytes, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """A request with no token of ours (what a partner's webhook sends)."""
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as anonymous:
            return await anonymous.post(path, content=body, headers=headers)

    async def aggregate(self, agent_id: int, channel: str) -> Any:
        response = await self.http.get(f"/api/agents/{agent_id}/channels/{channel}/aggregate")
        return response.json()["data"] if response.status_code == 200 else None

    async def tags(self, agent_id: int, app_key: str) -> dict[str, Any]:
        found = await self.aggregate(agent_id, "tag_values") or {}
        tags: dict[str, Any] = found.get(app_key, {})
        return tags

    async def invocations(self, installation_id: str) -> list[dict[str, Any]]:
        response = await self.http.get(
            f"/api/apps/installations/{installation_id}/invocations", params={"limit": 1000}
        )
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()
        return list(reversed(found))  # oldest first

    async def scheduler_tick(self, at_ms: int) -> int:
        scheduler = Scheduler(self.platform, settings=self.settings, clock=lambda: at_ms)
        return await scheduler.run_until_idle()


async def serve(platform: Platform) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    port = free_port()
    config = uvicorn.Config(
        create_app(platform, manage_platform=False),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        log_config=None,
        ws="none",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="test-uvicorn")
    for _ in range(1000):
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started, "the test server did not start"
    return server, task, f"http://127.0.0.1:{port}"


def make_settings(tmp_path: Path, **overrides: Any) -> AppsSettings:
    values: dict[str, Any] = {
        "cache_dir": tmp_path / "apps",
        "backoff_seconds": 0.05,
        "retries": 2,
        "spare_workers": 1,
        "lease_seconds": 5.0,
        "max_workers": 4,
        **overrides,
    }
    return AppsSettings(**values)


@pytest.fixture
def apps_settings(tmp_path: Path) -> AppsSettings:
    return make_settings(tmp_path)


@pytest.fixture
async def live(
    platform: Platform, tenant: Tenant, apps_settings: AppsSettings
) -> AsyncIterator[Live]:
    server, task, url = await serve(platform)
    dispatcher = Dispatcher(platform, api_url=url, settings=apps_settings)
    try:
        async with (
            httpx.AsyncClient(base_url=url, headers=tenant.headers(), timeout=60) as http,
            dispatcher.opened(),
        ):
            yield Live(platform, tenant, url, http, dispatcher, apps_settings)
    finally:
        server.should_exit = True
        await task
