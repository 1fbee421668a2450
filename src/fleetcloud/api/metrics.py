"""Prometheus metrics, served at ``/metrics``."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fleetcloud_http_requests",
            "HTTP requests handled",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fleetcloud_http_request_seconds",
            "HTTP request latency",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.messages_published = Counter(
            "fleetcloud_messages_published", "channel messages written", registry=self.registry
        )
        self.bus_lag = Gauge(
            "fleetcloud_bus_lag",
            "outbox rows not yet consumed, per consumer group",
            ["group"],
            registry=self.registry,
        )
        self.gateway_connections = Gauge(
            "fleetcloud_gateway_connections", "open websocket connections", registry=self.registry
        )


class MetricsMiddleware:
    """Counts and times every HTTP request, labelled by the endpoint that handled it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def remember_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, remember_status)
        finally:
            endpoint: Any = scope.get("endpoint")
            name = getattr(endpoint, "__name__", "unmatched")
            self.metrics.requests.labels(name, scope["method"], str(status)).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - started)


async def metrics_endpoint(request: Request) -> Response:
    platform = request.app.state.platform
    for group, lag in (await platform.bus.lag()).items():
        platform.metrics.bus_lag.labels(group).set(lag)
    return Response(generate_latest(platform.metrics.registry), media_type=CONTENT_TYPE_LATEST)
