"""The fleetcloud app SDK: what processors and integrations import.

``from fleetcloud.sdk import config, ui`` and ``from fleetcloud.sdk.processor import
Application, run_app, …`` — the seed's names with ``pydoover`` replaced. See docs/sdk.md.
"""

from __future__ import annotations

from fleetcloud.sdk import config, ui
from fleetcloud.sdk.processor import (
    AggregateUpdateEvent,
    Application,
    ConnectionStatus,
    ConnectionType,
    DeploymentEvent,
    ExtendedPermissionsConfig,
    IngestionEndpointConfig,
    IngestionEndpointEvent,
    InvocationContext,
    ManualInvokeEvent,
    ManySubscriptionConfig,
    MessageCreateEvent,
    ScheduleConfig,
    ScheduleEvent,
    run_app,
    run_app_async,
)

__all__ = [
    "AggregateUpdateEvent",
    "Application",
    "ConnectionStatus",
    "ConnectionType",
    "DeploymentEvent",
    "ExtendedPermissionsConfig",
    "IngestionEndpointConfig",
    "IngestionEndpointEvent",
    "InvocationContext",
    "ManualInvokeEvent",
    "ManySubscriptionConfig",
    "MessageCreateEvent",
    "ScheduleConfig",
    "ScheduleEvent",
    "config",
    "run_app",
    "run_app_async",
    "ui",
]
