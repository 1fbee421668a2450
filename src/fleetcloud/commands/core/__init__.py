"""Command values without I/O: the ``CommandMessage`` model and the status machine."""

from fleetcloud.commands.core.models import (
    CommandMessage,
    CommandStatus,
    InvalidCommand,
    can_move,
)

__all__ = ["CommandMessage", "CommandStatus", "InvalidCommand", "can_move"]
