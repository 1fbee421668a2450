"""The apps feature's store work on SQLite and PostgreSQL: versions, installations,
claims on deliveries, outcomes, dead letters, schedules."""

from __future__ import annotations

from typing import Any

import pytest

from fleetcloud.apps import repo
from fleetcloud.apps.model import Invocation, Status
from fleetcloud.apps.packaging import inspect_package, read_manifest
from fleetcloud.apps.repo import InstallRequest, Outcome
from fleetcloud.core.errors import Conflict
from fleetcloud.core.ids import new_id
from fleetcloud.core.types import AgentKind, Organisation
from fleetcloud.store.agents import now_ms
from fleetcloud.store.base import Store
from fleetcloud.store.channels import get_channel
from fleetcloud.store.ops import Fetch, Work
from tests.test_apps_kit import doover_config, zip_files


def package_for(name: str, kind: str = "PRO", body: str = "") -> tuple[Any, Any]:
    manifest = read_manifest(doover_config(name, kind=kind))
    data = zip_files({f"src/{name}/__init__.py": f"def handler(e, c): pass\n{body}"})
    return manifest, inspect_package(data, manifest, max_unpacked=1 << 20)


def count(table: str) -> Work[int]:
    rows = yield Fetch(f"SELECT count(*) FROM {table}")  # noqa: S608 - a constant name in tests
    return int(rows[0][0])


async def setup(store: Store) -> tuple[Organisation, int, Any, Any]:
    organisation = await store.create_organisation("acme")
    device = await store.create_agent(organisation.id, AgentKind.DEVICE, "pump")
    manifest, package = package_for("probe")
    app, version = await store.write(repo.deploy(organisation.id, manifest, package))
    return organisation, device.id, app, version


async def install(
    store: Store,
    organisation: Organisation,
    agent_id: int,
    app: Any,
    version: Any,
    key: str = "probe",
    next_ms: int | None = None,
) -> Any:
    config = {"dv_proc_subscriptions": ["a"], "dv_proc_schedules": "rate(5 minutes)"}
    request = InstallRequest(organisation.id, app, version, agent_id, key, config, next_ms)
    return await store.write(repo.install(request))


async def test_deploys_add_versions_and_store_each_package_once(store: Store) -> None:
    organisation, _, app, version = await setup(store)
    assert (app.latest_version, version.version) == (1, 1)
    manifest = read_manifest(doover_config("probe"))
    package = await store.read(repo.get_package(version.package_sha256))
    same = inspect_package(package, manifest, max_unpacked=1 << 20)  # the same bytes again
    again, second = await store.write(repo.deploy(organisation.id, manifest, same))
    assert (again.id, second.version) == (app.id, 2)
    assert await store.read(count("app_packages")) == 1
    versions = await store.read(repo.list_versions(app.id))
    assert [v.version for v in versions] == [2, 1]
    assert {v.package_sha256 for v in versions} == {same.sha256}
    changed_manifest, changed = package_for("probe", body="VERSION = 3\n")
    await store.write(repo.deploy(organisation.id, changed_manifest, changed))
    assert await store.read(count("app_packages")) == 2
    integration, package = package_for("probe", kind="INT")
    with pytest.raises(Conflict, match="probe is a PRO app"):
        await store.write(repo.deploy(organisation.id, integration, package))


async def test_an_installation_brings_its_agent_config_schedule_and_deployment_event(
    store: Store,
) -> None:
    organisation, device, app, version = await setup(store)
    installation = await install(store, organisation, device, app, version, next_ms=123)
    app_agent = await store.get_agent(installation.app_agent_id)
    assert app_agent is not None
    assert (app_agent.kind, app_agent.name) == (AgentKind.APP, "probe")
    channel = await store.read(get_channel(device, "deployment_config"))
    assert channel is not None
    assert channel.is_private
    assert channel.aggregate == {"applications": {"probe": installation.deployment_config}}
    due = await store.read(repo.due_schedules(1000))
    assert [(d.installation_id, d.next_ms) for d in due] == [(installation.id, 123)]
    [delivery] = await store.write(repo.claim_due("me", now_ms() + 1, now_ms() + 60_000, 10))
    assert (delivery.op, delivery.event_id) == ("on_deployment", f"deployment-{installation.id}")
    with pytest.raises(Conflict, match="already has an app installed as 'probe'"):
        await install(store, organisation, device, app, version)
    with pytest.raises(Conflict, match="installed 1 time"):
        await store.write(repo.delete_app(organisation.id, app.id))

    await store.write(repo.uninstall(organisation.id, installation.id))
    channel = await store.read(get_channel(device, "deployment_config"))
    assert channel is not None
    assert channel.aggregate == {"applications": {}}
    assert await store.read(repo.due_schedules(1000)) == []
    assert await store.read(repo.delivery_count()) == 0
    await store.write(repo.delete_app(organisation.id, app.id))
    assert await store.read(count("app_packages")) == 0


async def test_a_delivery_is_claimed_by_one_dispatcher_until_its_lease_lapses(
    store: Store,
) -> None:
    organisation, device, app, version = await setup(store)
    installation = await install(store, organisation, device, app, version)
    now = now_ms()
    event = repo.new_delivery("on_manual_invoke", "e-1", {"payload": 1}, installation.id)
    duplicate = repo.new_delivery("on_manual_invoke", "e-1", {"payload": 1}, installation.id)
    added = await store.write(repo.enqueue([event, duplicate], owner=None, lease_ms=0))
    assert [d.id for d in added] == [event.id]  # one per (installation, handler, event id)

    mine = await store.write(repo.claim_due("a", now + 10, now + 1000, 10))
    assert {d.event_id for d in mine} == {"e-1", f"deployment-{installation.id}"}
    assert await store.write(repo.claim_due("b", now + 10, now + 1000, 10)) == []
    assert await store.write(repo.renew("a", [event.id], now + 5000)) == 1
    assert await store.write(repo.claim_due("b", now + 2000, now + 9000, 10)) != []
    assert [
        d.event_id for d in await store.write(repo.claim_due("c", now + 6000, now + 9000, 10))
    ] == ["e-1"]
    assert await store.write(repo.release("c")) == 1


def outcome(delivery: Any, installation: Any, status: Status, **fate: Any) -> Outcome:
    invocation = Invocation(
        new_id(),
        installation.id,
        installation.app_id,
        1,
        installation.agent_id,
        delivery.op,
        delivery.event_id,
        delivery.attempt + 1,
        status,
        0,
        1.5,
        "boom" if status != Status.OK else None,
        "logs\x00",
        {"status": status.value},
        now_ms(),
    )
    return Outcome(delivery, invocation, installation.app_agent_id, **fate)


async def test_outcomes_log_the_attempt_and_retry_or_bury_the_delivery(store: Store) -> None:
    organisation, device, app, version = await setup(store)
    installation = await install(store, organisation, device, app, version)
    event = repo.new_delivery("on_manual_invoke", "e-2", {"payload": 2}, installation.id)
    await store.write(repo.enqueue([event], owner="me", lease_ms=now_ms() + 60_000))

    await store.write(repo.record(outcome(event, installation, Status.ERROR, retry_at_ms=42)))
    assert await store.read(repo.next_due_ms()) is not None
    [retry] = [
        d
        for d in await store.write(repo.claim_due("me", now_ms(), now_ms() + 1, 10))
        if d.id == event.id
    ]
    assert (retry.attempt, retry.last_error) == (1, "boom")
    await store.write(repo.record(outcome(retry, installation, Status.FAILED, dead=True)))

    log = await store.read(repo.list_invocations(installation.id))
    assert [(i.attempt, i.status) for i in log] == [(2, Status.FAILED), (1, Status.ERROR)]
    summary = await store.read(get_channel(device, f"dv-proc-inv-{app.id}"))
    assert summary is not None
    assert summary.aggregate == {"status": "FAILED"}
    [letter] = await store.read(repo.list_dead_letters(installation.id))
    assert (letter.event_id, letter.attempts, letter.data) == ("e-2", 2, {"payload": 2})
    again = await store.write(repo.retry_dead_letter(installation.id, letter.id))
    assert again.event_id == "e-2"
    assert await store.read(repo.list_dead_letters(installation.id)) == []
    assert await store.write(repo.prune(now_ms() + 1)) == 2


async def test_a_schedule_fires_once_even_when_two_schedulers_race(store: Store) -> None:
    organisation, device, app, version = await setup(store)
    installation = await install(store, organisation, device, app, version, next_ms=1000)

    def fire() -> Work[bool]:
        delivery = repo.new_delivery("on_schedule", "schedule-1000", {}, installation.id)
        return repo.fire_schedule(installation.id, 1000, 301_000, delivery)

    assert await store.write(fire()) is True
    assert await store.write(fire()) is False  # a second scheduler with the same view
    assert await store.read(repo.next_schedule_ms()) == 301_000
