"""Errors of the device agent, a branch of the fleetcloud exception tree::

    FleetError
    ├── ApiError
    │   └── QueueFull             507  the local store-and-forward queue is at its bound
    └── AgentError
        ├── CloudUnreachable      the cloud did not answer, or answered 5xx/429 (retriable)
        ├── CloudRefused          the cloud answered 4xx (has .status)
        │   └── UpdateRefused     409 on a status update: the execution is no longer ours
        ├── InvalidJobDocument    a job document the agent cannot run (→ REJECTED)
        └── StepRefused           a step the agent will not start (bad handler, user …)

httpx exceptions are translated where the agent calls the cloud (``cloud.py``).
"""

from __future__ import annotations

from fleetcloud.core.errors import ApiError, FleetError


class AgentError(FleetError):
    """Base of the device agent's own errors."""


class CloudUnreachable(AgentError):
    """No answer, or an answer that says "try again later"; worth retrying."""

    retriable = True

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CloudRefused(AgentError):
    """The cloud answered 4xx: retrying the same request will not help."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class UpdateRefused(CloudRefused):
    """409 on a status update: the execution was canceled, timed out or moved on."""


class InvalidJobDocument(AgentError):
    """The job document cannot be run; the execution is reported REJECTED."""


class StepRefused(AgentError):
    """A step the agent refuses to start; the step fails with this reason."""


class QueueFull(ApiError):
    """The on-disk queue of messages waiting for the cloud is full."""

    status = 507
