"""The processors' config schema and the project's ``doover_config.json``."""

from __future__ import annotations

from typing import Any

from fleetcloud.sdk import config
from fleetcloud.sdk.processor import ManySubscriptionConfig

SUBSCRIPTIONS = ["sensors", "ui_cmds"]
APPS = {
    "pump_controller": ("Pump controller", "src.demo_farm.pump.handler"),
    "cold_room": ("Cold room", "src.demo_farm.cold_room.handler"),
}


class DemoFarmConfig(config.Schema):
    def __init__(self) -> None:
        # Installed with {"dv_proc_subscriptions": ["sensors", "ui_cmds"]}
        self.subscription = ManySubscriptionConfig()


def invoked_by_command(event: Any) -> bool:
    """Was this invocation started by a message on the device's ``ui_cmds``?

    A pressed button is acted on only then. The SDK also delivers a command that an
    earlier event's invocation finds in the ``ui_cmds`` aggregate, and a reading queued
    just before the press can start after it: acting on both would press the button twice.
    """
    d = event.get("d") if isinstance(event, dict) else None
    message = d.get("message") if isinstance(d, dict) else None
    channel = message.get("channel") if isinstance(message, dict) else None
    return (
        isinstance(event, dict)
        and event.get("op") == "on_message_create"
        and isinstance(channel, dict)
        and channel.get("name") == "ui_cmds"
    )


def doover_config() -> dict[str, Any]:
    """Both apps' entries, as ``fleetcloud app new`` writes them."""
    document: dict[str, Any] = {}
    for name, (display_name, handler) in APPS.items():
        document[name] = {
            "name": name,
            "display_name": display_name,
            "type": "PRO",
            "visibility": "PRI",
            "allow_many": False,
            "handler": handler,
            "lambda_config": {
                "Runtime": "python3.11",
                "Timeout": 30,
                "MemorySize": 128,
                "Handler": handler,
            },
            "config_schema": DemoFarmConfig().to_schema(title=name),
        }
    return document
