"""Commands to devices: ``CommandMessage``, ``PusherService`` and their helpers.

The seed's import paths work with ``fleetcloud.commands`` in place of
``preservarium_pusher``::

    from fleetcloud.commands import PusherService, create_pusher_service
    from fleetcloud.commands.service import PusherService
    from fleetcloud.commands.core.models import CommandMessage

Names are loaded on first use, so that importing a submodule (the store imports
``fleetcloud.commands.schema``) does not pull in Kafka and pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleetcloud.commands.core.models import CommandMessage, CommandStatus, InvalidCommand
    from fleetcloud.commands.service import (
        PusherService,
        create_pusher_service,
        create_pusher_service_sync,
    )

_EXPORTS = {
    "CommandMessage": "fleetcloud.commands.core.models",
    "CommandStatus": "fleetcloud.commands.core.models",
    "InvalidCommand": "fleetcloud.commands.core.models",
    "PusherService": "fleetcloud.commands.service",
    "create_pusher_service": "fleetcloud.commands.service",
    "create_pusher_service_sync": "fleetcloud.commands.service",
}

__all__ = [
    "CommandMessage",
    "CommandStatus",
    "InvalidCommand",
    "PusherService",
    "create_pusher_service",
    "create_pusher_service_sync",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fleetcloud.commands' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
