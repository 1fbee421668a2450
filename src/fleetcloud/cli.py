"""The ``fleetcloud`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import click

from fleetcloud import __version__
from fleetcloud.agent.cli import agent as agent_command
from fleetcloud.apps.cli import app_group
from fleetcloud.commands import cli as commands_cli
from fleetcloud.core import jsonish
from fleetcloud.core.errors import FleetError
from fleetcloud.settings import DEFAULT_DATABASE, Settings

T = TypeVar("T")

DATABASE_HELP = "sqlite:///FILE or postgresql://USER@HOST:PORT/DB [env FLEETCLOUD_DATABASE_URL]"


def run(coroutine: Awaitable[T]) -> T:
    async def wrapped() -> T:
        return await coroutine

    with clean_errors():
        return asyncio.run(wrapped())


@contextlib.contextmanager
def clean_errors() -> Iterator[None]:
    """A fleetcloud error ends the command with its message, not a traceback."""
    try:
        yield
    except FleetError as exc:
        raise click.ClickException(exc.message) from exc


def database_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--database",
        envvar="FLEETCLOUD_DATABASE_URL",
        default=DEFAULT_DATABASE,
        show_default=True,
        help=DATABASE_HELP,
    )(function)


def emit(value: Any, as_json: bool, text: str) -> None:
    click.echo(jsonish.dumps_str(value) if as_json else text)


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
    "--parsers-dir",
    envvar="FLEETCLOUD_PARSERS_DIR",
    help="A directory of parser scripts [env FLEETCLOUD_PARSERS_DIR]",
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
    parsers_dir: str | None,
) -> None:
    """Run the platform: HTTP API, websocket gateway and event bus, in one process."""
    import uvicorn

    from fleetcloud import logs
    from fleetcloud.api.app import Service, create_app
    from fleetcloud.apps.service import services as apps_services
    from fleetcloud.demo import running
    from fleetcloud.jobs import service as jobs
    from fleetcloud.platform import Platform

    settings = Settings(database_url=database, bus_url=bus_url, host=host, port=port)
    logs.configure(log_level, log_format)
    platform = Platform.from_settings(settings)
    if demo is None:
        demo = is_new_database(database)
    url = f"http://{host}:{port}"
    services: list[Service] = [jobs.running]  # job timeouts and rollouts
    services.extend(apps_services(url))  # cloud apps: dispatcher (workers) and scheduler
    if demo:
        services.append(functools.partial(running, url=url))
    mqtt = commands_cli.mqtt_service_from_options(mqtt_url, parsers_dir)
    if mqtt is not None:
        services.append(mqtt)  # the MQTT connector: commands out, uplinks in
    app = create_app(platform, services=services)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=5,  # long-polls would otherwise hold a stop for a minute
    )
    uvicorn.Server(config).run()


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
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts")
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts")
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts")
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


def client_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option(
        "--url",
        envvar="FLEETCLOUD_URL",
        default="http://127.0.0.1:8000",
        show_default=True,
        help="The server [env FLEETCLOUD_URL]",
    )(function)
    return click.option(
        "--token",
        envvar="FLEETCLOUD_TOKEN",
        required=True,
        help="Bearer token [env FLEETCLOUD_TOKEN]",
    )(function)


@main.command()
@click.argument("agent_id")
@click.argument("channel")
@click.argument("data")
@client_options
def publish(agent_id: str, channel: str, data: str, url: str, token: str) -> None:
    """Publish DATA (a JSON document) to CHANNEL of agent AGENT_ID on a running server."""
    from fleetcloud.client import Client

    try:
        payload = jsonish.loads(data)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="DATA") from exc
    with clean_errors(), Client(url, token) as client:
        message = client.publish(agent_id, channel, payload)
    click.echo(jsonish.dumps_str(message))


@main.command()
@click.argument("agent_id")
@client_options
@click.option("--tail", is_flag=True, help="Then follow new messages and aggregate updates live")
@click.option("--channel", "only", multiple=True, help="Only these channels (repeatable)")
def channels(agent_id: str, url: str, token: str, tail: bool, only: tuple[str, ...]) -> None:
    """Show AGENT_ID's channels and their current aggregates (a channel viewer)."""
    from fleetcloud.client import Client, tail_channels

    with clean_errors(), Client(url, token) as client:
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
