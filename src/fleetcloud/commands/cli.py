"""The command line for commands, parser scripts and the MQTT broker.

Registered on ``fleetcloud`` by ``cli.py``::

    fleetcloud push DEVICE_ID COMMAND_TYPE --protocol mqtt --parser REF [--payload JSON]
        [--metadata JSON] [--expires-in SECONDS] [--request-id ID] [--json]
    fleetcloud commands DEVICE_ID [--status S] [--limit N] [--json]
    fleetcloud command REQUEST_ID [--json]                 status and history
    fleetcloud parser upload FILE [--ref NAME] | list | show REF | assign DEVICE_ID REF
    fleetcloud mqtt broker-config --org ID --out DIR [--port P] [--mint-tokens]
    fleetcloud mqtt enroll DEVICE_ID --token TOKEN

``push``, ``commands``, ``command`` and ``parser`` talk to a running server (``--url``,
``--token``, as ``fleetcloud publish`` does); ``mqtt`` works on the database directly.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from fleetcloud.clitools import (
    admin_client_options,
    client_options,
    database_option,
    emit,
    json_object,
    json_option,
    request,
    run,
)
from fleetcloud.core import jsonish

# ---------------------------------------------------------------- commands


@click.command()
@click.argument("device_id")
@click.argument("command_type")
@click.option(
    "--protocol",
    type=click.Choice(["mqtt", "coap"]),
    required=True,
    help="How the device is reached",
)
@click.option("--parser", "parser_ref", required=True, help="Parser script reference")
@click.option("--payload", help="The command's payload, a JSON object")
@click.option("--metadata", help='Protocol metadata, e.g. {"topic": "…", "qos": 1}')
@click.option("--expires-in", type=click.FloatRange(min=0), help="Seconds until it expires")
@click.option("--request-id", help="Your own request id (default: a new UUID)")
@client_options
@json_option
def push(
    device_id: str,
    command_type: str,
    protocol: str,
    parser_ref: str,
    payload: str | None,
    metadata: str | None,
    expires_in: float | None,
    request_id: str | None,
    url: str,
    token: str,
    as_json: bool,
) -> None:
    """Push COMMAND_TYPE to DEVICE_ID on a running server; prints its request id."""
    body: dict[str, Any] = {
        "device_id": device_id,
        "command_type": command_type,
        "protocol": protocol,
        "parser_script_ref": parser_ref,
        "payload": json_object(payload, "--payload"),
        "metadata": json_object(metadata, "--metadata"),
    }
    if expires_in is not None:
        body["expires_at"] = (datetime.now(UTC) + timedelta(seconds=expires_in)).isoformat()
    if request_id is not None:
        body["request_id"] = request_id
    result = request(url, token, "POST", "/api/commands", json=body)
    emit(
        {"request_id": result["request_id"]}, as_json, f"{result['request_id']} {result['status']}"
    )


@click.command()
@click.argument("device_id")
@click.option("--status", help="Only commands with this status")
@click.option(
    "--limit",
    type=click.IntRange(1, 500),
    default=50,
    show_default=True,
    help="At most this many, newest first",
)
@client_options
@json_option
def commands(
    device_id: str, status: str | None, limit: int, url: str, token: str, as_json: bool
) -> None:
    """List DEVICE_ID's commands with their statuses, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status.upper()
    found = request(url, token, "GET", f"/api/agents/{device_id}/commands", params=params)
    lines = [
        f"{c['request_id']}  {c['status']:<9}  {c['command_type']}"
        + (f"  ({c['reason']})" if c.get("reason") else "")
        for c in found
    ]
    emit(found, as_json, "\n".join(lines) or "no commands")


@click.command()
@click.argument("request_id")
@client_options
@json_option
def command(request_id: str, url: str, token: str, as_json: bool) -> None:
    """Show one command's status and history."""
    found = request(url, token, "GET", f"/api/commands/{quote(request_id, safe='')}")
    lines = [f"{found['request_id']}  {found['status']}  {found['command_type']}"]
    lines += [f"  {h['at_ms']}  {h['status']}  {h['reason'] or ''}" for h in found["history"]]
    emit(found, as_json, "\n".join(lines))


# ---------------------------------------------------------------- parser scripts


@click.group()
def parser() -> None:
    """Parser scripts: upload, list, show, and assign one to a device."""


@parser.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--ref", help="Reference to store it under (default: the file name)")
@admin_client_options
@json_option
def parser_upload(file: Path, ref: str | None, url: str, token: str, as_json: bool) -> None:
    """Upload FILE as a parser script; the next command that names it uses it."""
    name = ref or file.name
    headers = {"Content-Type": "text/x-python"}
    result = request(
        url, token, "PUT", f"/api/parsers/{quote(name)}", content=file.read_bytes(), headers=headers
    )
    emit(result, as_json, f"{result['ref']} version {result['version']} sha256 {result['sha256']}")


@parser.command("list")
@client_options
@json_option
def parser_list(url: str, token: str, as_json: bool) -> None:
    """List the parser scripts the organisation can use."""
    found = request(url, token, "GET", "/api/parsers")
    lines = [f"{s['ref']:<40} {s['origin']:<9} {s['sha256'][:12]}" for s in found]
    emit(found, as_json, "\n".join(lines))


@parser.command("show")
@click.argument("ref")
@client_options
@json_option
def parser_show(ref: str, url: str, token: str, as_json: bool) -> None:
    """Print a parser script's source."""
    found = request(url, token, "GET", f"/api/parsers/{quote(ref)}")
    emit(found, as_json, found["source"])


@parser.command("assign")
@click.argument("device_id")
@click.argument("ref", required=False)
@click.option("--config", help="The config dict the device's parser calls get (JSON)")
@client_options
@json_option
def parser_assign(
    device_id: str, ref: str | None, config: str | None, url: str, token: str, as_json: bool
) -> None:
    """Set DEVICE_ID's uplink parser (REF; none to accept JSON only) and parser config."""
    body = {"parser_script_ref": ref, "config": json_object(config, "--config")}
    result = request(url, token, "PUT", f"/api/agents/{device_id}/parser", json=body)
    emit(result, as_json, jsonish.dumps_str(result))


# ---------------------------------------------------------------- the MQTT broker


@click.group()
def mqtt() -> None:
    """The MQTT broker: configuration and device credentials."""


@mqtt.command("broker-config")
@click.option("--org", "organisation_id", required=True, type=int, help="Organisation id")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write mosquitto.conf, passwd and acl into",
)
@click.option(
    "--port", default=1883, show_default=True, type=int, help="Port the broker listens on"
)
@click.option(
    "--bind", default="127.0.0.1", show_default=True, help="Address the broker listens on"
)
@click.option("--run-as", help="User Mosquitto becomes when started as root [its default]")
@click.option("--mint-tokens", is_flag=True, help="New tokens for devices not yet enrolled")
@database_option
@json_option
def broker_config(
    organisation_id: int,
    out: Path,
    port: int,
    bind: str,
    run_as: str | None,
    mint_tokens: bool,
    database: str,
    as_json: bool,
) -> None:
    """Write mosquitto.conf, passwd and acl for an organisation's devices into --out."""
    from fleetcloud.connectors.mosquitto import ListenerOptions, write_config
    from fleetcloud.store import open_store

    async def write() -> dict[str, object]:
        async with open_store(database) as store:
            listener = ListenerOptions(port, bind, run_as)
            return await write_config(store, organisation_id, out, listener, mint=mint_tokens)

    result = run(write())
    text = (
        f"wrote {result['config']} ({result['devices']} devices, {result['minted']} new tokens)\n"
        f"run: mosquitto -c {result['config']}\n"
        f"then: fleetcloud serve --mqtt-url '{result['connector_url']}'"
    )
    emit(result, as_json, text)


@mqtt.command("enroll")
@click.argument("device_id", type=int)
@click.option("--token", "device_token", required=True, help="The device's token")
@database_option
def enroll(device_id: int, device_token: str, database: str) -> None:
    """Let DEVICE_ID log in to the broker with its token (rerun broker-config after)."""
    from fleetcloud.connectors.mosquitto import enroll_token
    from fleetcloud.store import open_store

    async def store_hash() -> None:
        async with open_store(database) as store:
            await enroll_token(store, device_id, device_token)

    run(store_hash())
    click.echo(f"device {device_id} enrolled; run fleetcloud mqtt broker-config again")


COMMANDS = (push, commands, command, parser, mqtt)
"""What ``cli.py`` adds to ``fleetcloud``."""


def mqtt_service_from_options(mqtt_url: str | None, parsers_dir: str | None) -> Any:
    """The MQTT connector service for ``fleetcloud serve``, or None without --mqtt-url."""
    if parsers_dir:
        os.environ["FLEETCLOUD_PARSERS_DIR"] = parsers_dir  # the API's parser list too
    if not mqtt_url:
        return None
    from fleetcloud.connectors.mqtt import MqttOptions, mqtt_service

    return mqtt_service(MqttOptions(mqtt_url, parsers_dir=parsers_dir))
