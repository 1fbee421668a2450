"""Checks on an installation before it is stored (pure): the agent it goes on, and its
deployment config against the app's ``config_schema`` and the platform's own triggers."""

from __future__ import annotations

from typing import Any

from fleetcloud.apps.ingestion import IngestionConfigError, IngestionGate
from fleetcloud.apps.model import INGESTION_KEY, SCHEDULES_KEY, SUBSCRIPTIONS_KEY, App, Version
from fleetcloud.apps.packaging import check_config
from fleetcloud.apps.scheduler import next_fire_ms
from fleetcloud.apps.schedules import ScheduleError, parse_schedule
from fleetcloud.core.errors import BadRequest, ValidationFailed
from fleetcloud.core.types import Agent, AgentKind

INSTALLED_ON = {"PRO": AgentKind.DEVICE, "INT": AgentKind.ORGANISATION}


def check_agent(app: App, agent: Agent) -> None:
    """Processors go on devices, integrations on the organisation."""
    wanted = INSTALLED_ON[app.type]
    if agent.kind is not wanted:
        kind = "a processor" if app.type == "PRO" else "an integration"
        raise BadRequest(
            f"{app.name} is {kind}: it is installed on {wanted.value} agents, and agent "
            f"{agent.id} is a {agent.kind.value}"
        )


def check_deployment(app: App, version: Version, config: Any, now_ms: int) -> int | None:
    """Validate ``config``; returns when its schedule first fires (None: disabled)."""
    if not isinstance(config, dict):
        raise BadRequest("config must be a JSON object (the deployment config)")
    check_config(app.name, version.config_schema, config)
    subscriptions = config.get(SUBSCRIPTIONS_KEY) or []
    if not isinstance(subscriptions, list) or not all(isinstance(c, str) for c in subscriptions):
        raise ValidationFailed(f"{SUBSCRIPTIONS_KEY} must be a list of channel names")
    if app.type == "INT":
        try:
            IngestionGate.from_config(config.get(INGESTION_KEY))
        except IngestionConfigError as exc:
            raise ValidationFailed(f"{INGESTION_KEY}: {exc}") from exc
    expression = config.get(SCHEDULES_KEY) or "disabled"
    if not isinstance(expression, str):
        raise ValidationFailed(f"{SCHEDULES_KEY} must be a string such as rate(5 minutes)")
    try:
        schedule = parse_schedule(expression)
    except ScheduleError as exc:
        raise ValidationFailed(f"{SCHEDULES_KEY}: {exc}") from exc
    return next_fire_ms(expression, now_ms) if schedule.enabled else None
