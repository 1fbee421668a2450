"""The app runtime's services for ``fleetcloud serve``: the dispatcher and the scheduler."""

from __future__ import annotations

import functools
from urllib.parse import urlsplit, urlunsplit

from fleetcloud.api.app import Service
from fleetcloud.apps import dispatcher, scheduler
from fleetcloud.apps.settings import AppsSettings

WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "[::]": "[::1]"}  # noqa: S104 - mapped away


def local_url(server_url: str) -> str:
    """The server's URL as a worker on this machine reaches it (not ``0.0.0.0``)."""
    parts = urlsplit(server_url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    host = WILDCARDS.get(host, host)
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme or "http", netloc, parts.path, "", ""))


def services(server_url: str, settings: AppsSettings | None = None) -> list[Service]:
    """The dispatcher (bus → deliveries → workers) and the scheduler."""
    settings = settings or AppsSettings()
    api_url = settings.api_url or local_url(server_url)
    return [
        functools.partial(dispatcher.running, api_url=api_url, settings=settings),
        functools.partial(scheduler.running, settings=settings),
    ]
