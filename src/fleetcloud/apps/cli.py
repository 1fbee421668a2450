"""``fleetcloud app …``: write, package, deploy, install and watch cloud apps.

::

    fleetcloud app new NAME --type processor|integration [--dir PARENT]
    fleetcloud app build [DIR]                       → DIR/package.zip
    fleetcloud app deploy [DIR] [--app NAME] [--json]            → {"app_id": …}
    fleetcloud app install APP_ID --agent AGENT_ID [--config JSON] [--json]
                                                                 → {"installation_id": …}
    fleetcloud app invoke INSTALLATION_ID [--payload JSON] [--wait S] [--json]
    fleetcloud app logs INSTALLATION_ID [--follow] [--limit N] [--json]
    fleetcloud app list [--json]
    fleetcloud app dead-letters INSTALLATION_ID [--json]

``new`` and ``build`` work on files; the others talk to a running server (``--url``,
``--token``, env ``FLEETCLOUD_URL`` / ``FLEETCLOUD_TOKEN``, as ``fleetcloud publish``).
"""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from fleetcloud.clitools import (
    admin_client_options,
    clean_errors,
    connect,
    emit,
    json_option,
    json_value,
    print_json,
    request,
)

UPLOAD_TIMEOUT = 300.0
FOLLOW_SECONDS = 1.0


@click.group("app")
def app_group() -> None:
    """Cloud apps: processors (on devices) and integrations (on the organisation)."""


# ---------------------------------------------------------------- files


@app_group.command("new")
@click.argument("name")
@click.option(
    "--type",
    "kind",
    type=click.Choice(["processor", "integration"]),
    default="processor",
    show_default=True,
    help="A processor (runs for a device) or an integration (for the organisation)",
)
@click.option(
    "--dir",
    "parent",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    help="Where to create the project [default: here]",
)
def new(name: str, kind: str, parent: Path) -> None:
    """Create a processor or integration project named NAME."""
    from fleetcloud.apps.scaffold import create

    with clean_errors():
        root = create(name, kind, parent)
    click.echo(f"created {kind} {root}")
    click.echo(f"next: fleetcloud app build {root} && fleetcloud app deploy {root}")


@app_group.command("build")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
def build_command(directory: Path) -> None:
    """Build DIR/package.zip: locked dependencies (with uv) plus src/."""
    from fleetcloud.apps.build import build

    with clean_errors():
        package = build(directory)
    click.echo(f"built {package} ({package.stat().st_size} bytes)")


# ---------------------------------------------------------------- server


@app_group.command("deploy")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
@click.option("--app", "name", help="Which app of doover_config.json [default: its only one]")
@admin_client_options
@json_option
def deploy(directory: Path, name: str | None, url: str, token: str, as_json: bool) -> None:
    """Upload DIR/package.zip and DIR/doover_config.json as a new version of the app."""
    config_path, package_path = directory / "doover_config.json", directory / "package.zip"
    for path in (config_path, package_path):
        if not path.exists():
            hint = " (run fleetcloud app build)" if path is package_path else ""
            raise click.ClickException(f"{path} is missing{hint}")
    document = json_value(config_path.read_text(), "doover_config.json")
    body = {
        "doover_config": document,
        "app": name,
        "package": base64.b64encode(package_path.read_bytes()).decode(),
    }
    app = request(url, token, "POST", "/api/apps", timeout=UPLOAD_TIMEOUT, json=body)
    if as_json:
        print_json({"app_id": app["id"], "name": app["name"], "version": app["version"]})
    else:
        click.echo(f"deployed {app['name']} version {app['version']}: app {app['id']}")


@app_group.command("install")
@click.argument("app_id")
@click.option("--agent", "agent_id", help="Device (processor) or organisation agent id")
@click.option("--config", "config", help="Deployment config (JSON object)")
@click.option("--key", "app_key", help="The installation's app key [default: the app name]")
@admin_client_options
@json_option
def install(
    app_id: str,
    agent_id: str | None,
    config: str | None,
    app_key: str | None,
    url: str,
    token: str,
    as_json: bool,
) -> None:
    """Install APP_ID on an agent with a deployment config (checked against its schema)."""
    body: dict[str, Any] = {"config": json_value(config, "--config") or {}}
    if agent_id is not None:
        body["agent_id"] = agent_id
    if app_key is not None:
        body["app_key"] = app_key
    found = request(url, token, "POST", f"/api/apps/{app_id}/installations", json=body)
    if as_json:
        answer = {"installation_id": found["id"], "agent_id": found["agent_id"]}
        for key in ("ingestion_path", "ingestion_token", "mini_token"):
            if key in found:
                answer[key] = found[key]
        print_json(answer)
        return
    click.echo(f"installed as {found['app_key']} on agent {found['agent_id']}: {found['id']}")
    if "ingestion_path" in found:
        click.echo(f"ingestion URL: {url.rstrip('/')}{found['ingestion_path']}")
        click.echo(f"ingestion token: {found['ingestion_token']}")


@app_group.command("invoke")
@click.argument("installation_id")
@click.option("--payload", help="The on_manual_invoke payload (JSON)")
@click.option("--wait", default=60, show_default=True, help="Seconds to wait for the result")
@admin_client_options
@json_option
def invoke(
    installation_id: str, payload: str | None, wait: int, url: str, token: str, as_json: bool
) -> None:
    """Run on_manual_invoke now; print how it went (exit 1 if it failed)."""
    body = {"payload": json_value(payload, "--payload")}
    path = f"/api/apps/installations/{installation_id}/invoke?wait={wait}"
    answer = request(url, token, "POST", path, timeout=wait + 30, json=body)
    invocation = answer.get("invocation")
    if as_json:
        print_json(answer)
    elif invocation is None:
        click.echo(f"queued as event {answer['event_id']}; not run within {wait} s")
    else:
        click.echo(describe(invocation))
    if invocation is not None and invocation["status"] not in ("OK", "SKIPPED"):
        raise SystemExit(1)


def describe(invocation: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(invocation["started_ms"] / 1000, UTC)
    line = (
        f"{when:%Y-%m-%d %H:%M:%S.%f}"[:-3]
        + f" {invocation['status']} {invocation['handler']}"
        + f" attempt {invocation['attempt']} {invocation['duration_ms']:.1f} ms"
        + f" event {invocation['event_id']}"
    )
    if invocation.get("error"):
        line += f"\n  error: {invocation['error']}"
    logs = (invocation.get("logs") or "").rstrip()
    if logs:
        line += "\n" + "\n".join("  | " + row for row in logs.splitlines())
    return line


@app_group.command("logs")
@click.argument("installation_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new invocations")
@click.option("--limit", default=20, show_default=True, help="How many recent invocations")
@admin_client_options
@json_option
def logs(
    installation_id: str, follow: bool, limit: int, url: str, token: str, as_json: bool
) -> None:
    """The invocation log of INSTALLATION_ID: status, duration, error and output."""
    path = f"/api/apps/installations/{installation_id}/invocations"
    with clean_errors(), connect(url, token) as client:
        found = client.request("GET", path, params={"limit": limit})
        last = _show(found, as_json, 0)
        while follow:
            try:
                time.sleep(FOLLOW_SECONDS)
            except KeyboardInterrupt:
                return
            found = client.request("GET", path, params={"after": last, "limit": 1000})
            last = _show(found, as_json, last)


def _show(found: list[dict[str, Any]], as_json: bool, last: int) -> int:
    for invocation in reversed(found):  # the API answers newest first
        emit(invocation, as_json, describe(invocation))
        last = max(last, int(invocation["id"]))
    return last


@app_group.command("list")
@admin_client_options
@json_option
def list_apps(url: str, token: str, as_json: bool) -> None:
    """The organisation's apps."""
    apps = request(url, token, "GET", "/api/apps")
    if as_json:
        print_json(apps)
        return
    for app in apps:
        click.echo(f"{app['id']} {app['name']} ({app['kind']}) version {app['latest_version']}")


@app_group.command("dead-letters")
@click.argument("installation_id")
@admin_client_options
@json_option
def dead_letters(installation_id: str, url: str, token: str, as_json: bool) -> None:
    """Events that failed every attempt."""
    path = f"/api/apps/installations/{installation_id}/dead-letters"
    letters = request(url, token, "GET", path)
    if as_json:
        print_json(letters)
        return
    for letter in letters:
        click.echo(
            f"{letter['id']} {letter['handler']} event {letter['event_id']} "
            f"after {letter['attempts']} attempts: {letter['error']}"
        )
