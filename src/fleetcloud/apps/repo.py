# ruff: noqa: S608 - SQL here is built from constant column lists and "?" placeholders only
"""Store work for apps, versions, installations, deliveries and the invocation log.

Every unit is written once for SQLite and PostgreSQL (see ``store.ops``). A delivery is
claimed with one conditional ``UPDATE … WHERE lease_ms < now``, so two dispatchers never
both run it; its outcome — the invocation log row, the summary message on
``dv-proc-inv-<app_id>``, and the delivery deleted, rescheduled or turned into a dead
letter — is one transaction.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fleetcloud.apps.model import (
    INGESTION_KEY,
    App,
    DeadLetter,
    Delivery,
    Installation,
    Invocation,
    Status,
    Version,
)
from fleetcloud.apps.packaging import Manifest, Package
from fleetcloud.core import jsonish
from fleetcloud.core.errors import Conflict, NotFound
from fleetcloud.core.ids import new_id
from fleetcloud.core.types import AgentKind, Event, Role
from fleetcloud.store import agents
from fleetcloud.store.agents import now_ms
from fleetcloud.store.channels import (
    AggregateItem,
    PublishItem,
    publish,
    put_channel,
    update_aggregates,
)
from fleetcloud.store.ops import Emit, Execute, Fetch, Work, placeholders

APP_COLUMNS = (
    "id, organisation_id, name, display_name, type, latest_version, created_ms, updated_ms"
)
VERSION_COLUMNS = (
    "id, app_id, version, package_sha256, package_size, handler, timeout_seconds, memory_mb, "
    "config, created_ms"
)
INSTALLATION_COLUMNS = (
    "id, organisation_id, app_id, agent_id, app_agent_id, app_key, deployment_config, "
    "ingestion_token, mini_token, created_ms, updated_ms"
)
DELIVERY_COLUMNS = "id, installation_id, op, event_id, data, attempt, due_ms, last_error"
INVOCATION_COLUMNS = (
    "id, installation_id, app_id, version, agent_id, op, event_id, attempt, status, "
    "started_us, duration_ms, error, logs, summary, created_ms"
)
DEAD_LETTER_COLUMNS = "id, installation_id, op, event_id, data, attempts, error, created_ms"
INSTALLATION_EVENTS = "app_installations"
"""Bus topic: an installation was added, changed or removed (the dispatcher reloads)."""
DEPLOYMENT_CHANNEL = "deployment_config"


def summary_channel(app_id: int) -> str:
    return f"dv-proc-inv-{app_id}"


# ---------------------------------------------------------------- rows


def _app(row: Sequence[Any]) -> App:
    return App(int(row[0]), int(row[1]), row[2], row[3], row[4], int(row[5]), row[6], row[7])


def _version(row: Sequence[Any]) -> Version:
    return Version(
        int(row[0]),
        int(row[1]),
        int(row[2]),
        row[3],
        int(row[4]),
        row[5],
        int(row[6]),
        int(row[7]),
        jsonish.loads(row[8]),
        int(row[9]),
    )


def _installation(row: Sequence[Any]) -> Installation:
    return Installation(
        int(row[0]),
        int(row[1]),
        int(row[2]),
        int(row[3]),
        int(row[4]),
        row[5],
        jsonish.loads(row[6]),
        row[7],
        row[8],
        int(row[9]),
        int(row[10]),
    )


def _delivery(row: Sequence[Any]) -> Delivery:
    return Delivery(
        int(row[0]), int(row[1]), row[2], row[3], jsonish.loads(row[4]), int(row[5]), row[6], row[7]
    )


def _invocation(row: Sequence[Any]) -> Invocation:
    return Invocation(
        int(row[0]),
        int(row[1]),
        int(row[2]),
        int(row[3]),
        int(row[4]),
        row[5],
        row[6],
        int(row[7]),
        Status(row[8]),
        int(row[9]),
        float(row[10]),
        row[11],
        row[12],
        jsonish.loads(row[13]),
        int(row[14]),
    )


def _dead_letter(row: Sequence[Any]) -> DeadLetter:
    return DeadLetter(
        int(row[0]), int(row[1]), row[2], row[3], jsonish.loads(row[4]), int(row[5]), row[6], row[7]
    )


# ---------------------------------------------------------------- apps and versions


def deploy(organisation_id: int, manifest: Manifest, package: Package) -> Work[tuple[App, Version]]:
    """Store the package (once per content) and add a version of the app (created if new)."""
    now = now_ms()
    yield Execute(
        "INSERT INTO app_packages (sha256, size, data, created_ms) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (sha256) DO NOTHING",
        (package.sha256, len(package.data), package.data, now),
    )
    app = yield from find_app(organisation_id, manifest.name)
    if app is None:
        yield Execute(
            f"INSERT INTO apps ({APP_COLUMNS}) VALUES (?, ?, ?, ?, ?, 0, ?, ?) "
            "ON CONFLICT (organisation_id, name) DO NOTHING",
            (
                new_id(),
                organisation_id,
                manifest.name,
                manifest.display_name,
                manifest.type,
                now,
                now,
            ),
        )
        app = yield from find_app(organisation_id, manifest.name)
        if app is None:
            raise Conflict(f"app {manifest.name} was deleted while it was being deployed")
    if app.type != manifest.type:
        raise Conflict(
            f"app {app.name} is a {app.type} app; a {manifest.type} app needs another name"
        )
    yield Execute(
        "UPDATE apps SET latest_version = latest_version + 1, display_name = ?, updated_ms = ? "
        "WHERE id = ?",
        (manifest.display_name, now, app.id),
    )
    app = yield from require_app(organisation_id, app.id)
    version = Version(
        new_id(),
        app.id,
        app.latest_version,
        package.sha256,
        len(package.data),
        manifest.handler,
        manifest.timeout_seconds,
        manifest.memory_mb,
        manifest.entry,
        now,
    )
    yield Execute(
        f"INSERT INTO app_versions ({VERSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            version.id,
            version.app_id,
            version.version,
            version.package_sha256,
            version.package_size,
            version.handler,
            version.timeout_seconds,
            version.memory_mb,
            jsonish.dumps_str(version.config),
            version.created_ms,
        ),
    )
    yield Emit([_routing_event(organisation_id, app.id)])
    return app, version


def find_app(organisation_id: int, name: str) -> Work[App | None]:
    rows = yield Fetch(
        f"SELECT {APP_COLUMNS} FROM apps WHERE organisation_id = ? AND name = ?",
        (organisation_id, name),
    )
    return _app(rows[0]) if rows else None


def require_app(organisation_id: int, app_id: int) -> Work[App]:
    rows = yield Fetch(
        f"SELECT {APP_COLUMNS} FROM apps WHERE id = ? AND organisation_id = ?",
        (app_id, organisation_id),
    )
    if not rows:
        raise NotFound(f"app {app_id} does not exist")
    return _app(rows[0])


def list_apps(organisation_id: int) -> Work[list[App]]:
    rows = yield Fetch(
        f"SELECT {APP_COLUMNS} FROM apps WHERE organisation_id = ? ORDER BY name",
        (organisation_id,),
    )
    return [_app(row) for row in rows]


def get_version(app_id: int, version: int) -> Work[Version]:
    rows = yield Fetch(
        f"SELECT {VERSION_COLUMNS} FROM app_versions WHERE app_id = ? AND version = ?",
        (app_id, version),
    )
    if not rows:
        raise NotFound(f"app {app_id} has no version {version}")
    return _version(rows[0])


def list_versions(app_id: int) -> Work[list[Version]]:
    rows = yield Fetch(
        f"SELECT {VERSION_COLUMNS} FROM app_versions WHERE app_id = ? ORDER BY version DESC",
        (app_id,),
    )
    return [_version(row) for row in rows]


def get_package(sha256: str) -> Work[bytes]:
    rows = yield Fetch("SELECT data FROM app_packages WHERE sha256 = ?", (sha256,))
    if not rows:
        raise NotFound(f"package {sha256} is not stored")
    return bytes(rows[0][0])


def delete_app(organisation_id: int, app_id: int) -> Work[None]:
    """Remove an app with no installations, its versions, and packages no app uses."""
    app = yield from require_app(organisation_id, app_id)
    rows = yield Fetch("SELECT count(*) FROM app_installations WHERE app_id = ?", (app.id,))
    if int(rows[0][0]):
        raise Conflict(f"app {app.name} is installed {rows[0][0]} time(s); uninstall it first")
    yield Execute("DELETE FROM app_versions WHERE app_id = ?", (app.id,))
    yield Execute("DELETE FROM apps WHERE id = ?", (app.id,))
    yield Execute(
        "DELETE FROM app_packages WHERE sha256 NOT IN (SELECT package_sha256 FROM app_versions)"
    )


# ---------------------------------------------------------------- installations


@dataclass(frozen=True)
class InstallRequest:
    organisation_id: int
    app: App
    version: Version
    agent_id: int
    app_key: str
    config: dict[str, Any]
    schedule_next_ms: int | None


def install(request: InstallRequest) -> Work[Installation]:
    """Add the installation with its app agent, schedule, ``deployment_config`` entry and
    its ``on_deployment`` delivery, in one transaction."""
    existing = yield Fetch(
        "SELECT id FROM app_installations WHERE agent_id = ? AND app_key = ?",
        (request.agent_id, request.app_key),
    )
    if existing:
        raise Conflict(
            f"agent {request.agent_id} already has an app installed as {request.app_key!r} "
            f"(installation {existing[0][0]})"
        )
    app_agent = yield from agents.create_agent(
        request.organisation_id, AgentKind.APP, request.app_key
    )
    integration = request.app.type == "INT"
    now = now_ms()
    installation = Installation(
        new_id(),
        request.organisation_id,
        request.app.id,
        request.agent_id,
        app_agent.id,
        request.app_key,
        request.config,
        "fci_" + secrets.token_urlsafe(24) if integration else None,
        secrets.token_hex(4) if integration else None,
        now,
        now,
    )
    yield Execute(
        f"INSERT INTO app_installations ({INSTALLATION_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            installation.id,
            installation.organisation_id,
            installation.app_id,
            installation.agent_id,
            installation.app_agent_id,
            installation.app_key,
            jsonish.dumps_str(installation.deployment_config),
            installation.ingestion_token,
            installation.mini_token,
            now,
            now,
        ),
    )
    yield from _after_config(installation, request.schedule_next_ms)
    yield from enqueue([deployment_delivery(installation)], owner=None, lease_ms=0)
    return installation


def deployment_delivery(installation: Installation) -> Delivery:
    """``on_deployment``, once per installation (its event id says which)."""
    data = {
        "agent_id": str(installation.agent_id),
        "app_id": str(installation.app_id),
        "app_install_id": str(installation.id),
        "organisation_id": str(installation.organisation_id),
    }
    return new_delivery("on_deployment", f"deployment-{installation.id}", data, installation.id)


def update_config(
    installation: Installation, config: dict[str, Any], schedule_next_ms: int | None
) -> Work[Installation]:
    """Replace the deployment config; ingestion tokens are replaced too unless the config
    says ``never_replace_token``."""
    settings = config.get(INGESTION_KEY)
    keep = isinstance(settings, dict) and settings.get("never_replace_token") is True
    ingestion, mini = installation.ingestion_token, installation.mini_token
    if ingestion is not None and not keep:
        ingestion, mini = "fci_" + secrets.token_urlsafe(24), secrets.token_hex(4)
    now = now_ms()
    yield Execute(
        "UPDATE app_installations SET deployment_config = ?, ingestion_token = ?, mini_token = ?,"
        " updated_ms = ? WHERE id = ?",
        (jsonish.dumps_str(config), ingestion, mini, now, installation.id),
    )
    updated = yield from require_installation(installation.organisation_id, installation.id)
    yield from _after_config(updated, schedule_next_ms)
    return updated


def _after_config(installation: Installation, schedule_next_ms: int | None) -> Work[None]:
    yield Execute("DELETE FROM app_schedules WHERE installation_id = ?", (installation.id,))
    if schedule_next_ms is not None:
        yield Execute(
            "INSERT INTO app_schedules (installation_id, expression, next_ms) VALUES (?, ?, ?)",
            (installation.id, installation.schedule, schedule_next_ms),
        )
    # private: an integration's config holds its signing key, and the organisation agent's
    # public channels are readable by every device
    yield from put_channel(installation.agent_id, DEPLOYMENT_CHANNEL, is_private=True)
    entry = {"applications": {installation.app_key: installation.deployment_config}}
    item = AggregateItem(
        installation.agent_id,
        DEPLOYMENT_CHANNEL,
        entry,
        replace_path=f"applications.{installation.app_key}",
    )
    yield from update_aggregates([item])
    yield Emit([_routing_event(installation.organisation_id, installation.id)])


def uninstall(organisation_id: int, installation_id: int) -> Work[Installation]:
    installation = yield from require_installation(organisation_id, installation_id)
    for table in ("app_installations", "app_schedules", "app_deliveries"):
        column = "id" if table == "app_installations" else "installation_id"
        yield Execute(f"DELETE FROM {table} WHERE {column} = ?", (installation.id,))
    patch = {"applications": {installation.app_key: None}}
    yield from update_aggregates([AggregateItem(installation.agent_id, DEPLOYMENT_CHANNEL, patch)])
    yield from agents.revoke_tokens(installation.app_agent_id)
    yield Emit([_routing_event(organisation_id, installation.id)])
    return installation


def _routing_event(organisation_id: int, subject_id: int) -> Event:
    value = {"t": "InstallationChange", "id": str(new_id()), "d": {"id": str(subject_id)}}
    return Event(INSTALLATION_EVENTS, str(organisation_id), value)


def require_installation(organisation_id: int | None, installation_id: int) -> Work[Installation]:
    """The installation (in ``organisation_id``, unless None); 404 otherwise."""
    rows = yield Fetch(
        f"SELECT {INSTALLATION_COLUMNS} FROM app_installations WHERE id = ?", (installation_id,)
    )
    if not rows or (organisation_id is not None and int(rows[0][1]) != organisation_id):
        raise NotFound(f"installation {installation_id} does not exist")
    return _installation(rows[0])


def list_installations(
    organisation_id: int, *, agent_id: int | None = None, app_id: int | None = None
) -> Work[list[Installation]]:
    where, params = ["organisation_id = ?"], [organisation_id]
    if agent_id is not None:
        where.append("agent_id = ?")
        params.append(agent_id)
    if app_id is not None:
        where.append("app_id = ?")
        params.append(app_id)
    rows = yield Fetch(
        f"SELECT {INSTALLATION_COLUMNS} FROM app_installations WHERE {' AND '.join(where)} "
        "ORDER BY id",
        params,
    )
    return [_installation(row) for row in rows]


def agents_with_apps(organisation_id: int, app_keys: Sequence[str]) -> Work[set[int]]:
    """The agents that have an app installed under one of ``app_keys``."""
    if not app_keys:
        return set()
    rows = yield Fetch(
        "SELECT agent_id FROM app_installations WHERE organisation_id = ? "
        f"AND app_key IN ({placeholders(len(app_keys))})",
        (organisation_id, *app_keys),
    )
    return {int(row[0]) for row in rows}


@dataclass(frozen=True)
class Route:
    """What the dispatcher needs about one installation to hand it events."""

    installation: Installation
    app: App
    version: Version


def load_routes(installation_ids: Sequence[int] | None = None) -> Work[list[Route]]:
    """Every installation (or those given) with its app and the app's latest version."""
    where = ""
    params: list[Any] = []
    if installation_ids is not None:
        if not installation_ids:
            return []
        where = f"WHERE i.id IN ({placeholders(len(installation_ids))})"
        params = list(installation_ids)
    columns = ", ".join(f"i.{c.strip()}" for c in INSTALLATION_COLUMNS.split(","))
    app_columns = ", ".join(f"a.{c.strip()}" for c in APP_COLUMNS.split(","))
    version_columns = ", ".join(f"v.{c.strip()}" for c in VERSION_COLUMNS.split(","))
    rows = yield Fetch(
        f"SELECT {columns}, {app_columns}, {version_columns} FROM app_installations i "
        "JOIN apps a ON a.id = i.app_id "
        "JOIN app_versions v ON v.app_id = a.id AND v.version = a.latest_version "
        f"{where} ORDER BY i.id",
        params,
    )
    return [Route(_installation(row[:11]), _app(row[11:19]), _version(row[19:])) for row in rows]


def routing_version() -> Work[tuple[int, ...]]:
    """Changes whenever an installation is added, changed or removed, or an app gets a
    new version: a dispatcher compares it before routing a batch of events, so that its
    routes are never older than the events (the ``app_installations`` bus events that
    also say so reach one dispatcher of a group, and not in order with channel events)."""
    rows = yield Fetch(
        "SELECT (SELECT count(*) FROM app_installations), "
        "(SELECT coalesce(sum(updated_ms), 0) FROM app_installations), "
        "(SELECT coalesce(sum(latest_version), 0) FROM apps)"
    )
    return tuple(int(value) for value in rows[0])


# ---------------------------------------------------------------- deliveries


def new_delivery(
    op: str, event_id: str, data: dict[str, Any], installation_id: int = 0
) -> Delivery:
    return Delivery(new_id(), installation_id, op, event_id, data, 0, now_ms())


def enqueue(
    deliveries: Sequence[Delivery], *, owner: str | None, lease_ms: int
) -> Work[list[Delivery]]:
    """Store deliveries (claimed by ``owner`` until ``lease_ms``, or unclaimed); returns
    the ones that were new — a delivery for the same installation, handler and event id
    already waiting is not added twice."""
    added = []
    now = now_ms()
    for d in deliveries:
        count = yield Execute(
            f"INSERT INTO app_deliveries ({DELIVERY_COLUMNS}, owner, lease_ms, created_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (installation_id, op, event_id) DO NOTHING",
            (
                d.id,
                d.installation_id,
                d.op,
                d.event_id,
                jsonish.dumps_str(d.data),
                d.attempt,
                d.due_ms or now,
                d.last_error,
                owner,
                lease_ms,
                now,
            ),
        )
        if count:
            added.append(d)
    return added


def claim_due(owner: str, now: int, lease_ms: int, limit: int) -> Work[list[Delivery]]:
    """Deliveries that are due and unclaimed (or whose claim lapsed), now ``owner``'s."""
    rows = yield Fetch(
        f"SELECT {DELIVERY_COLUMNS} FROM app_deliveries WHERE due_ms <= ? AND lease_ms < ? "
        "ORDER BY due_ms, id LIMIT ?",
        (now, now, limit),
    )
    claimed = []
    for row in rows:
        count = yield Execute(
            "UPDATE app_deliveries SET owner = ?, lease_ms = ? WHERE id = ? AND lease_ms < ?",
            (owner, lease_ms, row[0], now),
        )
        if count:
            claimed.append(_delivery(row))
    return claimed


def renew(owner: str, delivery_ids: Sequence[int], lease_ms: int) -> Work[int]:
    """Extend ``owner``'s claim on the deliveries it holds."""
    renewed = 0
    ids = list(delivery_ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        count: int = yield Execute(
            f"UPDATE app_deliveries SET lease_ms = ? WHERE owner = ? "
            f"AND id IN ({placeholders(len(chunk))})",
            (lease_ms, owner, *chunk),
        )
        renewed += count
    return renewed


def release(owner: str) -> Work[int]:
    """Give up every claim of ``owner`` (a dispatcher stopping)."""
    count: int = yield Execute(
        "UPDATE app_deliveries SET owner = NULL, lease_ms = 0 WHERE owner = ?", (owner,)
    )
    return count


def next_due_ms() -> Work[int | None]:
    rows = yield Fetch("SELECT min(due_ms) FROM app_deliveries WHERE lease_ms = 0")
    return None if rows[0][0] is None else int(rows[0][0])


def delivery_count() -> Work[int]:
    rows = yield Fetch("SELECT count(*) FROM app_deliveries")
    return int(rows[0][0])


@dataclass(frozen=True)
class Outcome:
    """What became of one attempt: the log row, and the delivery's fate."""

    delivery: Delivery
    invocation: Invocation
    app_agent_id: int
    retry_at_ms: int | None = None  # set: try again then; None: done or dead
    dead: bool = False


def record(outcome: Outcome) -> Work[None]:
    """Log the attempt, publish its summary, and delete, reschedule or bury the delivery."""
    inv, delivery = outcome.invocation, outcome.delivery
    yield Execute(
        f"INSERT INTO app_invocations ({INVOCATION_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            inv.id,
            inv.installation_id,
            inv.app_id,
            inv.version,
            inv.agent_id,
            inv.op,
            inv.event_id,
            inv.attempt,
            inv.status.value,
            inv.started_us,
            inv.duration_ms,
            _text(inv.error),
            _text(inv.logs),
            jsonish.dumps_str(inv.summary),
            inv.created_ms,
        ),
    )
    message = PublishItem(
        inv.agent_id, summary_channel(inv.app_id), inv.summary, outcome.app_agent_id
    )
    yield from publish([message])
    if outcome.retry_at_ms is not None:
        yield Execute(
            "UPDATE app_deliveries SET attempt = ?, due_ms = ?, owner = NULL, lease_ms = 0, "
            "last_error = ? WHERE id = ?",
            (inv.attempt, outcome.retry_at_ms, inv.error, delivery.id),
        )
        return
    if outcome.dead:
        yield Execute(
            f"INSERT INTO app_dead_letters ({DEAD_LETTER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                new_id(),
                delivery.installation_id,
                delivery.op,
                delivery.event_id,
                jsonish.dumps_str(delivery.data),
                inv.attempt,
                _text(inv.error) or inv.status.value,
                inv.created_ms,
            ),
        )
    yield Execute("DELETE FROM app_deliveries WHERE id = ?", (delivery.id,))


def _text(value: str | None) -> str | None:
    """Text PostgreSQL can store: no NUL characters (an app's output may hold anything)."""
    return None if value is None else value.replace("\x00", "\ufffd")


def drop_delivery(delivery_id: int) -> Work[None]:
    """Forget a delivery whose installation is gone."""
    yield Execute("DELETE FROM app_deliveries WHERE id = ?", (delivery_id,))


# ---------------------------------------------------------------- invocation log


def list_invocations(
    installation_id: int,
    *,
    after_id: int | None = None,
    before_id: int | None = None,
    event_id: str | None = None,
    limit: int = 50,
) -> Work[list[Invocation]]:
    """Newest first, strictly between ``after_id`` and ``before_id``."""
    where = "installation_id = ? AND id > ? AND id < ?"
    params: list[Any] = [installation_id, after_id or 0, before_id or 2**63 - 1]
    if event_id is not None:
        where += " AND event_id = ?"
        params.append(event_id)
    rows = yield Fetch(
        f"SELECT {INVOCATION_COLUMNS} FROM app_invocations WHERE {where} ORDER BY id DESC LIMIT ?",
        (*params, limit),
    )
    return [_invocation(row) for row in rows]


def prune(before_ms: int) -> Work[int]:
    """Forget invocation log rows and dead letters older than ``before_ms``, and expired
    invocation tokens."""
    logs: int = yield Execute("DELETE FROM app_invocations WHERE created_ms < ?", (before_ms,))
    yield Execute("DELETE FROM app_dead_letters WHERE created_ms < ?", (before_ms,))
    yield Execute(
        "DELETE FROM tokens WHERE role = ? AND expires_ms < ?",
        (Role.APP_INVOCATION.value, now_ms()),
    )
    return logs


# ---------------------------------------------------------------- dead letters


def list_dead_letters(installation_id: int, limit: int = 100) -> Work[list[DeadLetter]]:
    rows = yield Fetch(
        f"SELECT {DEAD_LETTER_COLUMNS} FROM app_dead_letters WHERE installation_id = ? "
        "ORDER BY id DESC LIMIT ?",
        (installation_id, limit),
    )
    return [_dead_letter(row) for row in rows]


def require_dead_letter(installation_id: int, dead_letter_id: int) -> Work[DeadLetter]:
    rows = yield Fetch(
        f"SELECT {DEAD_LETTER_COLUMNS} FROM app_dead_letters WHERE id = ? AND installation_id = ?",
        (dead_letter_id, installation_id),
    )
    if not rows:
        raise NotFound(f"dead letter {dead_letter_id} does not exist")
    return _dead_letter(rows[0])


def retry_dead_letter(installation_id: int, dead_letter_id: int) -> Work[Delivery]:
    """Queue a dead letter's event again (with fresh attempts) and remove the dead letter."""
    letter = yield from require_dead_letter(installation_id, dead_letter_id)
    delivery = new_delivery(letter.op, letter.event_id, letter.data, installation_id)
    added = yield from enqueue([delivery], owner=None, lease_ms=0)
    if not added:
        raise Conflict(f"event {letter.event_id} is already waiting for this installation")
    yield Execute("DELETE FROM app_dead_letters WHERE id = ?", (letter.id,))
    return delivery


def delete_dead_letter(installation_id: int, dead_letter_id: int) -> Work[None]:
    letter = yield from require_dead_letter(installation_id, dead_letter_id)
    yield Execute("DELETE FROM app_dead_letters WHERE id = ?", (letter.id,))


# ---------------------------------------------------------------- schedules


@dataclass(frozen=True)
class DueSchedule:
    installation_id: int
    expression: str
    next_ms: int
    organisation_id: int
    agent_id: int


def due_schedules(now: int, limit: int = 500) -> Work[list[DueSchedule]]:
    """Schedules due at ``now``, earliest first."""
    rows = yield Fetch(
        "SELECT s.installation_id, s.expression, s.next_ms, i.organisation_id, i.agent_id "
        "FROM app_schedules s JOIN app_installations i ON i.id = s.installation_id "
        "WHERE s.next_ms IS NOT NULL AND s.next_ms <= ? ORDER BY s.next_ms LIMIT ?",
        (now, limit),
    )
    return [DueSchedule(int(a), str(b), int(c), int(d), int(e)) for a, b, c, d, e in rows]


def fire_schedule(
    installation_id: int, fired_ms: int, next_ms: int | None, delivery: Delivery
) -> Work[bool]:
    """Move the schedule from ``fired_ms`` to ``next_ms`` and queue its delivery, unless
    another scheduler already did (then nothing changes)."""
    count = yield Execute(
        "UPDATE app_schedules SET next_ms = ? WHERE installation_id = ? AND next_ms = ?",
        (next_ms, installation_id, fired_ms),
    )
    if not count:
        return False
    yield from enqueue([delivery], owner=None, lease_ms=0)
    return True


def next_schedule_ms() -> Work[int | None]:
    rows = yield Fetch("SELECT min(next_ms) FROM app_schedules WHERE next_ms IS NOT NULL")
    return None if rows[0][0] is None else int(rows[0][0])
