"""Shared fixtures. Servers (PostgreSQL, the Kafka-protocol broker) are started once per
session on free loopback ports; every test gets its own database and names."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from fleetcloud.api.app import create_app
from fleetcloud.bus.base import Bus, open_bus
from fleetcloud.core.types import AgentKind, Organisation, Principal, Role
from fleetcloud.platform import Platform
from fleetcloud.settings import Settings
from fleetcloud.store.base import Store, open_store
from tests.servers.postgres import postgres_server

pytest_plugins = ["tests.browser"]  # Chromium: the `browser` and `tab` fixtures


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def kafka_url() -> Iterator[str]:
    from tests.servers.kafka import tansu_broker

    with tansu_broker() as url:
        yield url


async def fresh_postgres_database(server_url: str) -> str:
    name = "fc_" + secrets.token_hex(6)
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleetcloud.db'}"
    server: str = request.getfixturevalue("postgres_url")
    return await fresh_postgres_database(server)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    async with open_store(database_url) as opened:
        yield opened


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.kafka)])
def bus_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory"
    url: str = request.getfixturevalue("kafka_url")
    return url


@pytest.fixture
async def bus(store: Store, bus_url: str) -> AsyncIterator[Bus]:
    async with open_bus(bus_url, store) as opened:
        yield opened


@dataclass
class Tenant:
    """An organisation with an admin token and two devices with their own tokens."""

    organisation: Organisation
    admin_token: str
    device_id: int
    device_token: str
    other_device_id: int
    other_device_token: str

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.admin_token}"}


async def make_tenant(store: Store, name: str = "acme") -> Tenant:
    organisation = await store.create_organisation(name)
    admin = await store.create_token(Principal(organisation.agent_id, organisation.id, Role.ADMIN))
    ids, tokens = [], []
    for device_name in ("device-a", "device-b"):
        agent = await store.create_agent(organisation.id, AgentKind.DEVICE, device_name)
        ids.append(agent.id)
        tokens.append(await store.create_token(Principal(agent.id, organisation.id, Role.DEVICE)))
    return Tenant(organisation, admin, ids[0], tokens[0], ids[1], tokens[1])


@pytest.fixture
async def platform(database_url: str) -> AsyncIterator[Platform]:
    settings = Settings(database_url=database_url, bus_url="memory", heartbeat_interval_ms=2000)
    async with Platform.from_settings(settings) as running:
        yield running


@pytest.fixture
async def api(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP API in-process (no socket)."""
    app = create_app(platform, manage_platform=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://fleetcloud") as client:
        yield client


@pytest.fixture
async def tenant(platform: Platform) -> Tenant:
    return await make_tenant(platform.store)
