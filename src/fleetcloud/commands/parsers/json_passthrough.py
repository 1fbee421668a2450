"""JSON pass-through: a command goes to the device as compact JSON, an uplink comes in as JSON.

Downlink bytes (UTF-8 JSON, no spaces)::

    {"request_id": "...", "command_type": "...", "payload": {...}}

``config`` may add ``"include_metadata": true`` to send the command's metadata too.
Uplinks: a JSON object becomes the channel message as it is; any other JSON value is
wrapped as ``{"value": ...}``.
"""

import json
from typing import Any


def format_command(command: dict[str, Any], config: dict[str, Any]) -> bytes:
    body = {
        "request_id": command["request_id"],
        "command_type": command["command_type"],
        "payload": command.get("payload") or {},
    }
    if config.get("include_metadata"):
        body["metadata"] = command.get("metadata") or {}
    return json.dumps(body, separators=(",", ":")).encode()


def parse(payload: bytes, metadata: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    data = json.loads(payload)
    return data if isinstance(data, dict) else {"value": data}
