"""The invocation envelope: what the runtime hands ``handler(event, context)``.

::

    {"op": "on_message_create",                  # the handler to call
     "d": {...event fields...,                   # see fleetcloud.sdk.events
           "event_id": "…",                      # stable per delivery (idempotency)
           "upgrade": {"agent_id", "organisation_id", "app_key",
                       "deployment_config",      # this installation's config values
                       "ui_state", "ui_cmds", "tag_values", "connection_data",
                       "token",                  # short-lived, narrowly scoped
                       "api_url"?,               # where the data API is
                       "app_id"?, "installation_id"?, "display_name"?}},
     "token": "…"}

The ``upgrade`` block carries the current aggregates of the agent's reserved channels
(``ui_state``, ``ui_cmds``, ``tag_values``, ``doover_connection``) so an app starts with no
round trip. ``deployment_config`` is this installation's part; given the whole channel
(``{"applications": {app_key: …}}``) the SDK picks the app's part itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetcloud.sdk.errors import InvalidEnvelope
from fleetcloud.sdk.events import HANDLER_NAMES, as_id

API_URL_ENV = "FLEETCLOUD_API_URL"


@dataclass(slots=True)
class Upgrade:
    """What the app needs to start: who it is, its config, and its reserved channels."""

    agent_id: int
    app_key: str
    organisation_id: int | None = None
    deployment_config: dict[str, Any] = field(default_factory=dict)
    ui_state: dict[str, Any] = field(default_factory=dict)
    ui_cmds: dict[str, Any] = field(default_factory=dict)
    tag_values: dict[str, Any] = field(default_factory=dict)
    connection_data: dict[str, Any] = field(default_factory=dict)
    token: str | None = None
    api_url: str | None = None
    app_id: int | None = None
    installation_id: int | None = None
    display_name: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Upgrade:
        agent_id = as_id(data.get("agent_id"))
        app_key = data.get("app_key")
        if agent_id is None:
            raise InvalidEnvelope("d.upgrade.agent_id is missing")
        if not isinstance(app_key, str) or not app_key:
            raise InvalidEnvelope("d.upgrade.app_key must be a non-empty string")
        return cls(
            agent_id=agent_id,
            app_key=app_key,
            organisation_id=as_id(data.get("organisation_id")),
            deployment_config=_own_config(_mapping(data, "deployment_config"), app_key),
            ui_state=_mapping(data, "ui_state"),
            ui_cmds=_mapping(data, "ui_cmds"),
            tag_values=_mapping(data, "tag_values"),
            connection_data=_mapping(data, "connection_data"),
            token=_text(data.get("token")),
            api_url=_text(data.get("api_url")),
            app_id=as_id(data.get("app_id")),
            installation_id=as_id(data.get("installation_id")),
            display_name=_text(data.get("display_name")),
        )


@dataclass(slots=True)
class Invocation:
    op: str
    data: dict[str, Any]
    upgrade: Upgrade
    token: str | None

    @property
    def api_token(self) -> str:
        """The token for the data API: the upgrade's scoped one, else the envelope's."""
        token = self.upgrade.token or self.token
        if not token:
            raise InvalidEnvelope("the envelope carries no token (d.upgrade.token or token)")
        return token

    @classmethod
    def from_envelope(cls, envelope: Any) -> Invocation:
        if not isinstance(envelope, Mapping):
            raise InvalidEnvelope(f"the event must be a JSON object, not {type(envelope).__name__}")
        op = envelope.get("op")
        if op not in HANDLER_NAMES:
            raise InvalidEnvelope(f"op {op!r} is not one of {', '.join(HANDLER_NAMES)}")
        data = envelope.get("d")
        if not isinstance(data, Mapping):
            raise InvalidEnvelope("the envelope's d must be a JSON object")
        upgrade = data.get("upgrade")
        if not isinstance(upgrade, Mapping):
            raise InvalidEnvelope("d.upgrade is missing: the runtime must send it")
        return cls(str(op), dict(data), Upgrade.from_dict(upgrade), _text(envelope.get("token")))


def resolve_api_url(context_url: str | None, upgrade: Upgrade) -> str:
    """Where the data API is: the context's, else ``d.upgrade.api_url``, else the env var."""
    url = context_url or upgrade.api_url or os.environ.get(API_URL_ENV)
    if not url:
        raise InvalidEnvelope(
            f"no data API URL: set d.upgrade.api_url in the envelope or {API_URL_ENV}"
        )
    return url.rstrip("/")


def build_envelope(
    op: str, data: Mapping[str, Any], upgrade: Mapping[str, Any], token: str | None = None
) -> dict[str, Any]:
    """An envelope for ``op`` (for the runtime and the test harness)."""
    if op not in HANDLER_NAMES:
        raise InvalidEnvelope(f"op {op!r} is not one of {', '.join(HANDLER_NAMES)}")
    token = token or _text(upgrade.get("token"))
    return {"op": op, "d": {**data, "upgrade": dict(upgrade)}, "token": token}


def _mapping(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidEnvelope(f"d.upgrade.{key} must be a JSON object, not {value!r}")
    return dict(value)


def _own_config(config: dict[str, Any], app_key: str) -> dict[str, Any]:
    applications = config.get("applications")
    if isinstance(applications, Mapping) and isinstance(applications.get(app_key), Mapping):
        return dict(applications[app_key])
    return config


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
