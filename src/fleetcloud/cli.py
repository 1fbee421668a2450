"""The ``fleetcloud`` command line."""

from __future__ import annotations

import functools
import gc
import os
import sys
from typing import Any

import click

from fleetcloud import __version__
from fleetcloud.agent.cli import agent as agent_command
from fleetcloud.apps.cli import app_group
from fleetcloud.clitools import (
    clean_errors,
    client_options,
    connect,
    database_option,
    emit,
    json_option,
    json_value,
    print_json,
    run,
)
from fleetcloud.commands import cli as commands_cli
from fleetcloud.core import jsonish
from fleetcloud.settings import Settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fleetcloud")
def main() -> None:
    """fleetcloud: a self-hosted IoT device cloud.

    Run the platform with `fleetcloud serve`; manage organisations and devices with
    `fleetcloud org` and `fleetcloud device`; talk to a running server with
    `fleetcloud publish` and `fleetcloud channels`.
    """


# ---------------------------------------------------------------- serve


@main.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="FLEETCLOUD_HOST",
    help="Address to listen on [env FLEETCLOUD_HOST]",
)
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=int,
    envvar="FLEETCLOUD_PORT",
    help="Port to listen on [env FLEETCLOUD_PORT]",
)
@database_option
@click.option(
    "--bus",
    "bus_url",
    envvar="FLEETCLOUD_BUS_URL",
    default="memory",
    show_default=True,
    help="memory (in-process, durable through the database) or kafka://HOST:PORT",
)
@click.option(
    "--demo/--no-demo",
    default=None,
    help="Create a demo organisation with simulated devices [default: on a new database]",
)
@click.option(
    "--log-format",
    type=click.Choice(["json", "text"]),
    default="text",
    show_default=True,
    help="Log lines as JSON objects or as plain text",
)
@click.option(
    "--log-level", default="info", show_default=True, help="debug, info, warning or error"
)
@click.option(
    "--mqtt-url",
    envvar="FLEETCLOUD_MQTT_URL",
    help="Run the MQTT connector: mqtt://USER:PASSWORD@HOST:PORT [env FLEETCLOUD_MQTT_URL]",
)
@click.option(
    "--coap-bind",
    envvar="FLEETCLOUD_COAP_BIND",
    help="Run the CoAP connector on this UDP address, e.g. 0.0.0.0:5683 [env FLEETCLOUD_COAP_BIND]",
)
@click.option(
    "--parsers-dir",
    envvar="FLEETCLOUD_PARSERS_DIR",
    help="A directory of parser scripts [env FLEETCLOUD_PARSERS_DIR]",
)
@click.option(
    "--role",
    "role_values",
    multiple=True,
    metavar="ROLE[,ROLE…]",
    envvar="FLEETCLOUD_ROLES",
    help=(
        "Run only these roles (repeatable, or comma-separated): api (HTTP API, gateway, "
        "console), dispatcher (cloud apps and their workers), scheduler (app schedules, "
        "job timeouts and rollouts), mqtt (with --mqtt-url), coap (with --coap-bind). "
        "Default: all. Without api, --port serves only /healthz and /metrics. Run roles "
        "in separate processes on PostgreSQL with --bus kafka://… [env FLEETCLOUD_ROLES]"
    ),
)
def serve(
    host: str,
    port: int,
    database: str,
    bus_url: str,
    demo: bool | None,
    log_format: str,
    log_level: str,
    mqtt_url: str | None,
    coap_bind: str | None,
    parsers_dir: str | None,
    role_values: tuple[str, ...],
) -> None:
    """Run the platform: HTTP API, websocket gateway, event bus, cloud apps, schedulers
    and connectors — in one process, or the roles chosen with --role."""
    import uvicorn

    from fleetcloud import logs
    from fleetcloud.api.app import Service, create_app
    from fleetcloud.apps.service import services as apps_services
    from fleetcloud.connectors.coap import coap_service_from_options
    from fleetcloud.demo import running
    from fleetcloud.jobs import service as jobs
    from fleetcloud.platform import Platform
    from fleetcloud.roles import check_bus, health_app, job_polls, parse_roles

    with clean_errors():
        roles = parse_roles(role_values)
    settings = Settings(database_url=database, bus_url=bus_url, host=host, port=port)
    logs.configure(log_level, log_format)
    check_bus(roles, bus_url)
    platform = Platform.from_settings(settings)
    if demo is None:
        demo = is_new_database(database)
    url = f"http://{host}:{port}"
    api_url = url if "api" in roles else None
    services: list[Service] = []
    if "scheduler" in roles:
        services.append(jobs.running)  # job timeouts and rollouts
    elif "api" in roles:
        services.append(job_polls)  # long-polls woken by other processes' work
    with clean_errors():  # cloud apps: dispatcher (workers) and scheduler
        services.extend(apps_services(api_url, roles=roles))
    if demo and "api" in roles:
        services.append(functools.partial(running, url=url))
    mqtt = commands_cli.mqtt_service_from_options(mqtt_url, parsers_dir)
    if mqtt is not None and "mqtt" in roles:
        services.append(mqtt)  # the MQTT connector: commands out, uplinks in
    with clean_errors():
        coap = coap_service_from_options(coap_bind, parsers_dir)
    if coap is not None and "coap" in roles:
        services.append(coap)  # the CoAP connector: uplinks and acks in, commands out
    if "api" in roles:
        app = create_app(platform, services=services)
    else:
        app = health_app(platform, roles, services)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=5,  # long-polls would otherwise hold a stop for a minute
    )
    tune_for_many_connections()
    uvicorn.Server(config).run()


def tune_for_many_connections() -> None:
    """A server holding thousands of parked requests (long-polls, websockets) keeps a
    million objects alive: move what start-up made out of the collector's sight, collect
    the young generation far less often, and hand the GIL between the event loop and the
    store's writer thread more often, so neither waits on the other's time slice."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    sys.setswitchinterval(0.0005)


def is_new_database(url: str) -> bool:
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://").removeprefix("/")
        return not os.path.exists(path)
    return not url.startswith(("postgres://", "postgresql://")) and not os.path.exists(url)


# ---------------------------------------------------------------- org and device


@main.group()
def org() -> None:
    """Organisations (tenants)."""


@org.command("create")
@click.argument("name")
@database_option
@json_option
def org_create(name: str, database: str, as_json: bool) -> None:
    """Create an organisation and print an admin token for it."""
    from fleetcloud.core.types import Principal, Role
    from fleetcloud.store import open_store

    async def create() -> dict[str, Any]:
        async with open_store(database) as store:
            organisation = await store.create_organisation(name)
            principal = Principal(organisation.agent_id, organisation.id, Role.ADMIN)
            token = await store.create_token(principal, label="cli")
        return {
            "organisation_id": str(organisation.id),
            "agent_id": str(organisation.agent_id),
            "token": token,
        }

    result = run(create())
    text = (
        f"organisation {name}: {result['organisation_id']}\n"
        f"admin token (shown once): {result['token']}"
    )
    emit(result, as_json, text)


@main.group()
def device() -> None:
    """Devices of an organisation."""


@device.command("create")
@click.argument("name")
@click.option("--org", "organisation_id", required=True, type=int, help="Organisation id")
@database_option
@json_option
def device_create(name: str, organisation_id: int, database: str, as_json: bool) -> None:
    """Create a device agent and print its token."""
    from fleetcloud.core.types import AgentKind, Principal, Role
    from fleetcloud.store import open_store

    async def create() -> dict[str, Any]:
        async with open_store(database) as store:
            agent = await store.create_agent(organisation_id, AgentKind.DEVICE, name)
            principal = Principal(agent.id, organisation_id, Role.DEVICE)
            token = await store.create_token(principal, label="cli")
        return {"agent_id": str(agent.id), "token": token}

    result = run(create())
    emit(
        result,
        as_json,
        f"device {name}: {result['agent_id']}\ntoken (shown once): {result['token']}",
    )


@device.group("provisioning-key")
def provisioning_key() -> None:
    """Provisioning keys: a device registers itself with one (POST /api/v1/device/register)."""


@provisioning_key.command("create")
@click.option("--org", "organisation_id", required=True, type=int, help="Organisation id")
@click.option("--label", default="", help="What the key is for")
@click.option("--expires-in", "ttl", type=click.IntRange(min=1), help="Seconds until it expires")
@click.option("--max-uses", type=click.IntRange(min=1), help="How many devices it may register")
@database_option
@json_option
def provisioning_key_create(
    organisation_id: int,
    label: str,
    ttl: int | None,
    max_uses: int | None,
    database: str,
    as_json: bool,
) -> None:
    """Create a provisioning key for an organisation and print it (shown once)."""
    from fleetcloud.jobs.devices import create_provisioning_key
    from fleetcloud.store import open_store

    async def create() -> dict[str, Any]:
        async with open_store(database) as store:
            key, secret = await store.write(
                create_provisioning_key(
                    organisation_id, label=label, ttl_seconds=ttl, max_uses=max_uses
                )
            )
        return {**key.to_json(), "provisioning_key": secret}

    result = run(create())
    emit(result, as_json, f"provisioning key (shown once): {result['provisioning_key']}")


# ---------------------------------------------------------------- client commands


@main.command()
@click.argument("agent_id")
@click.argument("channel")
@click.argument("data")
@client_options
def publish(agent_id: str, channel: str, data: str, url: str, token: str) -> None:
    """Publish DATA (a JSON document) to CHANNEL of agent AGENT_ID on a running server."""
    payload = json_value(data, "DATA")
    with clean_errors(), connect(url, token) as client:
        message = client.publish(agent_id, channel, payload)
    print_json(message)


@main.command()
@click.argument("agent_id")
@client_options
@click.option("--tail", is_flag=True, help="Then follow new messages and aggregate updates live")
@click.option("--channel", "only", multiple=True, help="Only these channels (repeatable)")
def channels(agent_id: str, url: str, token: str, tail: bool, only: tuple[str, ...]) -> None:
    """Show AGENT_ID's channels and their current aggregates (a channel viewer)."""
    from fleetcloud.client import tail_channels

    with clean_errors(), connect(url, token) as client:
        found = [c for c in client.channels(agent_id) if not only or c["name"] in only]
    for channel in found:
        aggregate = channel.get("aggregate") or {}
        click.echo(f"{channel['name']}: {jsonish.dumps_str(aggregate.get('data'))}")
    if tail:
        names = list(only) or [c["name"] for c in found]
        try:
            run(tail_channels(url, token, agent_id, names, click.echo))
        except KeyboardInterrupt:
            sys.exit(0)


main.add_command(agent_command)  # fleetcloud agent [status|history]: the device agent
main.add_command(app_group)  # fleetcloud app new|build|deploy|install|invoke|logs
for _command in commands_cli.COMMANDS:  # push, commands, command, parser, mqtt
    main.add_command(_command)


if __name__ == "__main__":
    main(prog_name="fleetcloud")
