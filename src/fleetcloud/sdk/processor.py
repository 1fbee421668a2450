"""Processors and integrations: ``from fleetcloud.sdk.processor import Application, run_app``.

The names the seed imports from ``pydoover.cloud.processor``, in one place.
"""

from __future__ import annotations

from fleetcloud.sdk.application import Application, DeviceAgent
from fleetcloud.sdk.connection import ConnectionStatus, ConnectionType
from fleetcloud.sdk.data import DataClient, WriteGuard
from fleetcloud.sdk.envelope import API_URL_ENV, Invocation, Upgrade, build_envelope
from fleetcloud.sdk.errors import (
    AppError,
    ConfigInvalid,
    ConfigNotSet,
    DataApiUnavailable,
    InvalidEnvelope,
    InvokingChannelWrite,
)
from fleetcloud.sdk.events import (
    HANDLER_NAMES,
    Aggregate,
    AggregateUpdateEvent,
    ChannelID,
    DeploymentEvent,
    IngestionEndpointEvent,
    ManualInvokeEvent,
    Message,
    MessageCreateEvent,
    ScheduleEvent,
)
from fleetcloud.sdk.runner import InvocationContext, run_app, run_app_async
from fleetcloud.sdk.transport import HttpTransport, Transport
from fleetcloud.sdk.triggers import (
    ExtendedPermissionsConfig,
    IngestionEndpointConfig,
    ManySubscriptionConfig,
    ScheduleConfig,
)

__all__ = [
    "API_URL_ENV",
    "HANDLER_NAMES",
    "Aggregate",
    "AggregateUpdateEvent",
    "AppError",
    "Application",
    "ChannelID",
    "ConfigInvalid",
    "ConfigNotSet",
    "ConnectionStatus",
    "ConnectionType",
    "DataApiUnavailable",
    "DataClient",
    "DeploymentEvent",
    "DeviceAgent",
    "ExtendedPermissionsConfig",
    "HttpTransport",
    "IngestionEndpointConfig",
    "IngestionEndpointEvent",
    "InvalidEnvelope",
    "Invocation",
    "InvocationContext",
    "InvokingChannelWrite",
    "ManualInvokeEvent",
    "ManySubscriptionConfig",
    "Message",
    "MessageCreateEvent",
    "ScheduleConfig",
    "ScheduleEvent",
    "Transport",
    "Upgrade",
    "WriteGuard",
    "build_envelope",
    "run_app",
    "run_app_async",
]
