"""Errors an app author meets in the SDK.

They extend fleetcloud's tree (``fleetcloud.core.errors``)::

    FleetError
    ├── ApiError and its subclasses     the data API answered 4xx/5xx (same classes as the
    │                                   server raises: NotFound, Forbidden, ValidationFailed…)
    └── AppError                        the SDK refused something, or could not reach the API
        ├── InvalidEnvelope             the runtime passed an event the SDK cannot read
        ├── ConfigInvalid               deployment_config does not match the app's schema
        ├── ConfigNotSet                a required config value was read before it was loaded
        ├── InvokingChannelWrite        the app wrote to the channel that invoked it
        ├── NotJsonSerializable         a tag or payload that JSON cannot carry (a TypeError)
        └── DataApiUnavailable          the data API could not be reached (retriable)
            └── AgentUnavailable        a device app: the device agent's local API did not
                                        answer (is ``fleetcloud agent`` running?)

httpx's own exceptions never reach an app: the transport translates them here.
"""

from __future__ import annotations

from fleetcloud.core.errors import FleetError


class AppError(FleetError):
    """Base of the errors the SDK raises itself."""


class InvalidEnvelope(AppError):
    pass


class ConfigInvalid(AppError):
    """The deployment config breaks the schema; ``problems`` lists each one."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class ConfigNotSet(AppError):
    pass


class InvokingChannelWrite(AppError):
    pass


class NotJsonSerializable(AppError, TypeError):
    pass


class DataApiUnavailable(AppError):
    retriable = True


class AgentUnavailable(DataApiUnavailable):
    """A device app could not reach the device agent's local API."""
