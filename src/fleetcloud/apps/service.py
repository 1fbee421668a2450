"""The app runtime's services for ``fleetcloud serve``: the dispatcher and the scheduler."""

from __future__ import annotations

import functools
from collections.abc import Collection
from urllib.parse import urlsplit, urlunsplit

from fleetcloud.api.app import Service
from fleetcloud.apps import dispatcher, scheduler
from fleetcloud.apps.settings import AppsSettings
from fleetcloud.core.errors import ConfigError

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


def services(
    server_url: str | None,
    settings: AppsSettings | None = None,
    *,
    roles: Collection[str] = ("dispatcher", "scheduler"),
) -> list[Service]:
    """The dispatcher (bus → deliveries → workers) and the scheduler, as far as ``roles``
    ask for them. ``server_url`` is this process's API, if it serves one: apps are given
    it unless ``FLEETCLOUD_APPS_API_URL`` says otherwise, which a dispatcher without the
    API needs."""
    settings = settings or AppsSettings()
    found: list[Service] = []
    if "dispatcher" in roles:
        api_url = settings.api_url or (local_url(server_url) if server_url else None)
        if api_url is None:
            raise ConfigError(
                "a dispatcher without the api role needs FLEETCLOUD_APPS_API_URL: the data "
                "API URL its apps talk to"
            )
        found.append(functools.partial(dispatcher.running, api_url=api_url, settings=settings))
    if "scheduler" in roles:
        found.append(functools.partial(scheduler.running, settings=settings))
    return found
