"""One delivery, one attempt: the envelope, the token, the worker, and what became of it.

For each attempt the runtime

1. finds the app version's package on disk (extracting it from the store the first time);
2. mints a short-lived ``APP_INVOCATION`` token for the installation's app agent, scoped
   to the agent it is installed on plus whatever ``ExtendedPermissionsConfig`` grants, and
   labelled with the channel that invoked it (``apps.guard``), and reads the agent's
   reserved channels for the envelope's ``upgrade`` — both in one store round trip;
3. runs ``handler(envelope, context)`` in a worker (``apps.pool``);
4. turns the result into an ``Outcome``: done, retry at a later time (with exponential
   backoff), or dead letter after the last retry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetcloud.apps import packaging, repo
from fleetcloud.apps.guard import RULES, InvokedBy, token_label
from fleetcloud.apps.model import Delivery, Installation, Invocation, Status, Version
from fleetcloud.apps.pool import Result, VersionSpec, WorkerPool
from fleetcloud.apps.repo import Outcome, Route
from fleetcloud.apps.settings import AppsSettings
from fleetcloud.core.errors import FleetError, NotFound
from fleetcloud.core.ids import new_id
from fleetcloud.core.types import AgentKind, Principal, Role
from fleetcloud.jobs.devices import group_devices
from fleetcloud.sdk.envelope import build_envelope
from fleetcloud.store import agents
from fleetcloud.store.agents import now_ms
from fleetcloud.store.base import Store
from fleetcloud.store.channels import load_channels
from fleetcloud.store.ops import Work

log = logging.getLogger("fleetcloud.apps.runtime")

RESERVED = {
    "ui_state": "ui_state",
    "ui_cmds": "ui_cmds",
    "tag_values": "tag_values",
    "connection_data": "doover_connection",
}
SCOPE_SECONDS = 10.0
TOKEN_CACHE_LIMIT = 10_000


def invoked_by(installation: Installation, delivery: Delivery) -> InvokedBy | None:
    """The channel whose message or aggregate change this delivery is, if any."""
    if delivery.op == "on_message_create":
        channel = delivery.data.get("message", {}).get("channel", {})
    elif delivery.op == "on_aggregate_update":
        channel = delivery.data.get("channel", {})
    else:
        return None
    return InvokedBy(int(channel["agent_id"]), str(channel["name"]), installation.app_key)


def backoff_ms(settings: AppsSettings, attempt: int) -> int:
    """The delay before retry ``attempt`` (1 for the first retry): doubling, capped."""
    delay = settings.backoff_seconds * 2 ** max(attempt - 1, 0)
    return int(min(delay, settings.backoff_max_seconds) * 1000)


# ---------------------------------------------------------------- store work


def granted_agents(installation: Installation) -> Work[frozenset[int]]:
    """The agents an installation's token may touch: its own, and what its
    ``ExtendedPermissionsConfig`` grants (devices by id or name, groups, devices with
    given apps installed, or every device)."""
    granted = {installation.agent_id}
    permissions = installation.permissions
    organisation = installation.organisation_id
    devices = yield from agents.list_agents(organisation, AgentKind.DEVICE)
    wanted = {str(ref) for ref in _strings(permissions.get("devices"))}
    granted.update(d.id for d in devices if str(d.id) in wanted or d.name in wanted)
    if permissions.get("all_devices") is True:
        granted.update(d.id for d in devices)
    for group in _strings(permissions.get("groups")):
        try:
            granted.update((yield from group_devices(organisation, [group])))
        except NotFound:
            log.warning("installation %s: no device group %r", installation.id, group)
    keys = _strings(permissions.get("apps_installed"))
    granted.update((yield from repo.agents_with_apps(organisation, keys)))
    return frozenset(granted)


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def prepare(
    installation: Installation, scopes: frozenset[int], label: str, ttl_seconds: float
) -> Work[tuple[str, dict[str, Any]]]:
    """Mint the invocation's token and read the agent's reserved channels."""
    principal = Principal(
        installation.app_agent_id, installation.organisation_id, Role.APP_INVOCATION, scopes
    )
    token = yield from agents.create_token(principal, label=label, ttl_seconds=ttl_seconds)
    state = yield from reserved_state(installation)
    return token, state


def reserved_state(installation: Installation) -> Work[dict[str, Any]]:
    """The current aggregates of the agent's reserved channels, for the upgrade."""
    found = yield from load_channels((installation.agent_id, n) for n in RESERVED.values())
    state = {}
    for key, name in RESERVED.items():
        channel = found.get((installation.agent_id, name))
        aggregate = channel.aggregate if channel is not None else None
        state[key] = aggregate if isinstance(aggregate, dict) else {}
    return state


# ---------------------------------------------------------------- the runtime


@dataclass
class _Scopes:
    agents: frozenset[int]
    until: float


class Runtime:
    def __init__(
        self, store: Store, pool: WorkerPool, settings: AppsSettings, api_url: str
    ) -> None:
        self.store = store
        self.pool = pool
        self.settings = settings
        self.api_url = api_url.rstrip("/")
        self._roots: dict[str, Path] = {}
        self._extracting: dict[str, asyncio.Lock] = {}
        self._scopes: dict[int, _Scopes] = {}
        self._tokens: dict[tuple[int, InvokedBy | None, frozenset[int]], tuple[str, float]] = {}

    async def attempt(self, route: Route, delivery: Delivery) -> Outcome:
        """Run one attempt of ``delivery`` and say what should become of it."""
        try:
            result = await self._invoke(route, delivery)
        except FleetError as exc:
            log.warning("could not start invocation of %s: %s", route.installation.id, exc)
            result = _not_started(f"could not start the invocation: {exc.message}")
        except Exception as exc:  # a bad stored event must not come back forever: retry, bury
            log.exception("could not start invocation of %s", route.installation.id)
            result = _not_started(f"could not start the invocation: {type(exc).__name__}: {exc}")
        return self.outcome(route, delivery, result)

    async def _invoke(self, route: Route, delivery: Delivery) -> Result:
        installation, app = route.installation, route.app
        spec = await self.spec(route.version)
        scopes = await self.scopes(installation)
        source = invoked_by(installation, delivery)
        token, state = await self._token_and_state(installation, scopes, source, spec)
        upgrade = {
            "agent_id": str(installation.agent_id),
            "organisation_id": str(installation.organisation_id),
            "app_key": installation.app_key,
            "deployment_config": installation.deployment_config,
            **state,
            "token": token,
            "api_url": self.api_url,
            "app_id": str(app.id),
            "installation_id": str(installation.id),
            "display_name": app.display_name,
        }
        fields = {**delivery.data, "event_id": delivery.event_id}
        envelope = build_envelope(delivery.op, fields, upgrade, token)
        return await self.pool.invoke(spec, envelope, self.api_url)

    async def _token_and_state(
        self,
        installation: Installation,
        scopes: frozenset[int],
        source: InvokedBy | None,
        spec: VersionSpec,
    ) -> tuple[str, dict[str, Any]]:
        """A token for this installation and invoking channel — minted, or one minted in
        the last ``token_reuse_seconds`` with the same scopes — and the reserved channels."""
        key = (installation.id, source, scopes)
        kept = self._tokens.get(key)
        now = time.monotonic()
        if kept is not None and kept[1] > now:
            return kept[0], await self.store.read(reserved_state(installation))
        reuse = self.settings.token_reuse_seconds
        ttl = spec.timeout_seconds + self.settings.token_grace_seconds + reuse
        label = token_label(installation.id, installation.app_key, source)
        token, state = await self.store.write(prepare(installation, scopes, label, ttl))
        RULES.remember(token, source)
        if reuse > 0:
            if len(self._tokens) > TOKEN_CACHE_LIMIT:
                self._tokens.clear()
            self._tokens[key] = (token, now + reuse)
        return token, state

    async def spec(self, version: Version) -> VersionSpec:
        root = self._roots.get(version.package_sha256)
        if root is None:
            root = await self._extract(version.package_sha256)
        return VersionSpec(
            version.id, root, version.handler, version.timeout_seconds, version.memory_mb
        )

    async def _extract(self, sha256: str) -> Path:
        lock = self._extracting.setdefault(sha256, asyncio.Lock())
        async with lock:
            root = self._roots.get(sha256)
            if root is None:
                target = self.settings.cache_dir / "packages" / sha256
                if not target.is_dir():
                    data = await self.store.read(repo.get_package(sha256))
                    await asyncio.to_thread(
                        packaging.extract, self.settings.cache_dir / "packages", sha256, data
                    )
                root = self._roots[sha256] = target
        return root

    async def scopes(self, installation: Installation) -> frozenset[int]:
        cached = self._scopes.get(installation.id)
        now = time.monotonic()
        if cached is not None and cached.until > now:
            return cached.agents
        granted = await self.store.read(granted_agents(installation))
        self._scopes[installation.id] = _Scopes(granted, now + SCOPE_SECONDS)
        return granted

    def clear_scopes(self) -> None:
        self._scopes.clear()

    def outcome(self, route: Route, delivery: Delivery, result: Result) -> Outcome:
        attempt = delivery.attempt + 1
        retry_at: int | None = None
        if not result.status.succeeded and attempt <= self.settings.retries:
            retry_at = now_ms() + backoff_ms(self.settings, attempt)
        dead = not result.status.succeeded and retry_at is None
        invocation_id = new_id()
        summary = {
            **(result.summary or {}),
            "status": result.status.value,
            "error": result.error,
            "reason": (result.summary or {}).get("reason"),
            "handler": delivery.op,
            "event_id": delivery.event_id,
            "attempt": attempt,
            "invocation_id": str(invocation_id),
            "installation_id": str(route.installation.id),
            "app_id": str(route.app.id),
            "version": route.version.version,
            "duration_ms": result.duration_ms,
            "cold_start": result.cold,
        }
        invocation = Invocation(
            id=invocation_id,
            installation_id=route.installation.id,
            app_id=route.app.id,
            version=route.version.version,
            agent_id=route.installation.agent_id,
            op=delivery.op,
            event_id=delivery.event_id,
            attempt=attempt,
            status=result.status,
            started_us=result.started_us,
            duration_ms=result.duration_ms,
            error=result.error,
            logs=result.logs,
            summary=summary,
            created_ms=now_ms(),
        )
        return Outcome(delivery, invocation, route.installation.app_agent_id, retry_at, dead)


def _not_started(error: str) -> Result:
    return Result(Status.FAILED, error, "", int(time.time() * 1_000_000), 0.0)
