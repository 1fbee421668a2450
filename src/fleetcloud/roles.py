"""Roles: which parts of fleetcloud one ``fleetcloud serve`` process runs.

=============  =====================================================================
``api``        the HTTP API, the websocket gateway and the web console (and the demo)
``dispatcher`` the app dispatcher: channel events → deliveries → worker processes
``scheduler``  app schedules and log pruning; job timeouts and rollouts
``mqtt``       the MQTT connector, when a broker URL is given
``coap``       the CoAP connector, when a bind address is given
=============  =====================================================================

A process runs every role unless told otherwise. Several processes on one PostgreSQL
database and one Kafka share the work: dispatchers form one Kafka consumer group (each
event is routed by one of them) and claim deliveries with leases; schedulers move each
schedule's next fire time with a compare-and-set, so a fire is queued once; job
timeouts and rollouts are versioned updates. A process without ``api`` still listens on
its port, for ``/healthz`` and ``/metrics`` only, so that it can be supervised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Sequence

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fleetcloud.api.app import Service
from fleetcloud.api.http import JSONResponse
from fleetcloud.api.metrics import MetricsMiddleware, metrics_endpoint
from fleetcloud.core.errors import ConfigError
from fleetcloud.platform import Platform

log = logging.getLogger("fleetcloud.roles")

ROLES = ("api", "dispatcher", "scheduler", "mqtt", "coap")
ALL = frozenset(ROLES)


def parse_roles(values: Iterable[str]) -> frozenset[str]:
    """Roles from ``--role`` values, each one name or several separated by commas
    (nothing given: every role)."""
    names = {part.strip().lower() for value in values for part in value.split(",")}
    names.discard("")
    unknown = sorted(names - ALL)
    if unknown:
        raise ConfigError(f"unknown role {', '.join(unknown)}: choose from {', '.join(ROLES)}")
    return frozenset(names) or ALL


def describe(roles: Iterable[str]) -> list[str]:
    """The roles in their documented order."""
    return [role for role in ROLES if role in roles]


def check_bus(roles: frozenset[str], bus_url: str) -> None:
    """Warn that the in-process bus does not carry events between processes."""
    if roles != ALL and bus_url in ("", "memory", "memory://"):
        log.warning(
            "roles %s on the in-process bus: events reach only the roles this process runs; "
            "run roles in separate processes with --bus kafka://… and PostgreSQL",
            ",".join(describe(roles)),
        )


@contextlib.asynccontextmanager
async def job_polls(platform: Platform, interval: float = 1.0) -> AsyncIterator[None]:
    """For an ``api`` process without ``scheduler`` (whose jobs loop does this where it
    runs): wake the jobs API's parked long-polls when another process queued work for
    their device, and answer them all when the server stops."""
    from fleetcloud.jobs.service import jobs_service

    service = jobs_service(platform)
    service.closing = False

    async def sweep() -> None:
        while True:
            try:
                await service.sweep()
            except Exception:
                log.exception("jobs: waking long-polls failed; trying again")
            await asyncio.sleep(interval)

    async with asyncio.TaskGroup() as tasks:
        task = tasks.create_task(sweep(), name="fleetcloud-job-polls")
        try:
            yield
        finally:
            service.close()
            task.cancel()


# ---------------------------------------------------------------- a process without the API


async def healthz(request: Request) -> Response:
    platform: Platform = request.app.state.platform
    version = await platform.store.schema_version()
    body = {
        "status": "ok",
        "schema_version": version,
        "bus": platform.bus.name,
        "roles": request.app.state.roles,
    }
    return JSONResponse(body)


def health_app(platform: Platform, roles: Iterable[str], services: Sequence[Service]) -> Starlette:
    """What a process without the ``api`` role serves: ``/healthz`` and ``/metrics``,
    with the platform and ``services`` running in its lifespan (started in order,
    stopped in reverse)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            await platform.start()
            stack.push_async_callback(platform.close)
            for service in services:
                await stack.enter_async_context(service(platform))
            yield

    app = Starlette(
        routes=[Route("/healthz", healthz), Route("/metrics", metrics_endpoint)],
        middleware=[Middleware(MetricsMiddleware, metrics=platform.metrics)],
        lifespan=lifespan,
    )
    app.state.platform = platform
    app.state.roles = describe(roles)
    return app
