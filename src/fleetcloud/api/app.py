"""The ASGI application: routes, error handling, limits, metrics."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from fleetcloud import console
from fleetcloud.api import agents, apps, batch, channels, commands, gateway, jobs
from fleetcloud.api.http import JSONResponse
from fleetcloud.api.metrics import MetricsMiddleware, metrics_endpoint
from fleetcloud.api.openapi import docs_page, openapi_json
from fleetcloud.core.errors import ApiError, FleetError
from fleetcloud.platform import Platform

log = logging.getLogger("fleetcloud.api")

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


async def healthz(request: Request) -> Response:
    platform: Platform = request.app.state.platform
    version = await platform.store.schema_version()
    return JSONResponse({"status": "ok", "schema_version": version, "bus": platform.bus.name})


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.to_json(), status_code=exc.status)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail
    allowed = {k.lower(): v for k, v in (exc.headers or {}).items()}.get("allow")
    if exc.status_code == 405 and allowed:
        message = f"{request.method} is not supported here; use {allowed}"
    body = {"error": "HTTPException", "message": message, "status": exc.status_code}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def fleet_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FleetError)
    log.warning("request failed: %s", exc.message, extra={"path": request.url.path})
    status = 503 if exc.retriable else 500
    body = {"error": type(exc).__name__, "message": exc.message, "status": status}
    return JSONResponse(body, status_code=status)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error", extra={"path": request.url.path})
    body = {"error": "InternalError", "message": "an unexpected error occurred", "status": 500}
    return JSONResponse(body, status_code=500)


def routes() -> list[BaseRoute]:
    return [
        Route("/healthz", healthz),
        Route("/metrics", metrics_endpoint),
        Route("/openapi.json", openapi_json),
        Route("/docs", docs_page),
        Route("/api/me", agents.whoami),
        Route("/api/agents", agents.list_agents, methods=["GET"]),
        Route("/api/agents", agents.create_agent, methods=["POST"]),
        Route("/api/agents/messages", batch.post_messages, methods=["POST"]),
        Route("/api/agents/aggregates", batch.patch_aggregates, methods=["PATCH"]),
        Route("/api/agents/{agent_id}/channels", channels.list_channels, methods=["GET"]),
        Route(
            "/api/agents/{agent_id}/channels/{rest:path}",
            channels.channel_path,
            methods=ALL_METHODS,
        ),
        WebSocketRoute("/api/gateway", gateway.endpoint),
        *jobs.routes(),
        *commands.routes(),
        *apps.routes(),
        *console.routes(),  # the web console: pages at /, docs/console.md
    ]


Service = Callable[[Platform], contextlib.AbstractAsyncContextManager[Any]]


def create_app(
    platform: Platform, *, manage_platform: bool = True, services: Sequence[Service] = ()
) -> Starlette:
    """The ASGI app for ``platform``. With ``manage_platform`` its lifespan starts and
    stops the platform (store and bus) too; ``services`` (the demo, connectors …) run
    inside that lifespan, started in order and stopped in reverse."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if manage_platform:
                await platform.start()
                stack.push_async_callback(platform.close)
            stack.push_async_callback(gateway.close_all, app)
            for service in services:
                await stack.enter_async_context(service(platform))
            yield

    app = Starlette(
        routes=routes(),
        middleware=[Middleware(MetricsMiddleware, metrics=platform.metrics)],
        exception_handlers={
            ApiError: api_error,
            HTTPException: http_error,
            FleetError: fleet_error,
            Exception: unexpected_error,
        },
        lifespan=lifespan,
    )
    app.state.platform = platform
    return app
